"""The request path, top to bottom.

parse target → read body → identify caller → authorize → police input → charge limits
→ forward through the backend → stream back → settle (limits, usage, access log)

Every stage is a small unit elsewhere; this module only puts them in order and turns their
refusals (`ProxyError`) and upstream failures into fal-shaped answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .asgi_types import Receive, Scope, Send
from .backends.base import Backend, UpstreamError, UpstreamResponse
from .context import Outcome, ProxyRequest
from .errors import ProxyError
from .observability import AccessLog
from .target import Operation, Target, TargetError, parse_target

__all__ = ["Pipeline", "Stage", "Stages"]

_LOG = logging.getLogger("flux_proxy")

# A guard: raises `ProxyError` to refuse. It returns None when it is done, or an awaitable when
# it must wait (a Redis check): most guards need no coroutine, which costs more than they do.
Stage = Callable[[ProxyRequest], Awaitable[None] | None]
_T = TypeVar("_T")

_TARGET_HEADER = b"x-fal-target-url"
_TARGET_CACHE = 4096
_METHODS = frozenset({"GET", "POST", "PUT"})
# Operations that start billed work upstream: if we cannot tell whether the upstream accepted
# them, we must not answer with a status the fal client retries (429/502/503/504).
_BILLED = frozenset({Operation.SUBMIT, Operation.RUN, Operation.STREAM})
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def _allow(request: ProxyRequest) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Stages:
    """The guards, in the order they run. Each raises `ProxyError` to refuse."""

    identify: Stage = _allow
    authorize: Stage = _allow
    police: Stage = _allow
    charge: Stage = _allow


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Pipeline:
    """Serves the proxy route as a plain ASGI callable."""

    def __init__(
        self,
        backend: Backend,
        stages: Stages,
        *,
        max_body_bytes: int,
        max_response_bytes: int,
        access_log: AccessLog,
    ) -> None:
        self.backend = backend
        self.stages = stages
        self._stage_list = (stages.identify, stages.authorize, stages.police, stages.charge)
        self._max_body = max_body_bytes
        self._max_response = max_response_bytes
        self._log = access_log
        # Status polls repeat the same target twice a second per job: parse each once.
        # Only valid targets are kept (Target is immutable), and the map is bounded.
        self._targets: dict[tuple[str, str], Target] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request: ProxyRequest | None = None
        outcome = Outcome()
        try:
            request = await self._admit(scope, receive)
            # Every guard, in order (inline: a coroutine less per request). A refusal is
            # still logged and counted with its operation, carries the headers set before it
            # (a new anonymous cookie, CORS) and runs the settle hooks registered before it.
            for stage in self._stage_list:
                pending = stage(request)
                if pending is not None:
                    await pending
            operation = request.target.operation
            if operation is Operation.RUN:
                # A sync run can take many seconds of billed work: if the caller leaves,
                # stop waiting and drop the upstream connection (the stream path does too).
                await _unless_disconnected(
                    self._forward_and_respond(request, outcome, receive, send), receive)
            elif operation is Operation.STREAM:
                # A streamed run's head can wait for a runner: same rule until it arrives,
                # then the stream's own watcher takes over.
                upstream = await _unless_disconnected(self._forward(request, outcome), receive)
                await self._respond(request, upstream, outcome, receive, send)
            else:
                await self._forward_and_respond(request, outcome, receive, send)
        except ProxyError as exc:
            outcome.status = exc.status
            outcome.error = outcome.error or "refused"
            extra = request.response_headers if request is not None else []
            await _send_error(send, exc, extra)
        except _ClientGone:
            outcome.error = "disconnected"
            outcome.status = 499
        except Exception:  # a bug must not take the server down or answer with a traceback
            _LOG.exception("unexpected error on the proxy route")
            outcome.status, outcome.error = 500, "internal"
            with contextlib.suppress(Exception):  # fails if the response had started
                await _send_error(send, ProxyError(500, "internal error in the proxy",
                                                   error_type="internal_error"), [])
        finally:
            if request is not None:
                for hook in request.settle_hooks:
                    pending = hook(request, outcome)
                    if pending is not None:
                        await pending
            self._log.record(scope, request, outcome, started)

    async def _admit(self, scope: Scope, receive: Receive) -> ProxyRequest:
        """Parse the target and read the body. Nothing is sent yet."""
        method: str = scope["method"]
        if method not in _METHODS:
            raise ProxyError(405, f"method {method} is not allowed",
                             headers={"allow": "GET, POST, PUT"})
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_target = None
        for name, value in headers:
            if name == _TARGET_HEADER:
                raw_target = value.decode("latin-1")
                break
        target = self._targets.get((raw_target, method)) if raw_target else None
        if target is None:
            try:
                target = parse_target(raw_target, method)
            except TargetError as exc:
                extra = {"allow": ", ".join(exc.allow)} if exc.allow else None
                raise ProxyError(exc.status, exc.detail, headers=extra) from None
            if raw_target is not None:
                if len(self._targets) >= _TARGET_CACHE:
                    self._targets.clear()
                self._targets[(raw_target, method)] = target
        body = await self._read_body(headers, receive) if method != "GET" else b""
        return ProxyRequest(scope=scope, method=method, headers=headers, target=target,
                            body=body)

    async def _read_body(self, headers: list[tuple[bytes, bytes]], receive: Receive) -> bytes:
        limit = self._max_body
        for name, value in headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise ProxyError(400, "invalid content-length header") from None
                if declared > limit:
                    raise ProxyError(413, f"request body is larger than {limit} bytes")
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise ProxyError(413, f"request body is larger than {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _forward_and_respond(
        self, request: ProxyRequest, outcome: Outcome, receive: Receive, send: Send
    ) -> None:
        upstream = await self._forward(request, outcome)
        await self._respond(request, upstream, outcome, receive, send)

    async def _forward(self, request: ProxyRequest, outcome: Outcome) -> UpstreamResponse:
        t0 = time.perf_counter()
        try:
            upstream = await self.backend.forward(request)
        except UpstreamError as exc:
            request.upstream_ms = (time.perf_counter() - t0) * 1000
            outcome.error = exc.kind if exc.kind != "failed" else "unreachable"
            raise _upstream_failure(request, exc) from None
        request.upstream_ms = (time.perf_counter() - t0) * 1000
        outcome.upstream_status = upstream.status
        return upstream

    async def _respond(
        self, request: ProxyRequest, upstream: UpstreamResponse, outcome: Outcome,
        receive: Receive, send: Send,
    ) -> None:
        """Buffered for ordinary JSON; unbuffered SSE with disconnect → upstream closed."""
        status = upstream.status
        outcome.status = status
        if request.target.streaming and 200 <= status < 300 and _is_sse(upstream.headers):
            outcome.streamed = True
            headers = _merge_headers(upstream.headers, request.response_headers)
            await _stream(upstream, status, headers + _SSE_HEADERS, outcome, receive, send)
            return
        try:
            body = await upstream.read(self._max_response)
        except UpstreamError as exc:
            await upstream.aclose()
            outcome.error = "unreachable"
            raise _upstream_failure(request, exc) from None
        outcome.body = body  # (settle hooks read the upstream's own answer: fal's job id)
        for response_filter in request.response_filters:
            filtered = response_filter(request, status, body)
            body = filtered if isinstance(filtered, bytes) else await filtered
        headers = _merge_headers(upstream.headers, request.response_headers)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(work: Awaitable[_T], receive: Receive) -> _T:
    """Run `work`; if the client disconnects first, cancel it and raise `_ClientGone`."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watch):
            if not pending.done():
                pending.cancel()
    if task in done:
        await asyncio.gather(watch, return_exceptions=True)
        return task.result()
    await asyncio.gather(task, return_exceptions=True)
    if task.done() and not task.cancelled() and task.exception() is None:
        # It finished just as the client left: release what it holds (an upstream response).
        aclose = getattr(task.result(), "aclose", None)
        if aclose is not None:
            await aclose()
    raise _ClientGone


