"""The in-process windows answer exactly as `limits`' own MemoryStorage does.

Random traffic (hits of 1-3 units, tests, time moving on by up to half a window) is replayed
through both on the same clock; every verdict must match, and every state (remaining, reset)
must be the one read from `limits`' storage after the same step.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
from limits.aio.storage import MemoryStorage
from limits.aio.storage import memory as limits_memory

from proxy.limits.budgets import Budget, Window, make_budget
from proxy.limits.engine import LocalEngine, moving_state, sliding_state
from proxy.limits.local_windows import LocalWindows, MovingLog, SlidingCounter
from proxy.limits.store import MemorySlots, MemoryUsage

LIMIT, EXPIRY = 10, 2


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1_000_000.123]
    monkeypatch.setattr(limits_memory, "time", SimpleNamespace(time=lambda: now[0]))
    return now


def _traffic(seed: int) -> list[tuple[float, str, int]]:
    rng = random.Random(seed)
    return [(rng.uniform(0, EXPIRY / 2) if rng.random() < 0.3 else 0.0,
             rng.choice(["hit", "hit", "state"]), rng.randint(1, 3)) for _ in range(400)]


# One budget of one window, to read `limits`' storage state the way the Redis engine does.
_BUDGET = make_budget("submit", f"{LIMIT}/{EXPIRY} seconds", "*", cost=False, fail_open=False)


async def _sliding(theirs: MemoryStorage, now: float, amount: int | None
                   ) -> tuple[bool | None, Window, bool]:
    """`limits`' verdict on a hit of `amount` (None: no hit), then its state, and whether
    that state's reset is meaningful."""
    verdict = None if amount is None else await theirs.acquire_sliding_window_entry(
        "k", LIMIT, EXPIRY, amount)
    return verdict, sliding_state(_window(), 0, *await theirs.get_sliding_window("k", EXPIRY)), True


async def _moving(theirs: MemoryStorage, now: float, amount: int | None
                  ) -> tuple[bool | None, Window, bool]:
    verdict = None if amount is None else await theirs.acquire_entry("k", LIMIT, EXPIRY, amount)
    start, count = await theirs.get_moving_window("k", LIMIT, EXPIRY)
    # with nothing inside the window, limits reports a stale start: no reset to compare
    return verdict, moving_state(_window(), 0, start, count, now), count > 0


def _window() -> Budget:
    assert _BUDGET is not None
    return _BUDGET


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("ours", "theirs_step"), [(SlidingCounter, _sliding),
                                                   (MovingLog, _moving)])
async def test_windows_match_limits(clock: list[float], seed: int, ours: Any,
                                    theirs_step: Any) -> None:
    theirs = MemoryStorage()
    window = ours(EXPIRY)
    admitted = 0
    for step, op, amount in _traffic(seed):
        clock[0] += step
        hit = op == "hit"
        verdict, remaining, reset = window.check(clock[0], LIMIT, amount, hit)
        their_verdict, expected, reset_known = await theirs_step(
            theirs, clock[0], amount if hit else None)
        if hit:
            assert verdict == their_verdict
            admitted += verdict
        else:
            assert verdict == (expected.remaining >= amount)
        assert remaining == expected.remaining
        if reset_known:
            assert reset == pytest.approx(expected.reset)
    assert 0 < admitted < 400  # the traffic both admitted and refused


def test_idle_windows_are_dropped_only_by_a_sweep_and_only_when_idle() -> None:
    now = [5000.0]
    windows = LocalWindows(sweep_interval=0.0, clock=lambda: now[0])
    (busy,) = windows.get(("submit", "*", "a"), (60,), True)
    assert busy.check(now[0], 5, 1, True)[0]
    (gone,) = windows.get(("submit", "*", "b"), (1,), True)
    assert gone.check(now[0], 5, 1, True)[0]
    now[0] += 2.5  # b's counts left its window; a's did not
    windows.get(("submit", "*", "c"), (1,), True)
    assert set(windows.windows) == {("submit", "*", "a"), ("submit", "*", "c")}
    assert windows.get(("submit", "*", "a"), (60,), True) == (busy,)  # same counter kept


