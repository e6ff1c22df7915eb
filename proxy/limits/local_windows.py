"""In-process rate-limit windows: `limits`' two algorithms on plain objects, no awaits.

Why not `limits`' own `MemoryStorage`: every window check there is several coroutines (a
`get` per counter, an `asyncio.Lock` per increment, an expiry task), ~8 µs for a status
poll's one window and ~40 µs for a submit's admission and settlement; guards must add less
than 15% to a proxied request (~100 µs in all). In one process nothing can interleave inside
a synchronous check, so a window is one small object and a hit a few arithmetic steps.

The answers are `limits`' own (tests/test_limits_windows.py replays random traffic through
both and compares every verdict and state):

* sliding-window counter: a count for the current fixed window and the previous one; the
  previous one weighs by the share of it still inside the sliding window;
* moving window: the time of every hit still inside the window (here one entry per hit with
  its amount, where `limits` keeps one entry per unit).

Windows nobody touched for a whole period are dropped by a sweep that runs at most once per
`sweep_interval` seconds, so one-off callers do not stay in memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LocalWindow", "LocalWindows", "MovingLog", "SlidingCounter"]


class SlidingCounter:
    """`limits`' sliding-window counter for one key."""

    __slots__ = ("current", "end", "expiry", "previous", "turn")

    def __init__(self, expiry: int) -> None:
        self.expiry = expiry
        self.turn = -2  # which fixed window `current` counts (now // expiry); refunds name it
        self.end = -1.0  # when that fixed window ends ((turn + 1) * expiry)
        self.current = 0
        self.previous = 0

    def check(self, now: float, limit: int, amount: int, hit: bool) -> tuple[bool, int, float]:
        """Would `amount` more fit under `limit`? Takes it if so and `hit`. Returns that
        verdict, what remains and the seconds until more frees up (`limits`' window stats:
        a test reports the state before, a hit the state after)."""
        expiry = self.expiry
        left = self.end - now  # TTL of the previous count; the current's + expiry
        if not 0 < left <= expiry:  # a new fixed window: the current count becomes previous
            position = now / expiry
            turn = int(position)
            if turn != self.turn:
                self.previous = self.current if turn == self.turn + 1 else 0
                self.current = 0
                self.turn = turn
                self.end = (turn + 1) * expiry
            left = (1 - position % 1) * expiry
        previous = self.previous
        current = self.current
        # the weighted count, floored (int() floors what is never negative)
        count = int(previous * left / expiry + current) if previous else current
        ok = count + amount <= limit
        if ok and hit:
            current = self.current = current + amount
            count += amount
        remaining = limit - count if count < limit else 0
        # Seconds until the count drops: the previous count loses one unit every
        # expiry / previous seconds (engine.next_turn), the current one leaves with the window.
        if previous:
            period = expiry / previous
            reset = left % period or period
            return ok, remaining, left if current and left < reset else reset
        return ok, remaining, left if current else 0.0

    def refund(self, turn: int, at: float, amount: int) -> None:
        """Take back a hit of `amount` made in fixed window `turn`, from the count that now
        holds it (none once that window has left the sliding one)."""
        if turn == self.turn:
            self.current = max(0, self.current - amount)
        elif turn == self.turn - 1:
            self.previous = max(0, self.previous - amount)

    def idle(self, now: float) -> bool:
        return int(now / self.expiry) > self.turn + 1  # both counts have left the window


class MovingLog:
    """`limits`' moving window for one key: hits inside the last `expiry` seconds."""

    __slots__ = ("count", "entries", "expiry")

    def __init__(self, expiry: int) -> None:
        self.expiry = expiry
        self.entries: deque[tuple[float, int]] = deque()  # (time, amount), oldest first
        self.count = 0

    def _trim(self, now: float) -> None:
        entries = self.entries
        oldest = now - self.expiry
        while entries and entries[0][0] < oldest:
            self.count -= entries.popleft()[1]

    def check(self, now: float, limit: int, amount: int, hit: bool) -> tuple[bool, int, float]:
        """As `SlidingCounter.check`; the reset is when the oldest hit leaves the window."""
        entries = self.entries
        expiry = self.expiry
        count = self.count
        oldest = now - expiry
        while entries and entries[0][0] < oldest:  # (_trim, inline)
            count -= entries.popleft()[1]
        ok = count + amount <= limit
        if ok and hit:
            entries.append((now, amount))
            count += amount
        self.count = count
        reset = entries[0][0] + expiry - now if entries else expiry + 0.0
        if reset > expiry or reset < 0:  # a clock that stepped back
            reset = expiry + 0.0 if reset > 0 else 0.0
        return ok, limit - count if count < limit else 0, reset

    turn = 0  # hits are named by their time

    def refund(self, turn: int, at: float, amount: int) -> None:
        """Take back the hit of `amount` made at `at`, if it is still inside the window."""
        try:
            self.entries.remove((at, amount))
        except ValueError:  # trimmed already
            return
        self.count -= amount

    def idle(self, now: float) -> bool:
        self._trim(now)
        return not self.entries


LocalWindow = SlidingCounter | MovingLog


class LocalWindows:
    """Every window of this process: per budget and caller, one window per limit item (a
    budget of "10/minute;100/hour" has two), made on first use."""

    def __init__(self, *, sweep_interval: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.windows: dict[tuple[str, str, str], tuple[LocalWindow, ...]] = {}
        # Tables of references to these windows kept elsewhere (the engine's per-caller
        # books): emptied whenever the sweep drops windows, so none outlives its window.
        self.derived: list[dict[Any, Any]] = []
        self.clock = clock
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0

    def get(self, key: tuple[str, str, str], expiries: tuple[int, ...], sliding: bool,
            sweep: bool = True) -> tuple[LocalWindow, ...]:
        windows = self.windows.get(key)
        if windows is None:
            if sweep:
                self.maybe_sweep()
            kind = SlidingCounter if sliding else MovingLog
            windows = self.windows[key] = tuple(kind(expiry) for expiry in expiries)
        return windows

    def maybe_sweep(self) -> None:
        """Drop idle windows, at most once per interval (only when a new one is made, so
        steady traffic from known callers never pays for it). A new window counts as idle
        until it is hit: whoever fetches several to use together sweeps first, then gets
        them with `sweep=False`."""
        mono = time.monotonic()
        if mono < self._next_sweep:
            return
        self._next_sweep = mono + self._sweep_interval
        now = self.clock()
        idle = [key for key, windows in self.windows.items()
                if all(window.idle(now) for window in windows)]
        for key in idle:
            del self.windows[key]
        if idle:
            for table in self.derived:
                table.clear()
