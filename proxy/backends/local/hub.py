"""In-process change notices: waiters on a job wake as soon as it changes here.

Changes made by another process are seen by re-reading the store every `poll_interval`,
so a notice is a shortcut, never the only way to learn about a change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Hub"]


class Hub:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.queue_changed = asyncio.Event()  # a job was enqueued (dispatchers wake up)
        self.listeners: list[Callable[[str], None]] = []  # told of every notice (StatusWatch)

    def notify(self, job_id: str) -> None:
        for listener in self.listeners:
            listener(job_id)
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait(self, job_id: str, timeout: float) -> None:
        """Return when `job_id` changes here, or after `timeout` seconds."""
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        if self._events.get(job_id) is event and not event.is_set():
            del self._events[job_id]  # no notice came (another process): don't keep it
