"""fal's queue protocol answers, built from jobs: JSON bodies and SSE streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..base import BufferedResponse
from .store import Job

__all__ = ["SseResponse", "json_response", "sse_event", "status_body", "urls"]

QUEUE_BASE = "https://queue.fal.run"
_JSON = (b"content-type", b"application/json")


def urls(app_id: str, request_id: str) -> dict[str, str]:
    """The URLs fal returns (the JS client builds its own; Python reads these)."""
    base = f"{QUEUE_BASE}/{app_id}/requests/{request_id}"
    return {"request_id": request_id, "response_url": base, "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel"}


def json_response(status: int, body: Any, request_id: str | None = None) -> BufferedResponse:
    headers = [_JSON]
    if request_id:
        headers.append((b"x-fal-request-id", request_id.encode()))
    return BufferedResponse(status, headers, json.dumps(body, separators=(",", ":")).encode())


def status_body(job: Job, position: int, with_logs: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"status": job.status}
    if job.status == "IN_QUEUE":
        body["queue_position"] = position
    else:
        body["logs"] = job.logs if with_logs else None
    if job.status == "IN_PROGRESS" and job.progress:
        body["progress"] = job.progress
    if job.status == "COMPLETED":
        body["metrics"] = job.metrics
        if job.error is not None:
            body["error"] = job.error
            body["error_type"] = job.error_type
    body.update(urls(job.app_id, job.id))
    return body


def sse_event(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class SseResponse:
    """An `UpstreamResponse` whose chunks come from an async generator; `aclose` stops it."""

    def __init__(self, events: AsyncIterator[bytes], request_id: str,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"text/event-stream"),
                        (b"x-fal-request-id", request_id.encode())]
        self._events = events
        self._on_close = on_close
        self._closed = False

    async def read(self, limit: int) -> bytes:
        return b"".join([chunk async for chunk in self._events])

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()
        if self._on_close is not None:
            await self._on_close()