def test_a_refund_leaves_the_count_that_holds_the_hit() -> None:
    """A sliding counter's hit moves from the current count to the previous one when its
    fixed window turns: a refund follows it there, and is gone with it."""
    counter = SlidingCounter(10)
    assert counter.check(1005.0, 10, 4, True)[0]
    turn = counter.turn
    counter.refund(turn, 1005.0, 1)
    assert (counter.current, counter.previous) == (3, 0)
    counter.check(1012.0, 10, 2, True)  # the next fixed window: 3 weigh as the previous count
    counter.refund(turn, 1005.0, 2)
    assert (counter.current, counter.previous) == (2, 1)
    counter.check(1031.0, 10, 1, True)  # two windows on: the hit left the sliding window
    counter.refund(turn, 1005.0, 5)
    assert (counter.current, counter.previous) == (1, 0)


def test_a_moving_refund_removes_its_own_entry() -> None:
    log = MovingLog(10)
    for at, amount in ((100.0, 2), (101.0, 3), (102.0, 1)):
        assert log.check(at, 10, amount, True)[0]
    log.refund(log.turn, 101.0, 3)
    assert list(log.entries) == [(100.0, 2), (102.0, 1)] and log.count == 3
    assert log.check(111.0, 10, 1, True)[2] == pytest.approx(1.0)  # 102's entry leaves first
    log.refund(log.turn, 100.0, 2)  # already left the window: nothing to take back
    assert log.count == 2


@pytest.mark.parametrize("sliding", [True, False])
def test_the_engines_remembered_windows_follow_the_sweep(sliding: bool) -> None:
    """The memory engine remembers each caller's windows per set of budgets; when the sweep
    drops idle windows it forgets them too, so hits, refunds and a new caller's windows
    always meet the same counters the table holds (even with a sweep due on every call)."""
    now = [7200.0]
    windows = LocalWindows(sweep_interval=0.0, clock=lambda: now[0])
    engine = LocalEngine(windows, MemorySlots(60.0), MemoryUsage(1), sliding=sliding,
                         cost_sliding=sliding)
    submit = make_budget("submit", "3/minute", "*", cost=False, fail_open=False)
    cost = make_budget("cost", "5/minute", "*", cost=False, fail_open=False)
    assert submit is not None and cost is not None
    hits = ((cost, 2), (submit, 1))
    first = engine.admit_now("a", hits, None)
    assert first.refused is None and [w.remaining for w in first.windows] == [3, 2]
    # a new caller with two budgets: a sweep while its windows are made drops none of them
    other = engine.admit_now("b", hits, None)
    assert [w.remaining for w in other.windows] == [3, 2]
    assert set(windows.windows) == {(n, "*", c) for n in ("cost", "submit") for c in "ab"}
    now[0] += 300  # a's and b's counts leave their windows: the next new caller sweeps them
    engine.admit_now("c", ((submit, 1),), None)
    assert set(windows.windows) == {("submit", "*", "c")}
    again = engine.admit_now("a", hits, None)  # fresh windows, the table's
    assert [w.remaining for w in again.windows] == [3, 2]
    engine.settle_now("a", [(again.windows[0], 2)], again.at, None, None)  # a refund
    assert [w.remaining for w in engine.admit_now("a", hits, None).windows] == [3, 1]


async def test_memory_usage_counts_per_day_and_forgets_days_past_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In memory, usage is kept per caller and UTC day; a new day starts its own rows, and
    days past the retention period are dropped (the Redis keys expire likewise)."""
    from proxy.limits import store

    day = 20_000 * 86400.0  # a midnight, UTC
    now = [day + 86400 - 1.0]  # the last second of that day
    monkeypatch.setattr(store, "time", SimpleNamespace(time=lambda: now[0]))
    usage = MemoryUsage(1)  # today and yesterday are kept
    usage.add("a", 1, 0.5)
    usage.add("a", 2, 0.25)
    usage.add("b", 4, 1.0)
    first = store.today(day)
    now[0] = day + 86400  # midnight: the next day
    usage.add("a", 1, 1.0)
    second = store.today(now[0])
    rows = await usage.read([first, second])
    assert [(u.day, u.caller, u.requests, u.images, u.cost) for u in rows] == [
        (first, "a", 2, 3, 0.75), (first, "b", 1, 4, 1.0), (second, "a", 1, 1, 1.0)]
    now[0] = day + 2 * 86400 + 5  # two days on: the first is past the retention period
    usage.add("b", 1, 0.5)
    third = store.today(now[0])
    rows = await usage.read([first, second, third])
    assert [(u.day, u.caller, u.requests) for u in rows] == [(second, "a", 1), (third, "b", 1)]
