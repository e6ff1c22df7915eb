"""Where budgets live: rate-limit windows, concurrency slots and usage counters.

`memory://` keeps everything in this process (`local_windows.py`, `MemorySlots`,
`MemoryUsage`); `redis://` shares it between processes and hosts, on `limits`' own Redis keys
(`redis_store.py`). A Redis call that fails or takes longer than `redis_timeout` raises one of
`STORE_ERRORS`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from limits.errors import StorageError

from .engine import Engine, LocalEngine
from .local_windows import LocalWindows
from .settings import LimitsSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["STORE_ERRORS", "Backing", "DayUsage", "MemorySlots", "MemoryUsage", "Slots", "Usage",
           "open_backing", "today"]

# What a failing store raises, without importing redis (slow to import) for memory set-ups:
# a Redis store's `Backing.errors` adds redis-py's RedisError.
STORE_ERRORS: tuple[type[BaseException], ...] = (StorageError, OSError, asyncio.TimeoutError)


def today(now: float | None = None) -> str:
    """The accounting day (UTC) as YYYY-MM-DD."""
    return _day_of(int(time.time() if now is None else now) // 86400)


@functools.lru_cache(maxsize=8)
def _day_of(day_number: int) -> str:
    # Called for every billed request: format each day once, not once per request.
    return datetime.fromtimestamp(day_number * 86400, UTC).strftime("%Y-%m-%d")


@dataclass(slots=True)
class DayUsage:
    """One caller's usage on one day."""

    day: str
    caller: str
    requests: int = 0
    images: int = 0
    cost: float = 0.0


class Slots(Protocol):
    """In-flight slots per caller, each with a safety expiry so a lost release self-heals."""

    async def acquire(self, caller: str, member: str, limit: int) -> tuple[bool, int, float]:
        """(acquired, in flight now, seconds until the oldest slot expires)."""
        ...

    async def rename(self, caller: str, old: str, new: str) -> None: ...

    async def release(self, caller: str, member: str) -> bool: ...


class Usage(Protocol):
    """Per caller and day: requests, images and cost units."""

    async def record(self, caller: str, images: int, cost: float) -> None: ...

    async def read(self, days: list[str], caller: str | None = None) -> list[DayUsage]: ...


class MemorySlots:
    """In-process slots. The plain methods are synchronous (the memory engine calls them in
    the middle of an atomic check); the `Slots` ones wrap them."""

    def __init__(self, expiry: float) -> None:
        self._expiry = expiry
        self._slots: dict[str, dict[str | int, float]] = defaultdict(dict)
        self._acquired = 0

    def _sweep(self) -> None:
        """Drop expired slots of every caller, and callers left with none, so callers who
        never come back (a finished job nobody polled) do not stay in memory forever."""
        for caller in list(self._slots):
            if not self._live(caller):
                del self._slots[caller]

    def _live(self, caller: str) -> dict[str | int, float]:
        # Every slot gets the same lifetime and renames re-insert, so insertion order is
        # expiry order: drop from the front until the first live one.
        slots = self._slots[caller]
        now = time.monotonic()
        while slots:
            member, until = next(iter(slots.items()))
            if until > now:
                break
            del slots[member]
        return slots

    def take(self, caller: str, member: str | int, limit: int) -> tuple[int, float] | None:
        """Reserves a slot named `member` (a string, or in the memory engine a number: no
        name to format per request). None when taken; when `limit` is reached, (in flight,
        seconds until the oldest slot expires)."""
        self._acquired += 1
        if self._acquired % 1024 == 0:
            self._sweep()
        slots = self._slots[caller]
        if limit and len(slots) >= limit:
            # Expired slots are dropped here, where they could change the answer (and by
            # the sweep): below the limit they cannot, so a take is one insertion.
            slots = self._live(caller)
            if len(slots) >= limit:
                return len(slots), next(iter(slots.values())) - time.monotonic()
        slots[member] = time.monotonic() + self._expiry
        return None

    def move(self, caller: str, old: str | int, new: str) -> None:
        slots = self._slots.get(caller)
        if not slots:
            return
        until = slots.pop(old, None)
        if until is not None:
            now = time.monotonic()
            if until > now:  # (an expired slot stays gone)
                slots[new] = now + self._expiry

    def drop(self, caller: str, member: str | int) -> bool:
        slots = self._slots.get(caller)
        if not slots or slots.pop(member, None) is None:
            return False
        if not slots:
            del self._slots[caller]
        return True

    async def acquire(self, caller: str, member: str, limit: int) -> tuple[bool, int, float]:
        full = self.take(caller, member, limit)
        if full is not None:
            return False, *full
        return True, len(self._live(caller)), self._expiry

    async def rename(self, caller: str, old: str, new: str) -> None:
        self.move(caller, old, new)

    async def release(self, caller: str, member: str) -> bool:
        return self.drop(caller, member)


