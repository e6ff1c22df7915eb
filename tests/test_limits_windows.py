"""The in-process windows answer exactly as `limits`' own MemoryStorage does.

Random traffic (hits of 1-3 units, tests, time moving on by up to half a window) is replayed
through both on the same clock; every verdict must match, and every state (remaining, reset)
must be the one read from `limits`' storage after the same step.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from limits.aio.storage import MemoryStorage
from limits.aio.storage import memory as limits_memory

from proxy.limits.budgets import make_budget
from proxy.limits.engine import moving_state, sliding_state
from proxy.limits.local_windows import LocalWindows, MovingLog, SlidingCounter

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


@pytest.mark.parametrize("seed", range(5))
async def test_sliding_counter_matches_limits(clock: list[float], seed: int) -> None:
    assert _BUDGET is not None
    theirs = MemoryStorage()
    ours = SlidingCounter(EXPIRY)
    admitted = 0
    for step, op, amount in _traffic(seed):
        clock[0] += step
        hit = op == "hit"
        verdict, remaining, reset = ours.check(clock[0], LIMIT, amount, hit)
        if hit:
            assert verdict == await theirs.acquire_sliding_window_entry(
                "k", LIMIT, EXPIRY, amount)
            admitted += verdict
        expected = sliding_state(_BUDGET, 0, *await theirs.get_sliding_window("k", EXPIRY))
        if not hit:
            assert verdict == (expected.remaining >= amount)
        assert (remaining, reset) == pytest.approx((expected.remaining, expected.reset))
    assert 0 < admitted < 400  # the traffic both admitted and refused


@pytest.mark.parametrize("seed", range(5))
async def test_moving_log_matches_limits(clock: list[float], seed: int) -> None:
    assert _BUDGET is not None
    theirs = MemoryStorage()
    ours = MovingLog(EXPIRY)
    admitted = 0
    for step, op, amount in _traffic(seed):
        clock[0] += step
        hit = op == "hit"
        verdict, remaining, reset = ours.check(clock[0], LIMIT, amount, hit)
        if hit:
            assert verdict == await theirs.acquire_entry("k", LIMIT, EXPIRY, amount)
            admitted += verdict
        start, count = await theirs.get_moving_window("k", LIMIT, EXPIRY)
        expected = moving_state(_BUDGET, 0, start, count, clock[0])
        if not hit:
            assert verdict == (expected.remaining >= amount)
        assert remaining == expected.remaining
        if count:  # (with nothing inside the window, limits reports a stale start)
            assert reset == pytest.approx(expected.reset)
    assert 0 < admitted < 400


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
