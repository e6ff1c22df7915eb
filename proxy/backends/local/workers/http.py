"""A fal-style HTTP worker: `POST {base}/{endpoint_id}` with SSE progress (see README).

Contract: `Accept: text/event-stream` gives `data:` lines `{"type":"progress","step","total"}`,
`{"type":"log","message","level"}`, then one `{"type":"result","output"}` or
`{"type":"error","status","body"}`. 503 means busy (try later); `/readyz` tells readiness;
closing the connection or `POST /cancel/{id}` cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from ..store import Job
from .base import JobFailed, OnLog, OnProgress, WorkerBusy, WorkerDown, cancelled

__all__ = ["HttpWorker"]


class HttpWorker:
    """`WorkerAdapter` for a fal-style HTTP worker at `base`."""

    def __init__(self, name: str, base: str, concurrency: int, timeout: float) -> None:
        self.name = name
        self.base = base
        self.concurrency = concurrency
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=5))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self) -> bool:
        try:
            async with self._client().get(
                    f"{self.base}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def run(
        self, job: Job, on_progress: OnProgress, on_log: OnLog, cancel: asyncio.Event
    ) -> dict[str, Any]:
        task = asyncio.ensure_future(self._call(job, on_progress, on_log))
        waiter = asyncio.ensure_future(cancel.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, timeout=self._timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task in done:
            return task.result()
        task.cancel()  # closing the connection cancels on the worker too
        with contextlib.suppress(BaseException):
            await task
        if cancel.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._client().post(
                        f"{self.base}/cancel/{job.id}",
                        timeout=aiohttp.ClientTimeout(total=5)):
                    pass
            raise cancelled()
        raise JobFailed(504, {"detail": f"worker {self.name} took longer than "
                                        f"{self._timeout:g}s"}, "request_timeout")

    async def _call(self, job: Job, on_progress: OnProgress, on_log: OnLog) -> dict[str, Any]:
        url = f"{self.base}/{job.endpoint_id}"
        headers = {"accept": "text/event-stream", "x-fal-request-id": job.id}
        try:
            async with self._client().post(url, json=job.input, headers=headers) as resp:
                if resp.status == 503:
                    retry = resp.headers.get("retry-after", "1")
                    raise WorkerBusy(float(retry) if retry.replace(".", "").isdigit() else 1.0)
                if resp.status != 200:
                    raise JobFailed(resp.status, await _error_body(resp))
                if not resp.content_type.startswith("text/event-stream"):
                    return dict(await resp.json())
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    event = json.loads(line[5:])
                    kind = event.get("type")
                    if kind == "progress":
                        await on_progress(int(event["step"]), int(event["total"]))
                    elif kind == "log":
                        await on_log(str(event.get("message", "")),
                                     str(event.get("level", "INFO")))
                    elif kind == "result":
                        return dict(event["output"])
                    elif kind == "error":
                        body = event.get("body") or {"detail": "worker error"}
                        raise JobFailed(int(event.get("status", 500)), body)
        except (aiohttp.ClientError, ValueError, KeyError) as exc:
            raise WorkerDown(f"worker {self.name} failed: {exc.__class__.__name__}") from exc
        raise WorkerDown(f"worker {self.name} closed the stream without a result")


async def _error_body(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return body
    return {"detail": f"worker answered HTTP {resp.status}"}
