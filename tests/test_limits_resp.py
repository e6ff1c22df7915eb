"""The Redis engine's own connection (`proxy/limits/resp.py`), against real `redis-server`s:
exact counts for calls batched together, scripts loaded again after a flush, timeouts,
reconnection, AUTH, the URL's db, and TLS."""

from __future__ import annotations

import asyncio
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
from proxy.limits.engine import Step
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
    admitted = await backing.engine.admit(caller, [], None, [Step(_submit(), 1)])
    return admitted.refused is None


async def test_calls_of_one_turn_share_a_script_call_and_count_exactly(
    redis_server: RedisServer,
) -> None:
    async with _backing(redis_server.url) as backing:
        results = await asyncio.gather(*(_hit(backing, f"user:{i % 3}") for i in range(60)))
        assert [sum(results[i::3]) for i in range(3)] == [5, 5, 5]  # 5 per caller, exactly
        member = f"pending:{uuid.uuid4().hex}"
        taken = await backing.engine.admit("user:slots", [], (member, 1), [])
        assert taken.slot == member
        refused = await backing.engine.admit("user:slots", [], ("pending:other", 1), [])
        assert refused.slot_refused is not None and refused.slot_refused[0] == 1
        await backing.engine.settle("user:slots", [], (1, 2.5), (member, None))
        again = await backing.engine.admit("user:slots", [], ("pending:third", 1), [])
        assert again.slot == "pending:third"
        rows = await backing.usage.read([today()], "user:slots")
        assert [(r.requests, r.images, r.cost) for r in rows] == [(1, 1, 2.5)]


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
