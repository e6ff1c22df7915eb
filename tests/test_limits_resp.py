"""The Redis engine's own connection (`proxy/limits/resp.py`), against real `redis-server`s:
exact counts for calls batched together, scripts loaded again after a flush, timeouts,
reconnection, AUTH, the URL's db, and TLS."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from redis.asyncio import Redis

from proxy.limits.budgets import Budget, make_budget
from proxy.limits.engine import moving_state, sliding_state
from proxy.limits.redis_engine import _STATES
from proxy.limits.store import Backing, open_backing, today
from proxy.settings import settings_from_dict
from tests.fakes.redis_server import RedisServer, _free_port

SUBMIT = make_budget("submit", "5/minute", "*", cost=False, fail_open=False)


def _submit() -> Budget:
    assert SUBMIT is not None
    return SUBMIT


@asynccontextmanager
async def _backing(url: str, **limits: Any) -> AsyncIterator[Backing]:
    data = {"limits": {"storage": url, "key_prefix": f"t{uuid.uuid4().hex}",
                       "strategy": "sliding-window", **limits}}
    backing = open_backing(settings_from_dict(data).limits)
    try:
        yield backing
    finally:
        await backing.aclose()


async def _hit(backing: Backing, caller: str = "user:a") -> bool:
    """One submit hit; True when admitted."""
    admitted = await backing.engine.admit(caller, ((_submit(), 1),), None)
    return admitted.refused is None


async def test_calls_of_one_turn_go_out_batched_and_count_exactly(
    redis_server: RedisServer,
) -> None:
    """60 checks issued in one turn travel in a few script calls (groups of 16, the rest at
    the turn's end), each evaluated as if alone: exactly 5 per caller get through."""
    async with _backing(redis_server.url) as backing:
        results = await asyncio.gather(*(_hit(backing, f"user:{i % 3}") for i in range(60)))
        assert [sum(results[i::3]) for i in range(3)] == [5, 5, 5]  # 5 per caller, exactly
        member = f"pending:{uuid.uuid4().hex}"
        taken = await backing.engine.admit("user:slots", (), (member, 1))
        assert taken.slot == member
        refused = await backing.engine.admit("user:slots", (), ("pending:other", 1))
        assert refused.slot_refused is not None and refused.slot_refused[0] == 1
        await backing.engine.settle("user:slots", [], 0.0, (1, 2.5), (member, None))
        again = await backing.engine.admit("user:slots", (), ("pending:third", 1))
        assert again.slot == "pending:third"
        rows = await backing.usage.read([today()], "user:slots")
        assert [(r.requests, r.images, r.cost) for r in rows] == [(1, 1, 2.5)]


async def test_usage_in_redis_expires_after_the_retention_period(
    redis_server: RedisServer,
) -> None:
    """A day's usage (the caller's hash, the day's caller set) lives for the retention period
    and a day, from the day's first request: usage cannot pile up in Redis forever."""
    prefix = f"t{uuid.uuid4().hex}"
    async with _backing(redis_server.url, usage_retention_days=7, key_prefix=prefix) as backing:
        assert backing.redis is not None
        for images in (1, 3):  # the second request adds to the first, under the same expiry
            await backing.engine.settle("user:u", [], 0.0, (images, 0.5), None)
        rows = await backing.usage.read([today()], "user:u")
        assert [(r.requests, r.images, r.cost) for r in rows] == [(2, 4, 1.0)]
        keys = [k async for k in backing.redis.scan_iter(match=f"{prefix}:usage:*")]
        assert len(keys) == 2  # the caller's hash and the day's caller set
        for key in keys:
            ttl = await backing.redis.ttl(key)
            assert 8 * 86400 - 60 < ttl <= 8 * 86400


async def test_a_flushed_script_is_loaded_again(redis_server: RedisServer) -> None:
    async with _backing(redis_server.url) as backing:
        assert await _hit(backing)
        assert backing.redis is not None
        await backing.redis.script_flush()
        results = await asyncio.gather(*(_hit(backing) for _ in range(10)))
        assert results.count(True) == 4  # one already taken: still exact


async def test_a_server_that_does_not_answer_times_out(unused_tcp_port: int) -> None:
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(silent, "127.0.0.1", unused_tcp_port)
    async with server, _backing(f"redis://127.0.0.1:{unused_tcp_port}/0",
                                redis_timeout=0.2) as backing:
        for _ in range(2):  # the second call opens a new connection and times out as well
            started = time.monotonic()
            with pytest.raises(backing.errors):
                await _hit(backing)
            assert time.monotonic() - started < 2
        assert len(received) == 2 and all(b"EVALSHA" in r for r in received)


async def test_nothing_listening_is_an_error_of_the_backing() -> None:
    async with _backing(f"redis://127.0.0.1:{_free_port()}/0") as backing:
        with pytest.raises(backing.errors):
            await _hit(backing)


async def test_a_restarted_server_is_reconnected() -> None:
    with RedisServer() as redis:
        async with _backing(redis.url) as backing:
            assert await _hit(backing)
            redis.stop()
            with pytest.raises(backing.errors):
                await _hit(backing)
            redis.start()
            assert await _hit(backing)  # a new server: counts start again, script reloaded


async def test_password_and_db_from_the_settings_and_url() -> None:
    with RedisServer(args=("--requirepass", "s3cret-pass")) as redis:
        url = f"redis://127.0.0.1:{redis.port}/3"
        async with _backing(url, redis_password="s3cret-pass", key_prefix="authdb") as backing:
            assert await _hit(backing)
        async with Redis(port=redis.port, db=3, password="s3cret-pass") as check:
            assert await check.keys("authdb:*")
        async with Redis(port=redis.port, db=0, password="s3cret-pass") as check:
            assert not await check.keys("authdb:*")
        async with _backing(url, redis_password="wrong") as backing:
            with pytest.raises(backing.errors):
                await _hit(backing)


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[dict[str, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    yield files


async def test_tls(tls_files: dict[str, str]) -> None:
    port = _free_port()
    with RedisServer(args=("--tls-port", str(port), "--tls-cert-file", tls_files["cert"],
                           "--tls-key-file", tls_files["key"],
                           "--tls-ca-cert-file", tls_files["ca"], "--tls-auth-clients", "no")):
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files['ca']}"
        async with _backing(url) as backing:
            assert await _hit(backing)
            assert backing.redis is not None and await backing.redis.ping()
        untrusted = f"rediss://127.0.0.1:{port}/0"  # the test CA is not trusted by default
        async with _backing(untrusted) as backing:
            with pytest.raises(backing.errors):
                await _hit(backing)


_STATES_CHECK = "local now = tonumber(ARGV[1])\n" + _STATES + """
local out = {}
for i = 2, #ARGV do
  local kind, a, b, c, d, limit, expiry, scale =
    string.match(ARGV[i], '^(%a) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  local s = {tonumber(a), b, tonumber(c), tonumber(d)}
  local remaining, reset
  if kind == 's' then
    s[2] = tonumber(b)
    remaining, reset = sliding_state(s, tonumber(limit), tonumber(expiry))
  else
    remaining, reset = moving_state(s, tonumber(limit), tonumber(expiry))
  end
  out[#out + 1] = string.format('%d', remaining) .. ' ' .. string.format('%.17g', reset) ..
    ' ' .. header_numbers(remaining, reset, tonumber(scale))
end
return out
"""


async def test_the_scripts_window_states_are_the_engines(redis_server: RedisServer) -> None:
    """The admission script computes each window's state itself: exactly what
    `engine.sliding_state` and `moving_state` compute in Python, bit for bit, and from it
    the RateLimit header's numbers that the memory engine reports."""
    rng = random.Random(7)
    now = time.time()
    cases: list[tuple[Budget, str]] = []
    for spec, cost in (("7/minute", False), ("100/hour", False), ("3/day", True)):
        budget = make_budget("b", spec, "*", cost=cost, fail_open=False)
        assert budget is not None
        item = budget.items[0]
        limit, expiry = item.amount, item.get_expiry()
        for _ in range(300):
            counts = [rng.choice([0, 1, rng.randrange(limit * 2 + 1)]) for _ in range(2)]
            ttls = [rng.choice([0, expiry * 1000, 2 * expiry * 1000,
                                rng.randrange(2 * expiry * 1000)]) for _ in range(2)]
            cases.append((budget, f"s {counts[0]} {ttls[0]} {counts[1]} {ttls[1]} "
                                  f"{limit} {expiry} {budget.scale}"))
            start = rng.choice([now, now - expiry, now - rng.random() * expiry * 1.2])
            cases.append((budget, f"m {counts[0]} {start!r} 0 0 {limit} {expiry} "
                                  f"{budget.scale}"))
    async with Redis(port=redis_server.port) as redis:
        replies = await redis.eval(_STATES_CHECK, 0, repr(now), *(case for _, case in cases))
    for (budget, case), reply in zip(cases, replies, strict=True):
        kind, a, b, c, d, *_ = case.split()
        if kind == "s":
            want = sliding_state(budget, 0, int(a), int(b) / 1000, int(c), int(d) / 1000)
        else:
            want = moving_state(budget, 0, float(b), int(a), now)
        remaining, reset, left, seconds = reply.split()
        assert (int(remaining), float(reset)) == (want.remaining, want.reset), case
        assert (int(left), int(seconds)) == (want.remaining // budget.scale,
                                             math.ceil(want.reset)), case


@pytest.mark.parametrize("strategy", ["sliding-window", "moving-window"])
async def test_limits_own_redis_storage_reads_the_engines_counters(
    redis_server: RedisServer, strategy: str,
) -> None:
    """The scripts keep `limits`' keys and algorithms: its own strategies, on its own Redis
    storage, see what the engine counted and refuse where the engine would."""
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    prefix = f"t{uuid.uuid4().hex}"
    data = {"limits": {"storage": redis_server.url, "key_prefix": prefix, "strategy": strategy}}
    backing = open_backing(settings_from_dict(data).limits)
    # redis-py, the client this project depends on (`limits` defaults to coredis)
    theirs = RedisStorage(f"async+{redis_server.url}", implementation="redispy",
                          key_prefix=f"{prefix}:limits")
    limiter = (SlidingWindowCounterRateLimiter(theirs) if strategy == "sliding-window"
               else MovingWindowRateLimiter(theirs))
    item = _submit().items[0]
    try:
        assert [await _hit(backing) for _ in range(3)] == [True] * 3
        stats = await limiter.get_window_stats(item, *_submit().key("user:a"))
        assert stats.remaining == 2  # 5 per minute, 3 used by the engine
        assert await limiter.hit(item, *_submit().key("user:a"), cost=2)
        assert not await _hit(backing)  # limits' 2 hits count for the engine too
    finally:
        await backing.aclose()


async def test_a_settlement_nobody_waits_for_is_logged_when_it_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The guard settles without waiting (the response is out): a store that is gone by
    then costs a warning in the log, never an error in the request."""
    with RedisServer() as redis:
        async with _backing(redis.url) as backing:
            assert await _hit(backing)
            redis.stop()
            backing.engine.settle_later("user:a", [], 0.0, (1, 1.0), ("pending:x", "job:y"))
            for _ in range(100):
                if "while settling" in caplog.text:
                    break
                await asyncio.sleep(0.02)
    assert "limits store unavailable while settling requests" in caplog.text
