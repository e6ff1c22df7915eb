"""A request's budget checks, evaluated together by the store's engine.

Why: through `limits`' strategies each test, hit and window-stats call cost ~12 µs of CPU (and
a Redis round trip each), and a submit needed six of them plus the slot and usage calls. An
engine takes all of one request's steps at once: `LocalEngine` runs them synchronously on
in-process windows (`local_windows.py`: `limits`' algorithms, its answers), and the Redis
engine (`redis_engine.py`) runs them as one Lua script, one round trip per request stage,
on `limits`' own Redis keys.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .budgets import Budget, Window
from .local_windows import LocalWindow, LocalWindows

if TYPE_CHECKING:
    from .store import MemorySlots, MemoryUsage

__all__ = ["Admission", "Engine", "LocalEngine", "Refund", "Step", "moving_state", "next_turn",
           "sliding_state"]


Step = tuple[Budget, int]  # a budget to hit, and with how many of its integer units


Refund = tuple[Window, int]  # a window as admission reported it, and the amount hit there


class Admission(NamedTuple):
    """What a request's checks found: its header numbers and slot, or what refused.

    `numbers` are two per window hit whose budget is shown (`Budget.shown`), in order: what
    remains in the budget's own units and whole seconds to reset (what `budgets.HeaderPlan`
    formats). The window states themselves (`windows`: for refunds, tests) are built from
    the engine's raw record only when asked for: per request they cost more than the headers
    do, and an admitted request that the upstream accepts never needs them. A named tuple,
    built positionally: every request makes one, and it builds faster than a slots class
    whose `__init__` sets each field (~250 ns against ~310 ns).
    """

    numbers: tuple[int, ...] = ()
    at: float = 0.0  # the clock its hits were counted at: what a refund names
    raw: Any = None  # what `build` makes `windows` from
    build: Callable[[Any], list[Window]] | None = None
    slot: str | int | None = None  # the concurrency slot reserved
    refused: Window | None = None  # the window that refused (its state, for the 429)
    slot_refused: tuple[int, float] | None = None  # (in flight, seconds until one expires)

    @classmethod
    def refusal(cls, window: Window, at: float) -> Admission:
        """Refused by `window` (its state before the hit)."""
        return cls((), at, None, None, None, window)

    @classmethod
    def no_slot(cls, in_flight: int, expires: float, at: float = 0.0) -> Admission:
        """Refused for want of a concurrency slot."""
        return cls((), at, None, None, None, None, (in_flight, expires))

    @property
    def windows(self) -> list[Window]:
        """Each window hit, its state after the hit, in order (built anew on each read)."""
        return self.build(self.raw) if self.build is not None else []


class Engine(Protocol):
    """Evaluates a request's budgets and slot as one atomic step, and settles it afterwards.

    `admit` hits every window of every step, and takes the slot, only if all of them have
    room: a refusal leaves nothing taken. `settle` refunds hits (a cost the upstream never
    accepted: each window as `admit` reported it, the amount hit there, and `at` the
    admission's clock), records usage, and renames the slot (to the second member) or
    releases it (second member None). Both raise the backing's errors when the store is
    down, with nothing half-done in Redis (one script each)."""

    def admit(self, caller: str, hits: tuple[Step, ...], slot: tuple[str, int] | None
              ) -> Awaitable[Admission]: ...

    def settle(self, caller: str, refunds: list[Refund], at: float,
               usage: tuple[int, float] | None,
               slot: tuple[str | int, str | None] | None) -> Awaitable[None]: ...

    def settle_later(self, caller: str, refunds: list[Refund], at: float,
                     usage: tuple[int, float] | None,
                     slot: tuple[str | int, str | None] | None) -> None:
        """`settle`, with nobody waiting: the guard's way (the response is out already; a
        failure is logged, and a slot not renamed expires by itself)."""


def next_turn(ttl: float, period: float) -> float:
    """`ttl % period`, except that a TTL of exactly whole periods is a full period away (Redis
    freezes time inside a script, so a counter set there reads back 2 x expiry exactly)."""
    left = ttl % period
    return period if left == 0 and ttl > 0 else left


def sliding_state(budget: Budget, index: int, prev: int, prev_ttl: float, cur: int,
                  cur_ttl: float) -> Window:
    """A sliding-window counter's state (TTLs in seconds), as `limits`' get_window_stats.

    The reference both engines are tested against: the Redis admission script computes the
    same in Lua, `local_windows` inline."""
    item = budget.items[index]
    expiry = item.get_expiry()
    remaining = max(0, item.amount - math.floor(prev * prev_ttl / expiry + cur))
    if not (prev or cur):
        return Window(budget, item, remaining, 0.0, index)
    reset = math.inf
    if prev:
        reset = next_turn(prev_ttl, expiry / prev)
    if cur:
        reset = min(reset, next_turn(cur_ttl, expiry))
    return Window(budget, item, remaining, max(0.0, reset), index)


def moving_state(budget: Budget, index: int, start: float, count: int, now: float) -> Window:
    """A moving window's state from its oldest entry and entry count."""
    item = budget.items[index]
    expiry = item.get_expiry()
    # clamped: in Redis, entries of requests admitted together may carry a later client clock
    reset = min(float(expiry), max(0.0, start + expiry - now))
    return Window(budget, item, max(0, item.amount - count), reset, index)


_ceil = math.ceil

