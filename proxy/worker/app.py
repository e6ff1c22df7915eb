"""Starlette app implementing the fal-style worker contract (spec: docs/worker.md).

The worker never queues: one job runs at a time on a single GPU thread and a concurrent
request gets 503 ``worker busy`` so the proxy's queue stays the only queue. The diffusers
call runs in that thread so the event loop keeps answering /healthz, /readyz and cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy.worker.inputs import GenerationRequest, InputValidationError, parse_request
from proxy.worker.pipeline import FluxEngine, JobCancelled
from proxy.worker.settings import WorkerSettings

log = logging.getLogger("proxy.worker")

Phase = Literal["pending", "running", "done", "skipped", "failed"]
#: Status used when a job was cancelled through ``POST /cancel/{id}`` (client still there).
CANCELLED_STATUS = 499
REQUEST_ID_HEADER = "x-fal-request-id"
_KEEPALIVE_S = 15.0


class WorkerState:
    """Shared, event-loop-owned state: load/warm-up phases, the busy flag, running jobs."""

    def __init__(self, settings: WorkerSettings, engine: FluxEngine) -> None:
        self.settings = settings
        self.engine = engine
        # One thread = one GPU stream of work; load, warm-up and jobs all run here.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flux-gpu")
        self.load: Phase = "pending"
        self.warmup: Phase = "pending" if settings.warmup else "skipped"
        self.error: str | None = None
        self.busy = False
        self.jobs: dict[str, threading.Event] = {}

    @property
    def ready(self) -> bool:
        return self.load == "done" and self.warmup in ("done", "skipped")

    def readiness(self) -> dict[str, Any]:
        eng = self.engine
        body: dict[str, Any] = {
            "ready": self.ready,
            "model": str(self.settings.model_dir),
            "device": eng.device,
            "dtype": eng.dtype_name,
            "compiled": eng.compiled,
            "fp8": eng.fp8,
            "offload": self.settings.offload,
            "load": self.load,
            "warmup": self.warmup,
            "busy": self.busy,
            "endpoints": list(self.settings.endpoints),
        }
        if not self.ready:
            body["pending"] = [
                name
                for name, phase in (("load", self.load), ("warmup", self.warmup))
                if phase in ("pending", "running")
            ]
        if self.error:
            body["error"] = self.error
        return body

    async def start(self) -> None:
        """Load then warm up in the GPU thread; failures are reported by /readyz."""
        loop = asyncio.get_running_loop()
        self.load = "running"
        try:
            await loop.run_in_executor(self.executor, self.engine.load)
        except Exception as exc:
            self.load, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("model load failed: %s", self.error)
            self._maybe_exit()
            return
        self.load = "done"
        if self.warmup == "skipped":
            return
        self.warmup = "running"
        try:
            await loop.run_in_executor(self.executor, self.engine.warmup)
        except Exception as exc:
            self.warmup, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("warm-up failed: %s", self.error)
            self._maybe_exit()
            return
        self.warmup = "done"

    def _maybe_exit(self) -> None:
        if self.settings.exit_on_load_failure:
            # uvicorn turns SIGINT into a graceful shutdown; the CLI then exits non-zero.
            os.kill(os.getpid(), signal.SIGINT)

    def shutdown(self) -> None:
        for ev in self.jobs.values():
            ev.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _error_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Map a job failure to (status, body) in fal's ``{"detail": ...}`` shape."""
    if isinstance(exc, InputValidationError):
        return 422, exc.body
    name = type(exc).__name__
    if name == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        return 503, {"detail": "GPU out of memory; retry with a smaller size or fewer images"}
    # The traceback is in the worker's log; callers get no internal paths or driver details.
    return 500, {"detail": f"generation failed ({name}); see the worker's log"}


