"""A fal-style HTTP worker, e.g. our own `flux-proxy worker` (contract: docs/worker.md §4).

`POST {base}/{endpoint_id}` with `Accept: text/event-stream` and `x-fal-request-id: <job>`:
`data:` events `progress {step,total}` and `log {message,level}`, then exactly one final
`result {output}` or `error {status,body}`; `:` comment lines are keep-alives. Before the
stream starts the worker may answer 422 (bad input), 503 + Retry-After (busy or still
loading: the job goes back to the queue) or 404 (endpoint not served). A cancel is
`POST {base}/cancel/{job}`; the worker stops at its next step and ends the stream with
status 499, which is when its GPU is free again, so we wait for that before giving the slot
back. `GET {base}/readyz` answering 200 means it can take jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..store import Job
from .base import JobFailed, OnLog, OnProgress, WorkerBusy, WorkerDown, cancelled
from .session import WorkerSession

__all__ = ["HttpWorker"]

#: The contract's "cancelled via POST /cancel/{id}" status.
CANCELLED = 499
#: Largest single SSE line we accept: a result carries its images as data URIs.
MAX_EVENT_BYTES = 256 * 1_048_576
#: How long a cancelled job may take to reach its next step boundary before we hang up.
CANCEL_GRACE_SECONDS = 30.0


class HttpWorker:
    """`WorkerAdapter` for a fal-style HTTP worker at `base`."""

    def __init__(self, name: str, base: str, concurrency: int, timeout: float,
                 cancel_grace: float = CANCEL_GRACE_SECONDS) -> None:
        self.name = name
        self.base = base
        self.concurrency = concurrency
        self._timeout = timeout
        self._cancel_grace = cancel_grace
        self._http = WorkerSession(base, aiohttp.ClientTimeout(total=None, connect=5))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def ready(self) -> bool:
        return await self._http.probe("/readyz")

    async def run(
        self, job: Job, on_progress: OnProgress, on_log: OnLog, cancel: asyncio.Event
    ) -> dict[str, Any]:
        task = asyncio.ensure_future(self._call(job, on_progress, on_log))
        waiter = asyncio.ensure_future(cancel.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, timeout=self._timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task not in done and cancel.is_set() and await self._request_cancel(job.id):
                # The worker ends the stream (499) at its next step: then its GPU is free.
                done, _ = await asyncio.wait({task}, timeout=self._cancel_grace)
        finally:
            waiter.cancel()
        if task in done:
            return task.result()  # a job that finished as the cancel came keeps its output
        task.cancel()  # hanging up cancels on the worker too (at its next step)
        with contextlib.suppress(BaseException):
            await task
        if cancel.is_set():
            raise cancelled()
        raise JobFailed(504, {"detail": f"worker {self.name} took longer than "
                                        f"{self._timeout:g}s"}, "request_timeout")

    async def _request_cancel(self, job_id: str) -> bool:
        """True when the worker accepted the cancel (202) for a job it is running."""
        try:
            async with self._http.client().post(
                    f"{self.base}/cancel/{job_id}",
                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status == 202
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _call(self, job: Job, on_progress: OnProgress, on_log: OnLog) -> dict[str, Any]:
        url = f"{self.base}/{job.endpoint_id}"
        headers = {"accept": "text/event-stream", "x-fal-request-id": job.id}
        try:
            async with self._http.client().post(url, json=job.input, headers=headers) as resp:
                if resp.status == 503:
                    raise WorkerBusy(_retry_after(resp.headers.get("retry-after")))
                if resp.status == CANCELLED:
                    raise cancelled()
                if resp.status == 404:
                    raise JobFailed(500, {"detail": f"worker {self.name} does not serve "
                                                    f"{job.endpoint_id}"})
                if resp.status != 200:
                    raise JobFailed(resp.status, await _error_body(resp))
                if not resp.content_type.startswith("text/event-stream"):
                    return dict(await resp.json())
                async for event in _events(resp.content):
                    kind = event.get("type")
                    if kind == "progress":
                        await on_progress(int(event["step"]), int(event["total"]))
                    elif kind == "log":
                        await on_log(str(event.get("message", "")),
                                     str(event.get("level", "INFO")))
                    elif kind == "result":
                        return dict(event["output"])
                    elif kind == "error":
                        status = int(event.get("status", 500))
                        if status == CANCELLED:
                            raise cancelled()
                        body = event.get("body")
                        if not isinstance(body, dict) or "detail" not in body:
                            body = {"detail": f"worker {self.name} failed (status {status})"}
                        raise JobFailed(status, body)
        except (aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            raise WorkerDown(f"worker {self.name} failed: {exc.__class__.__name__}") from exc
        raise WorkerDown(f"worker {self.name} closed the stream without a result")


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The `data:` events of an SSE body, one per line (no line-length limit but ours)."""
    buf = bytearray()
    scanned = 0
    async for chunk in content.iter_any():
        buf += chunk
        while (end := buf.find(b"\n", scanned)) >= 0:
            line = bytes(buf[:end]).strip()
            del buf[:end + 1]
            scanned = 0
            if line.startswith(b"data:"):  # `:` comments (keep-alives) and blanks are skipped
                event = json.loads(line[5:])
                if not isinstance(event, dict):
                    raise ValueError("SSE event is not a JSON object")
                yield event
        scanned = len(buf)
        if scanned > MAX_EVENT_BYTES:
            raise ValueError(f"SSE event larger than {MAX_EVENT_BYTES} bytes")


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 0.0), 60.0)
    except ValueError:
        return 1.0


async def _error_body(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return body
    return {"detail": f"worker answered HTTP {resp.status}"}
