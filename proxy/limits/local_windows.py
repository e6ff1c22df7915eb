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

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["LocalWindow", "LocalWindows", "MovingLog", "SlidingCounter", "next_turn"]


def next_turn(ttl: float, period: float) -> float:
    """`ttl % period`, except that a TTL of exactly whole periods is a full period away (Redis
    freezes time inside a script, so a counter set there reads back 2 x expiry exactly)."""
    left = ttl % period
    return period if left == 0 and ttl > 0 else left


class SlidingCounter:
    """`limits`' sliding-window counter for one key."""

    __slots__ = ("current", "expiry", "number", "previous")

    def __init__(self, expiry: int) -> None:
        self.expiry = expiry
        self.number = -2  # which fixed window `current` counts (now // expiry)
        self.current = 0
        self.previous = 0

    def check(self, now: float, limit: int, amount: int, hit: bool) -> tuple[bool, int, float]:
        """Would `amount` more fit under `limit`? Takes it if so and `hit`. Returns that
        verdict, what remains and the seconds until more frees up (`limits`' window stats:
        a test reports the state before, a hit the state after)."""
        expiry = self.expiry
        position = now / expiry
        number = int(position)
        if number != self.number:  # a new fixed window: the current count becomes previous
            self.previous = self.current if number == self.number + 1 else 0
            self.current = 0
            self.number = number
        left = (1 - position % 1) * expiry  # TTL of the previous count; the current's + expiry
        previous = self.previous
        weighted = math.floor(previous * left / expiry + self.current)
        ok = amount <= limit and weighted + amount <= limit
        if ok and hit:
            self.current += amount
        current = self.current
        remaining = max(0, limit - math.floor(previous * left / expiry + current))
        if not (previous or current):
            return ok, remaining, 0.0
        reset = next_turn(left, expiry / previous) if previous else math.inf
        if current:
            reset = min(reset, next_turn(left + expiry, expiry))
        return ok, remaining, max(0.0, reset)

    @property
    def turn(self) -> int:
        """Which fixed window a hit now goes into (what a refund names)."""
        return self.number

    def refund(self, turn: int, at: float, amount: int) -> None:
        """Take back a hit of `amount` made in fixed window `turn`, from the count that now
        holds it (none once that window has left the sliding one)."""
        number = turn
        if number == self.number:
            self.current = max(0, self.current - amount)
        elif number == self.number - 1:
            self.previous = max(0, self.previous - amount)

    def idle(self, now: float) -> bool:
        return int(now / self.expiry) > self.number + 1  # both counts have left the window


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
        self._trim(now)
        ok = amount <= limit and self.count + amount <= limit
        if ok and hit:
            self.entries.append((now, amount))
            self.count += amount
        expiry = self.expiry
        start = self.entries[0][0] if self.entries else now
        return ok, max(0, limit - self.count), min(float(expiry), max(0.0, start + expiry - now))

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
        self.clock = clock
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0

    def get(self, key: tuple[str, str, str], expiries: tuple[int, ...], sliding: bool
            ) -> tuple[LocalWindow, ...]:
        windows = self.windows.get(key)
        if windows is None:
            self._maybe_sweep()
            kind = SlidingCounter if sliding else MovingLog
            windows = self.windows[key] = tuple(kind(expiry) for expiry in expiries)
        return windows

    def _maybe_sweep(self) -> None:
        """Drop idle windows, at most once per interval (only when a new one is made, so
        steady traffic from known callers never pays for it)."""
        mono = time.monotonic()
        if mono < self._next_sweep:
            return
        self._next_sweep = mono + self._sweep_interval
        now = self.clock()
        idle = [key for key, windows in self.windows.items()
                if all(window.idle(now) for window in windows)]
        for key in idle:
            del self.windows[key]