class MemoryUsage:
    """In-process usage; `add` is synchronous like `MemorySlots`' methods."""

    def __init__(self, retention_days: int) -> None:
        self._days: dict[tuple[str, str], DayUsage] = {}
        self._retention = retention_days
        self._today: dict[str, DayUsage] = {}  # the current day's entries, by caller
        self._current = ""  # the current day (YYYY-MM-DD)
        self._ends = 0.0  # when the current day ends (epoch seconds)

    def add(self, caller: str, images: int, cost: float) -> None:
        # Once per accepted request: the day is only worked out when it ends. (A clock that
        # steps back across midnight keeps counting into the later day.)
        if time.time() >= self._ends:
            self._new_day()
        entry = self._today.get(caller)
        if entry is None:
            entry = self._today[caller] = self._days[(self._current, caller)] = DayUsage(
                self._current, caller)
        entry.requests += 1
        entry.images += images
        entry.cost += cost

    def _new_day(self) -> None:
        """Start keeping the clock's day, and forget days past the retention period."""
        number = int(time.time()) // 86400
        self._ends = (number + 1) * 86400.0
        self._current = today(number * 86400)
        keep = set(recent_days(self._retention + 1, number * 86400))
        self._days = {k: v for k, v in self._days.items() if k[0] in keep}
        self._today = {}  # (a later day than any kept: none of its entries exist yet)

    async def record(self, caller: str, images: int, cost: float) -> None:
        self.add(caller, images, cost)

    async def read(self, days: list[str], caller: str | None = None) -> list[DayUsage]:
        return [u for (day, who), u in sorted(self._days.items())
                if day in days and (caller is None or who == caller)]


@dataclass(slots=True)
class Backing:
    """The storage behind every budget: the engine that checks windows, slots and usage."""

    kind: str  # "memory" | "redis"
    slots: Slots
    usage: Usage
    engine: Engine  # every check of one request at once (see engine.py)
    redis: Redis | None = None
    timeout: float = 0.5
    errors: tuple[type[BaseException], ...] = STORE_ERRORS

    async def ping(self) -> bool:
        """True when the store answers (always, in memory)."""
        if self.redis is None:
            return True
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), self.timeout))
        except self.errors:
            return False

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)


def open_backing(settings: LimitsSettings) -> Backing:
    """Build the store for `settings.storage`. Connects lazily, on first use."""
    if not settings.uses_redis:
        slots = MemorySlots(settings.concurrency_expiry)
        usage = MemoryUsage(settings.usage_retention_days)
        engine = LocalEngine(LocalWindows(), slots, usage,
                             sliding=settings.strategy == "sliding-window",
                             cost_sliding=settings.cost_strategy == "sliding-window")
        return Backing("memory", slots, usage, engine)
    from .redis_store import open_redis_backing  # imported only when Redis is configured

    return open_redis_backing(settings)


def recent_days(count: int, now: float | None = None) -> list[str]:
    """The last `count` accounting days, newest first."""
    start = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return [(start - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(count)]
