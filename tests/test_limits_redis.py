"""Budgets in a real `redis-server`: shared by two proxy processes, and through an outage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.fal_upstream import FakeFal
from tests.fakes.redis_server import RedisServer, _free_port
from tests.limits_support import client, queue_call, submit
from tests.support import FAKE_KEY, TEST_SECRET, proxy_settings, proxy_url, running_proxy

ROOT = Path(__file__).resolve().parent.parent


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings and numbers: JSON and TOML agree


def _config(path: Path, fake: FakeFal, limits: dict[str, Any]) -> Path:
    lines = ["[upstream]", *(f"{k} = {_toml(v)}" for k, v in (
        ("run", fake.run_base), ("queue", fake.queue_base), ("rest", fake.rest_base))),
        "[log]", "access = false",
        "[identity]", 'resolvers = ["address"]', f"secrets = {_toml([TEST_SECRET])}",
        "[limits]",
        *(f"{k} = {_toml(v)}" for k, v in limits.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def proxy_process(config: Path) -> Iterator[str]:
    """`flux-proxy serve` as a real process; yields its base URL."""
    port = _free_port()
    env = {**os.environ, "FAL_KEY": FAKE_KEY, "PYTHONPATH": str(ROOT)}
    log = config.with_name(f"proxy-{port}.log")
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--port", str(port),
             "--config", str(config)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proxy did not start: {log.read_text()}")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _usage(config: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "usage", "--json", "--config", str(config)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=30, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


async def test_two_processes_share_one_limit(
    fake_fal: FakeFal, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = _config(tmp_path / "proxy.toml", fake_fal, {
        "storage": redis_server.url, "key_prefix": f"t{uuid.uuid4().hex}",
        "submit": "10/minute", "cost": "", "global_cost": "", "concurrency": 0})
    with ExitStack() as stack:
        bases = [stack.enter_context(proxy_process(config)) for _ in range(2)]
        urls = [f"{b}/api/fal/proxy" for b in bases]
        async with client() as http:
            answers = await asyncio.gather(*(submit(http, urls[i % 2]) for i in range(100)))
            ready = [(await http.get(f"{b}/readyz")).json() for b in bases]
        codes = [r.status_code for r in answers]
        assert codes.count(200) == 10 and codes.count(429) == 90
        assert len(fake_fal.requests(method="POST")) == 10
        assert all(r["limits"] == {"storage": "redis", "state": "up"} for r in ready)
    # usage accounting, read back by the CLI from the same Redis
    rows = _usage(config)
    assert [(r["caller"], r["requests"], r["images"]) for r in rows] == [("ip:127.0.0.1", 10, 10)]
    assert rows[0]["cost"] == 10.0  # 10 x one 1024x1024 image at 28 steps


async def test_redis_outage_fails_closed_for_submits_open_for_polls(fake_fal: FakeFal) -> None:
    with RedisServer() as redis:
        settings = proxy_settings(fake_fal, limits={
            "enabled": True, "storage": redis.url, "submit": "100/minute", "polling": "100/minute"})
        with running_proxy(settings) as server:
            url, base = proxy_url(server), server.url
            async with client() as http:
                rid = (await submit(http, url)).json()["request_id"]
                assert (await http.get(f"{base}/readyz")).status_code == 200
                redis.stop()
                refused = await submit(http, url)
                assert refused.status_code == 503
                assert refused.json()["error_type"] == "limits_unavailable"
                assert "unavailable" in refused.json()["detail"]
                assert len(fake_fal.requests(method="POST")) == 1
                poll = await queue_call(http, url, "GET", rid)  # fails open
                assert poll.status_code in (200, 202) and "ratelimit" not in poll.headers
                down = await http.get(f"{base}/readyz")
                assert down.status_code == 503 and down.json()["limits"]["state"] == "down"
                assert (await http.get(f"{base}/healthz")).status_code == 200
                redis.start()  # same port: the proxy reconnects by itself
                back = await submit(http, url)
                assert back.status_code == 200 and back.headers["ratelimit"]
                assert (await http.get(f"{base}/readyz")).json()["limits"]["state"] == "up"
                metrics = (await http.get(f"{base}/metrics")).text
    assert len(fake_fal.requests(method="POST")) == 2
    assert 'flux_proxy_rate_limit_refusals_total{budget="cost",reason="unavailable"} 1.0' \
        in metrics
