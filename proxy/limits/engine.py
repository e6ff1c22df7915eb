"""A request's budget checks, evaluated together by the store's engine.

Why: through `limits`' strategies each test, hit and window-stats call cost ~12 µs of CPU (and
a Redis round trip each), and a submit needed six of them plus the slot and usage calls. An
engine takes all of one request's steps at once: `LocalEngine` calls `limits`' async storage
directly with keys built once per caller (the same windows, keys and arithmetic as its
strategies, without the wrappers), and the Redis engine (`redis_engine.py`) runs them as one
Lua script, one round trip per request stage.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from limits.aio.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage

from .budgets import Budget, Window

if TYPE_CHECKING:
    from .store import Slots, Usage

__all__ = ["Admission", "Engine", "KeyCache", "LocalEngine", "Step", "moving_state",
           "sliding_state"]


@dataclass(slots=True)
class Step:
    """One budget to test (no side effect) or hit with `amount` of its integer units."""

    budget: Budget
    amount: int


@dataclass(slots=True)
class Admission:
    """What a request's checks found: window states for the headers, or what refused."""

    windows: list[Window] = field(default_factory=list)
    refused: Window | None = None  # the window that refused (its state, for the 429)
    slot: str | None = None  # the concurrency slot reserved
    slot_refused: tuple[int, float] | None = None  # (in flight, s until the oldest expires)


class Engine(Protocol):
    """Evaluates a request's steps in order: tests, then a slot, then hits; stops at the
    first refusal (and frees a slot it took). Raises the backing's errors when the store is
    down, with nothing half-done in Redis (one script)."""

    async def admit(self, caller: str, tests: list[Step], slot: tuple[str, int] | None,
                    hits: list[Step]) -> Admission: ...

    async def settle(self, caller: str, consume: list[Step], usage: tuple[int, float] | None,
                     slot: tuple[str, str | None] | None) -> None:
        """Charge `consume` (never refused), record usage, then rename the slot (to the
        second member) or release it (second member None)."""
        ...


def sliding_state(budget: Budget, index: int, prev: int, prev_ttl: float, cur: int,
                  cur_ttl: float) -> Window:
    """A sliding-window counter's state (TTLs in seconds), as `limits`' get_window_stats."""
    item = budget.items[index]
    expiry = item.get_expiry()
    remaining = max(0, item.amount - math.floor(prev * prev_ttl / expiry + cur))
    if not (prev or cur):
        return Window(budget, item, remaining, 0.0, index)
    reset = math.inf
    if prev:
        reset = _next_turn(prev_ttl, expiry / prev)
    if cur:
        reset = min(reset, _next_turn(cur_ttl, expiry))
    return Window(budget, item, remaining, max(0.0, reset), index)


def _next_turn(ttl: float, period: float) -> float:
    """`ttl % period`, except that a TTL of exactly whole periods is a full period away (Redis
    freezes time inside a script, so a counter set there reads back 2 x expiry exactly)."""
    left = ttl % period
    return period if left == 0 and ttl > 0 else left


def moving_state(budget: Budget, index: int, start: float, count: int, now: float) -> Window:
    """A moving window's state from its oldest entry and entry count."""
    item = budget.items[index]
    expiry = item.get_expiry()
    # clamped: in Redis, entries of requests admitted together may carry a later client clock
    reset = min(float(expiry), max(0.0, start + expiry - now))
    return Window(budget, item, max(0, item.amount - count), reset, index)


class KeyCache:
    """`limits`' storage key of each window of a budget for a caller, built once (bounded)."""

    def __init__(self, size: int = 65536) -> None:
        self._keys: dict[tuple[int, str], tuple[str, ...]] = {}
        self._size = size

    def __call__(self, budget: Budget, caller: str) -> tuple[str, ...]:
        cache_key = (id(budget), caller)  # budgets live as long as the guard
        keys = self._keys.get(cache_key)
        if keys is None:
            if len(self._keys) >= self._size:
                self._keys.clear()
            ids = budget.key(caller)
            keys = self._keys[cache_key] = tuple(item.key_for(*ids) for item in budget.items)
        return keys


class LocalEngine:
    """Steps in order through `limits`' storage (memory; any storage works)."""

    def __init__(self, storage: Storage, slots: Slots, usage: Usage, *, sliding: bool,
                 cost_sliding: bool) -> None:
        self._storage = storage
        self._sliding = cast(SlidingWindowCounterSupport, storage)
        self._moving = cast(MovingWindowSupport, storage)
        self._slots = slots
        self._usage = usage
        self._sliding_for = {False: sliding, True: cost_sliding}  # by "is a cost budget"
        self.keys = KeyCache()

    async def _state(self, budget: Budget, index: int, key: str, sliding: bool) -> Window:
        item = budget.items[index]
        if sliding:
            prev, prev_ttl, cur, cur_ttl = await self._sliding.get_sliding_window(
                key, item.get_expiry())
            return sliding_state(budget, index, prev, prev_ttl, cur, cur_ttl)
        start, count = await self._moving.get_moving_window(key, item.amount, item.get_expiry())
        return moving_state(budget, index, start, count, time.time())

    async def _acquire(self, budget: Budget, index: int, key: str, amount: int,
                       sliding: bool) -> bool:
        item = budget.items[index]
        if sliding:
            return await self._sliding.acquire_sliding_window_entry(
                key, item.amount, item.get_expiry(), amount)
        return await self._moving.acquire_entry(key, item.amount, item.get_expiry(), amount)

    async def admit(self, caller: str, tests: list[Step], slot: tuple[str, int] | None,
                    hits: list[Step]) -> Admission:
        out = Admission()
        for step in tests:
            budget = step.budget
            sliding = self._sliding_for[budget.scale > 1]
            for index, key in enumerate(self.keys(budget, caller)):
                state = await self._state(budget, index, key, sliding)
                if state.remaining < step.amount:
                    out.refused = state
                    return out
                out.windows.append(state)
        if slot is not None:
            ok, in_flight, expires = await self._slots.acquire(caller, slot[0], slot[1])
            if not ok:
                out.slot_refused = (in_flight, expires)
                return out
            out.slot = slot[0]
        try:
            for step in hits:
                budget = step.budget
                sliding = self._sliding_for[budget.scale > 1]
                for index, key in enumerate(self.keys(budget, caller)):
                    ok = await self._acquire(budget, index, key, step.amount, sliding)
                    state = await self._state(budget, index, key, sliding)
                    if not ok:
                        out.refused = state
                        break
                    out.windows.append(state)
                if out.refused is not None:
                    break
        except BaseException:
            await self._free(caller, out.slot)
            raise
        if out.refused is not None:
            await self._free(caller, out.slot)
            out.slot = None
        return out

    async def _free(self, caller: str, slot: str | None) -> None:
        if slot is not None:
            await self._slots.release(caller, slot)

    async def settle(self, caller: str, consume: list[Step], usage: tuple[int, float] | None,
                     slot: tuple[str, str | None] | None) -> None:
        for step in consume:
            budget = step.budget
            sliding = self._sliding_for[budget.scale > 1]
            for index, key in enumerate(self.keys(budget, caller)):
                # May refuse when concurrent requests overshot together (see guard.py).
                await self._acquire(budget, index, key, step.amount, sliding)
        if usage is not None:
            await self._usage.record(caller, *usage)
        if slot is not None:
            old, new = slot
            if new is None:
                await self._slots.release(caller, old)
            else:
                await self._slots.rename(caller, old, new)

