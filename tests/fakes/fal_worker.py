"""A fake fal-style GPU worker: the HTTP contract our own worker speaks (see README).

A real Starlette app on a real port: `POST /{endpoint_id}` (JSON, or SSE progress with
`Accept: text/event-stream`), `POST /cancel/{job_id}`, `GET /healthz`, `GET /readyz`.
One job at a time per `capacity`; more answer 503 busy. Knobs: `step_seconds`, `fail_next`
(the next job ends with a 500 error event), `ready`. It counts finished executions per
`x-fal-request-id` in `completed`, and starts in `started`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.backends.local.workers.demo import demo_image
from tests.fakes.server import ServerHandle

__all__ = ["FakeWorker"]


class FakeWorker:
    def __init__(self, name: str = "gpu", capacity: int = 1, step_seconds: float = 0.005) -> None:
        self.name = name
        self.capacity = capacity
        self.step_seconds = step_seconds
        self.fail_next = 0
        self.ready = True
        self.running: set[str] = set()
        self.started: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self.inputs: dict[str, dict[str, Any]] = {}  # the input each job arrived with
        self._cancel: set[str] = set()
        self.app = Starlette(routes=[
            Route("/healthz", self._healthz), Route("/readyz", self._readyz),
            Route("/cancel/{job_id}", self._cancel_route, methods=["POST"]),
            Route("/{endpoint:path}", self._run, methods=["POST"]),
        ])
        self.server: ServerHandle | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeWorker:
        self.server = ServerHandle(self.app, port=self.port).start()
        self.port = self.server.port
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> FakeWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        if not self.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True, "model": "fake-flux", "busy": bool(self.running)})

    async def _cancel_route(self, request: Request) -> Response:
        self._cancel.add(request.path_params["job_id"])
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    async def _run(self, request: Request) -> Response:
        if len(self.running) >= self.capacity:
            return JSONResponse({"detail": "worker busy"}, status_code=503,
                                headers={"retry-after": "0.1"})
        inp: dict[str, Any] = await request.json()
        if not isinstance(inp.get("prompt"), str):
            return JSONResponse({"detail": [{"loc": ["body", "prompt"], "msg": "Field required",
                                             "type": "missing"}]}, status_code=422)
        job_id = request.headers.get("x-fal-request-id", "")
        self.running.add(job_id)
        self.started[job_id] += 1
        self.inputs[job_id] = inp
        fail = self.fail_next > 0
        if fail:
            self.fail_next -= 1
        return StreamingResponse(self._events(job_id, inp, fail),
                                 media_type="text/event-stream")

    async def _events(self, job_id: str, inp: dict[str, Any], fail: bool) -> AsyncIterator[str]:
        try:
            steps = int(inp.get("num_inference_steps", 4))
            yield _sse({"type": "log", "message": f"{self.name}: loading", "level": "INFO"})
            for step in range(1, steps + 1):
                await asyncio.sleep(self.step_seconds)
                if job_id in self._cancel:
                    self.cancelled.append(job_id)
                    yield _sse({"type": "error", "status": 499,
                                "body": {"detail": "cancelled"}})
                    return
                yield _sse({"type": "progress", "step": step, "total": steps})
            if fail:
                yield _sse({"type": "error", "status": 500,
                            "body": {"detail": "CUDA out of memory (fake)"}})
                return
            size = inp.get("image_size") or {"width": 64, "height": 64}
            w, h = size["width"], size["height"]
            data = demo_image(inp["prompt"], int(inp.get("seed", 0)), w, h, "jpeg")
            self.completed[job_id] += 1
            yield _sse({"type": "result", "output": {
                "images": [{"url": "data:image/jpeg;base64," + base64.b64encode(data).decode(),
                            "width": w, "height": h, "content_type": "image/jpeg"}],
                "timings": {"inference": 0.01}, "seed": inp.get("seed"),
                "has_nsfw_concepts": [False], "prompt": inp["prompt"], "worker": self.name}})
        except asyncio.CancelledError:
            self.cancelled.append(job_id)
            raise
        finally:
            self.running.discard(job_id)


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event)}\n\n"
