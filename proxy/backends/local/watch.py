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

__all__ = ["Fingerprints", "StatusWatch", "Watcher"]

log = logging.getLogger("flux_proxy.local")
_UNSEEN = object()


class Fingerprints(Protocol):
    async def fingerprints(self, job_ids: list[str]) -> dict[str, Hashable]:
        """For each job that exists: what its status events show, as a comparable value."""


class Watcher:
    """One stream's view of its job: whether it changed since the stream last looked."""

    __slots__ = ("changed", "waiter")

    def __init__(self) -> None:
        self.changed = False
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        self.changed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True once the job changed since the last call; False after `timeout` seconds.

        A bare future and a timer, not `wait_for` (a task per idle stream): less memory.
        """
        if not self.changed:
            loop = asyncio.get_running_loop()
            self.waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        changed, self.changed = self.changed, False
        return changed


class StatusWatch:
    """Wakes each status stream when its job changed (a `Hub` notice, or the shared tick)."""

    def __init__(self, store: Fingerprints, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._watchers: dict[str, list[Watcher]] = {}
        self._seen: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[Watcher]:
        """Watch `job_id` for the duration (a stream's life)."""
        watcher = Watcher()
        self._watchers.setdefault(job_id, []).append(watcher)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        try:
            yield watcher
        finally:
            others = self._watchers[job_id]
            others.remove(watcher)
            if not others:
                del self._watchers[job_id]
                self._seen.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        """The job changed (a `Hub` listener, and the tick)."""
        for watcher in self._watchers.get(job_id, ()):
            watcher.wake()

    async def _run(self) -> None:
        while self._watchers:
            await asyncio.sleep(self._interval)
            ids = list(self._watchers)
            try:
                current = await self._store.fingerprints(ids)
            except Exception:  # a store hiccup: streams keep their keepalive; next tick retries
                log.exception("status streams: reading the job store failed")
                continue
            for job_id in ids:
                if job_id not in self._watchers:
                    continue  # its streams ended meanwhile
                now = current.get(job_id)
                before = self._seen.get(job_id, _UNSEEN)
                self._seen[job_id] = now
                # First sight: the stream read its job before this tick, maybe before a change.
                if before is _UNSEEN or before != now:
                    self.notify(job_id)

    async def aclose(self) -> None:
        """Stop the tick (the backend is closing)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