# One caller's windows for one sequence of budgets, resolved once (see LocalEngine.admit_shape):
# per window (the window, its limit, its budget's scale or 0 when not shown, which amount
# hits it), and per window what its state names (budget, item, index in the budget's items).
_Entry = tuple[LocalWindow, int, int, int]
_Book = tuple[tuple[_Entry, ...], tuple[tuple[Budget, Any, int], ...]]


def _states(raw: tuple[tuple[tuple[Budget, Any, int], ...], list[Any]]) -> list[Window]:
    meta, states = raw  # (remaining, reset, turn) per window, flat
    return [Window(budget, item, states[3 * at], states[3 * at + 1], index, states[3 * at + 2])
            for at, (budget, item, index) in enumerate(meta)]


class LocalEngine:
    """Steps in order on this process's own windows, slots and usage (`memory://`).

    Nothing here awaits: a check cannot interleave with another, so a request's hits and
    slot are atomic, as the Redis script makes them across processes.
    """

    def __init__(self, windows: LocalWindows, slots: MemorySlots, usage: MemoryUsage, *,
                 sliding: bool, cost_sliding: bool) -> None:
        self._store = windows
        self._slots = slots
        self._usage = usage
        self._sliding_for = {False: sliding, True: cost_sliding}  # by "is a cost budget"
        self._books: dict[tuple[str, tuple[Budget, ...]], _Book] = {}
        windows.derived.append(self._books)  # emptied when the sweep drops windows

    def _windows(self, budget: Budget, caller: str, sweep: bool = True
                 ) -> tuple[LocalWindow, ...]:
        return self._store.get(budget.key(caller), budget.expiries,
                               self._sliding_for[budget.scale > 1], sweep)

    async def admit(self, caller: str, hits: tuple[Step, ...], slot: tuple[str, int] | None
                    ) -> Admission:
        return self.admit_now(caller, hits, slot)

    async def settle(self, caller: str, refunds: list[Refund], at: float,
                     usage: tuple[int, float] | None,
                     slot: tuple[str | int, str | None] | None) -> None:
        self.settle_now(caller, refunds, at, usage, slot)

    def admit_now(self, caller: str, hits: tuple[Step, ...], slot: tuple[str, int] | None
                  ) -> Admission:
        """`admit`, synchronously."""
        return self.admit_shape(caller, tuple(budget for budget, _ in hits),
                                tuple(amount for _, amount in hits),
                                *(slot if slot is not None else (None, 0)))

    def _book(self, caller: str, shape: tuple[Budget, ...]) -> _Book:
        """The caller's windows of `shape`'s budgets, made if new, remembered (bounded; the
        sweep empties it when it drops windows)."""
        self._store.maybe_sweep()  # first, not between windows: a new one counts as idle
        entries: list[_Entry] = []
        meta: list[tuple[Budget, Any, int]] = []
        for position, budget in enumerate(shape):
            scale = budget.scale if budget.shown else 0
            for index, window in enumerate(self._windows(budget, caller, sweep=False)):
                item = budget.items[index]
                entries.append((window, item.amount, scale, position))
                meta.append((budget, item, index))
        if len(self._books) >= 65536:
            self._books.clear()
        book = self._books[(caller, shape)] = (tuple(entries), tuple(meta))
        return book

    def admit_shape(self, caller: str, shape: tuple[Budget, ...], amounts: tuple[int, ...],
                    member: str | int | None, slot_limit: int) -> Admission:
        """`admit` of hits on `shape`'s budgets with `amounts` (one each), and of a slot
        `member` under `slot_limit` (None: no slot), synchronously: the guard's way, with `shape`
        fixed per policy, so that a known caller's windows are one lookup (found budget by
        budget, a submit's three cost ~5k instructions more). Each window is hit as it is
        checked; a refusal takes the earlier hits back."""
        book = self._books.get((caller, shape))
        if book is None:
            book = self._book(caller, shape)
        entries = book[0]
        now = self._store.clock()
        numbers: list[int] = []
        states: list[Any] = []  # per window: remaining, reset, turn (a Window's, for refunds)
        for window, limit, scale, position in entries:
            ok, remaining, reset = window.check(now, limit, amounts[position], True)
            if not ok:
                taken = len(states) // 3
                self._take_back(entries[:taken], amounts, now)
                budget, item, index = book[1][taken]
                return Admission.refusal(
                    Window(budget, item, remaining, reset, index, window.turn), now)
            states += (remaining, reset, window.turn)
            if scale:
                numbers += (remaining // scale, _ceil(reset))
        if member is not None:
            full = self._slots.take(caller, member, slot_limit)
            if full is not None:
                self._take_back(entries, amounts, now)
                return Admission.no_slot(*full, now)
        return Admission(tuple(numbers), now, (book[1], states), _states, member)

    @staticmethod
    def _take_back(entries: tuple[_Entry, ...], amounts: tuple[int, ...], now: float) -> None:
        for window, _, _, position in entries:
            window.refund(window.turn, now, amounts[position])

    def settle_now(self, caller: str, refunds: list[Refund], at: float,
                   usage: tuple[int, float] | None,
                   slot: tuple[str | int, str | None] | None) -> None:
        for state, amount in refunds:
            window = self._windows(state.budget, caller)[state.index]
            window.refund(state.turn, at, amount)
        if usage is not None:
            self._usage.add(caller, *usage)
        if slot is not None:
            old, new = slot
            if new is None:
                self._slots.drop(caller, old)
            else:
                self._slots.move(caller, old, new)

    settle_later = settle_now  # nothing to wait for in memory
