"""Both engines (memory and Redis) admit all or nothing, and refund exactly what was hit.

A request's windows and its concurrency slot are one step: when any has no room, none is
taken. A cost the upstream never accepted is refunded from the window that holds it, also
after that window has turned (the refund then lands in the previous count).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.limits.budgets import Budget, make_budget
from proxy.limits.store import Backing, open_backing
from proxy.settings import settings_from_dict
from tests.fakes.redis_server import RedisServer


def _budget(name: str, spec: str, *, cost: bool = False) -> Budget:
    budget = make_budget(name, spec, "*", cost=cost, fail_open=False)
    assert budget is not None
    return budget


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url


def _open(storage: str, strategy: str) -> Backing:
    data: dict[str, Any] = {"limits": {"storage": storage, "key_prefix": f"t{uuid.uuid4().hex}",
                                       "strategy": strategy, "cost_strategy": strategy}}
    return open_backing(settings_from_dict(data).limits)


@pytest.fixture(params=["sliding-window", "moving-window"])
async def backing(request: pytest.FixtureRequest, storage: str) -> AsyncIterator[Backing]:
    opened = _open(storage, request.param)
    yield opened
    await opened.aclose()


async def _remaining(backing: Backing, caller: str, budget: Budget) -> int:
    """What a fresh hit of 1 leaves (so the count before it was limit - this - 1)."""
    admitted = await backing.engine.admit(caller, ((budget, 1),), None)
    assert admitted.refused is None
    return admitted.windows[0].remaining


async def test_a_refusing_window_takes_nothing_from_the_others(backing: Backing) -> None:
    wide, narrow = _budget("submit", "5/minute"), _budget("cost", "2/minute")
    verdicts = [(await backing.engine.admit("user:a", ((wide, 1), (narrow, 1)), None))
                .refused for _ in range(3)]
    assert verdicts[0] is None and verdicts[1] is None
    assert verdicts[2] is not None and verdicts[2].budget is narrow  # the third had no room
    assert await _remaining(backing, "user:a", wide) == 2  # 5 - 2 admitted - this one


async def test_a_refused_slot_takes_no_window(backing: Backing) -> None:
    rate = _budget("submit", "5/minute")
    first = await backing.engine.admit("user:b", ((rate, 1),), ("pending:1", 1))
    assert first.slot == "pending:1"
    second = await backing.engine.admit("user:b", ((rate, 1),), ("pending:2", 1))
    assert second.slot_refused is not None and second.slot is None
    assert await _remaining(backing, "user:b", rate) == 3  # only the first counted


async def test_a_slot_nobody_releases_frees_itself_after_the_expiry(storage: str) -> None:
    """A job whose end nobody sees (no poll after it completed) holds its slot only for
    `concurrency_expiry`, counted again from when the slot was renamed to the job."""
    data = {"limits": {"storage": storage, "key_prefix": f"t{uuid.uuid4().hex}",
                       "concurrency_expiry": 1.0}}
    backing = open_backing(settings_from_dict(data).limits)
    try:
        taken = await backing.engine.admit("user:s", (), ("pending:1", 1))
        assert taken.slot == "pending:1"
        await asyncio.sleep(0.5)
        await backing.engine.settle("user:s", [], taken.at, None, ("pending:1", "job:1"))
        await asyncio.sleep(0.6)  # past the slot's first expiry, not its renewed one
        held = await backing.engine.admit("user:s", (), ("pending:2", 1))
        assert held.slot is None and held.slot_refused is not None
        await asyncio.sleep(0.6)  # past the renewed one too
        freed = await backing.engine.admit("user:s", (), ("pending:3", 1))
        assert freed.slot == "pending:3"
    finally:
        await backing.aclose()


async def test_a_refund_gives_the_cost_back(backing: Backing) -> None:
    cost = _budget("cost", "4/day", cost=True)
    spent = await backing.engine.admit("user:c", ((cost, 300),), None)
    assert spent.refused is None and spent.windows[0].remaining == 100
    refused = await backing.engine.admit("user:c", ((cost, 200),), None)
    assert refused.refused is not None
    await backing.engine.settle("user:c", [(spent.windows[0], 300)], spent.at, None, None)
    whole = await backing.engine.admit("user:c", ((cost, 400),), None)
    assert whole.refused is None and whole.windows[0].remaining == 0


async def test_concurrent_admissions_never_overshoot_a_cost_quota(backing: Backing) -> None:
    cost = _budget("cost", "10/day", cost=True)
    rate = _budget("submit", "1000/minute")
    answers = await asyncio.gather(*(
        backing.engine.admit("user:d", ((cost, 100), (rate, 1)), None)
        for _ in range(40)))
    assert sum(a.refused is None for a in answers) == 10
    assert await _remaining(backing, "user:d", rate) == 1000 - 10 - 1


async def test_a_refund_after_the_window_turned_lands_in_the_previous_count(
    redis_server: RedisServer,
) -> None:
    """Redis's sliding windows turn by TTL, one second after their first hit here: a hit
    refunded after that must leave the previous count, not the new current one."""
    backing = _open(redis_server.url, "sliding-window")
    rate = _budget("submit", "10/second")
    try:
        refunded = await backing.engine.admit("user:e", ((rate, 4),), None)
        await backing.engine.admit("user:f", ((rate, 1),), None)  # the same minus the refund
        await asyncio.sleep(1.2)  # both windows turned: the hits now weigh as the previous count
        await backing.engine.admit("user:e", ((rate, 2),), None)  # a new current count
        await backing.engine.admit("user:f", ((rate, 2),), None)
        await backing.engine.settle("user:e", [(refunded.windows[0], 3)], refunded.at, None,
                                    None)
        assert backing.redis is not None
        counts = []
        for caller in ("user:e", "user:f"):
            (current,) = [k for k in await backing.redis.keys(f"*{caller}*")
                          if not k.endswith(b"/-1")]
            counts.append((await backing.redis.get(current),
                           await backing.redis.get(current + b"/-1")))
        assert counts[0] == counts[1] == (b"2", b"1")
    finally:
        await backing.aclose()


async def test_limits_reads_refunded_counters(redis_server: RedisServer) -> None:
    """`limits`' own moving-window strategy, on its own Redis storage, no longer sees the
    refunded entries."""
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    prefix = f"t{uuid.uuid4().hex}"
    data = {"limits": {"storage": redis_server.url, "key_prefix": prefix,
                       "strategy": "moving-window"}}
    backing = open_backing(settings_from_dict(data).limits)
    theirs = MovingWindowRateLimiter(
        RedisStorage(f"async+{redis_server.url}", implementation="redispy",  # not coredis
                     key_prefix=f"{prefix}:limits"))
    rate = _budget("submit", "5/minute")
    try:
        spent = await backing.engine.admit("user:g", ((rate, 3),), None)
        await backing.engine.settle("user:g", [(spent.windows[0], 2)], spent.at, None, None)
        stats = await theirs.get_window_stats(rate.items[0], *rate.key("user:g"))
        assert stats.remaining == 4
    finally:
        await backing.aclose()
