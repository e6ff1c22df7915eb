"""Status streams that idle cheaply: one store read per tick for all of them, not one each.

A status stream must see its job change whether this process changed it (a `Hub` notice) or
another did (a second worker process, Redis; a queue position that moved). Re-reading the job
and counting its queue position per stream every `poll_interval` kept a core busy with 2,000
idle streams. Here one task reads a fingerprint of every watched job (status, queue position,
progress, log count) in one store call per tick and wakes only the streams whose job changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable, Iterator
from typing import Protocol

__all__ = ["Fingerprints", "StatusWatch"]

log = logging.getLogger("flux_proxy.local")
_UNSEEN = object()


class Fingerprints(Protocol):
    async def fingerprints(self, job_ids: list[str]) -> dict[str, Hashable]:
        """For each job that exists: what its status events show, as a comparable value."""


class StatusWatch:
    """Per watched job, an event set when the job changed (notice or tick) and not yet seen."""

    def __init__(self, store: Fingerprints, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._changed: dict[str, asyncio.Event] = {}
        self._count: dict[str, int] = {}
        self._seen: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """Watch `job_id` for the duration (a stream's life)."""
        if job_id not in self._count:
            self._count[job_id] = 0
            self._changed[job_id] = asyncio.Event()
        self._count[job_id] += 1
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        try:
            yield
        finally:
            self._count[job_id] -= 1
            if not self._count[job_id]:
                for table in (self._count, self._changed, self._seen):
                    table.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        """The job changed (a `Hub` listener, and the tick)."""
        event = self._changed.get(job_id)
        if event is not None:
            event.set()

    async def wait(self, job_id: str, timeout: float) -> bool:
        """True once the watched job changed since the last call; False after `timeout`."""
        event = self._changed[job_id]
        if not event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        changed = event.is_set()
        event.clear()
        return changed

    async def _run(self) -> None:
        while self._count:
            await asyncio.sleep(self._interval)
            ids = list(self._count)
            try:
                current = await self._store.fingerprints(ids)
            except Exception:  # a store hiccup: streams keep their keepalive; next tick retries
                log.exception("status streams: reading the job store failed")
                continue
            for job_id in ids:
                if job_id not in self._count:
                    continue  # its stream ended meanwhile
                now = current.get(job_id)
                before = self._seen.get(job_id, _UNSEEN)
                self._seen[job_id] = now
                # First sight: the stream read its job before this tick, maybe before a change.
                if before is _UNSEEN or before != now:
                    self.notify(job_id)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
