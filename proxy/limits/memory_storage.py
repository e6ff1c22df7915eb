"""`limits`' in-process storage, minus two per-hit costs that buy nothing in memory.

1. `limits` wraps each storage method (get, incr, the window methods) in a coroutine that
   turns backend errors into `StorageError`; in memory nothing raises and wrapping is off, so
   the layer only adds a coroutine per access (about a fifth of a limited submit's guard CPU).
2. It starts an expiry sweep whenever the last one has finished, i.e. on nearly every hit, and
   a sweep hands each moving-window key to a thread (`asyncio.to_thread`): ~30 µs of CPU per
   moving-window hit. Here a sweep starts at most once a second. Sweeps only free memory:
   windows read entry times and counter expiries themselves, so counts are unchanged.

Same class, counters and arithmetic otherwise; with another `limits` layout each change
simply does not apply.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from limits.aio.storage import MemoryStorage

__all__ = ["SWEEP_INTERVAL", "FastMemoryStorage"]

SWEEP_INTERVAL = 1.0  # seconds between expiry sweeps
_WRAPPED = ("incr", "get", "get_expiry", "check", "reset", "clear", "acquire_entry",
            "get_moving_window", "acquire_sliding_window_entry", "get_sliding_window",
            "clear_sliding_window")
_SCHEDULE = "_MemoryStorage__schedule_expiry"  # MemoryStorage's private __schedule_expiry


class FastMemoryStorage(MemoryStorage):
    """`MemoryStorage` without the pass-through error wrappers, sweeping once a second."""

    _next_sweep = 0.0


def _unwrapped(name: str) -> object:
    method = getattr(MemoryStorage, name)
    while hasattr(method, "__wrapped__"):  # (subclassing wrapped them once more)
        method = method.__wrapped__
    return method


for _name in _WRAPPED:
    if hasattr(MemoryStorage, _name):
        setattr(FastMemoryStorage, _name, _unwrapped(_name))

_schedule: Callable[[Any], Awaitable[None]] | None = getattr(MemoryStorage, _SCHEDULE, None)

if _schedule is not None:
    _original = _schedule

    async def _schedule_sweep(self: FastMemoryStorage) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            await _original(self)

    setattr(FastMemoryStorage, _SCHEDULE, _schedule_sweep)