class JobResponse(Response):
    """Runs one job while talking ASGI directly.

    Owning ``receive`` lets us notice a client disconnect in both modes and turn it into a
    cooperative cancel; in SSE mode it streams progress events as the steps complete.
    """

    def __init__(
        self, state: WorkerState, req: GenerationRequest, job_id: str, stream: bool
    ) -> None:
        super().__init__()
        self.state, self.req, self.job_id, self.stream = state, req, job_id, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, req = self.state, self.req
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        gone = False

        def on_step(i: int, n: int) -> None:  # called from the GPU thread
            loop.call_soon_threadsafe(
                events.put_nowait, {"type": "progress", "step": i, "total": n}
            )

        def finished(_f: asyncio.Future[dict[str, Any]]) -> None:
            # Only now is the GPU free: the thread has really returned.
            state.busy = False
            state.jobs.pop(self.job_id, None)
            events.put_nowait(None)

        async def watch_disconnect() -> None:
            nonlocal gone
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    gone = True
                    cancel.set()
                    return

        async def emit(data: bytes) -> None:
            nonlocal gone
            if gone:
                return
            try:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            except OSError:
                gone = True
                cancel.set()

        state.jobs[self.job_id] = cancel
        try:
            fut = loop.run_in_executor(
                state.executor, partial(state.engine.generate, req, on_step, cancel)
            )
        except BaseException:
            state.busy = False
            state.jobs.pop(self.job_id, None)
            raise
        fut.add_done_callback(finished)
        watcher = asyncio.create_task(watch_disconnect())
        getter: asyncio.Future[dict[str, Any] | None] | None = None
        headers = [(REQUEST_ID_HEADER.encode(), self.job_id.encode())]
        try:
            if self.stream:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no"),
                            *headers,
                        ],
                    }
                )
                await emit(
                    _sse(
                        {
                            "type": "log",
                            "level": "INFO",
                            "message": f"generating {req.num_images} image(s) at "
                            f"{req.width}x{req.height}, {req.num_inference_steps} steps",
                        }
                    )
                )
            while True:
                # A persistent getter (never cancelled by a timeout) cannot lose an event,
                # in particular not the end-of-job sentinel.
                getter = asyncio.ensure_future(events.get())
                while not (await asyncio.wait({getter}, timeout=_KEEPALIVE_S))[0]:
                    if self.stream:
                        await emit(b": keep-alive\n\n")
                ev = getter.result()
                if ev is None:
                    break
                if self.stream:
                    await emit(_sse(ev))
            exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
            if exc is None:
                status, body = 200, fut.result()
            elif isinstance(exc, JobCancelled | asyncio.CancelledError):
                status, body = CANCELLED_STATUS, {"detail": "job cancelled"}
            else:
                log.error("job %s failed", self.job_id, exc_info=exc)
                status, body = _error_for(exc)
            if gone:
                return  # nobody to tell; a disconnect-cancel produces nothing at all
            if self.stream:
                final = (
                    {"type": "result", "output": body}
                    if status == 200
                    else {"type": "error", "status": status, "body": body}
                )
                await emit(_sse(final))
                if not gone:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                resp = JSONResponse(
                    body,
                    status_code=status,
                    headers=dict((k.decode(), v.decode()) for k, v in headers),
                )
                await resp(scope, receive, send)
        finally:
            cancel.set()  # no-op when finished; stops the job if we are being torn down
            if getter is not None:
                getter.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _generate(request: Request) -> Response:
    state: WorkerState = request.app.state.worker
    if not state.ready:
        return _json_error(503, "worker not ready", {"Retry-After": "5"})
    try:
        body = await request.json()
    except ValueError as exc:
        return _json_error(
            422, [{"loc": ["body"], "msg": f"Invalid JSON: {exc}", "type": "json_invalid"}]
        )
    try:
        req = parse_request(body, state.settings.max_side)
    except InputValidationError as exc:
        return JSONResponse(exc.body, status_code=422)
    if state.busy:
        return _json_error(503, "worker busy", {"Retry-After": "1"})
    # No await between the check above and this claim, so it is atomic on the event loop.
    state.busy = True
    job_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
    stream = "text/event-stream" in request.headers.get("accept", "")
    return JobResponse(state, req, job_id, stream)


async def _cancel(request: Request) -> Response:
    state: WorkerState = request.app.state.worker
    ev = state.jobs.get(request.path_params["job_id"])
    if ev is None:
        return _json_error(404, "job not found")
    ev.set()
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)


async def _healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(request: Request) -> Response:
    state: WorkerState = request.app.state.worker
    return JSONResponse(state.readiness(), status_code=200 if state.ready else 503)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _json_error(exc.status_code, exc.detail, dict(exc.headers or {}))


def create_app(settings: WorkerSettings, engine: FluxEngine | None = None) -> Starlette:
    """Build the worker app; the model loads in the background once the server starts."""
    state = WorkerState(settings, engine or FluxEngine(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(state.start())
        try:
            yield
        finally:
            task.cancel()
            state.shutdown()

    routes = [Route(p, _generate, methods=["POST"]) for p in settings.endpoint_paths]
    routes += [
        Route("/cancel/{job_id}", _cancel, methods=["POST"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.worker = state
    return app