def _merge_headers(
    upstream: list[tuple[bytes, bytes]], ours: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """Upstream headers plus the stages' own; a stage's header replaces the upstream's
    (e.g. `x-fal-request-id` becomes the signed id). Filters may add some, so call late."""
    if not ours:
        return list(upstream)
    names = dict(ours)
    for name, _ in upstream:  # (rare: looked for first, the filter's comprehension is dear)
        if name in names:
            return [h for h in upstream if h[0] not in names] + ours
    return upstream + ours


def _is_sse(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.lower().startswith(b"text/event-stream")
    return False


async def _stream(
    upstream: UpstreamResponse, status: int, headers: list[tuple[bytes, bytes]],
    outcome: Outcome, receive: Receive, send: Send,
) -> None:
    """Pump events as they arrive; a client disconnect cancels the pump and drops upstream."""

    async def pump() -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        async for chunk in upstream.iter_chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    pump_task = asyncio.ensure_future(pump())
    watch_task = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait(
            {pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if watch_task in done and not pump_task.done():
            outcome.error = "disconnected"
        elif pump_task.exception() is not None:
            outcome.error = "disconnected"  # send() failed: the client went away
    finally:
        for task in (pump_task, watch_task):
            if not task.done():
                task.cancel()
        await asyncio.gather(pump_task, watch_task, return_exceptions=True)
        await upstream.aclose()


def _upstream_failure(request: ProxyRequest, exc: UpstreamError) -> ProxyError:
    op = request.target.operation
    if exc.sent and op in _BILLED:
        return ProxyError(
            500,
            f"the upstream connection failed after the {op.value} request was sent, so its "
            "outcome is unknown: it may have been accepted (and billed). Check before retrying.",
            error_type="upstream_outcome_unknown",
        )
    if exc.kind == "timeout":
        return ProxyError(504, "the upstream did not answer in time", error_type="upstream_timeout")
    if exc.kind == "too_large":
        return ProxyError(502, "the upstream response is too large", error_type="upstream_error")
    return ProxyError(502, "the upstream could not be reached", error_type="upstream_unreachable")


async def _send_error(
    send: Send, exc: ProxyError, extra: list[tuple[bytes, bytes]]
) -> None:
    body = exc.body()
    headers = [*exc.response_headers(), *extra, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
