"""Queue overhead of the local backend (a benchmark, not a test).

    python3 tests/bench/queue_bench.py [--jobs 200] [--queue 2000,5000] [--seconds 5]
    python3 tests/bench/queue_bench.py --processes 2   # two proxies on one Redis job store
    python3 tests/bench/queue_bench.py --store redis   # one proxy, Redis job store

Starts `flux-proxy serve` (one process with the SQLite store, or `--processes N` sharing a
real `redis-server` job store; demo worker at zero work: 1 step, no sleep, 64x64 image,
`sync_mode`; limits off) and measures, spreading calls over the processes round-robin:
  1. submit-to-start latency, idle queue: one job at a time (started - created, from the store);
  2. status throughput: concurrent `GET status` of a finished job for `--seconds`;
  3. the largest queue: N jobs submitted at once, all must complete with no error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fakes.redis_server import RedisServer  # noqa: E402
from tests.support import TEST_SECRET, fal_id  # noqa: E402

INPUT = {"prompt": "bench", "image_size": {"width": 64, "height": 64},
         "num_inference_steps": 1, "sync_mode": True, "seed": 1}
SUBMIT = "https://queue.fal.run/fal-ai/flux/dev"


def _status(rid: str) -> str:
    return f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_proxy(data: Path, concurrency: int,
                redis_url: str = "") -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    config = data / f"bench-{port}.toml"
    store = f'store = "redis"\nredis_url = "{redis_url}"\n' if redis_url else ""
    config.write_text(
        '[log]\naccess = false\nlevel = "warning"\n[limits]\nenabled = false\n'
        '[policy.inputs."*"]\nallow_sync_mode = true\n'
        f'[identity]\nresolvers = ["address"]\nsecrets = ["{TEST_SECRET}"]\n'
        f'[local]\nmode = "local"\ndata_dir = "{data}"\nmax_queue = 1000000\n{store}'
        f'[[local.workers]]\nkind = "demo"\nstep_seconds = 0.0\nconcurrency = {concurrency}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "FLUX_PROXY"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--port", str(port),
                             "--config", str(config)], env=env, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(200):
        try:
            async with session.get(f"{base}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("proxy did not start")


async def call(session: aiohttp.ClientSession, url: str, target: str,
               body: Any = None) -> tuple[int, Any]:
    method = "POST" if body is not None else "GET"
    async with session.request(method, url, json=body,
                               headers={"x-fal-target-url": target}) as resp:
        return resp.status, await resp.json()


async def wait_done(session: aiohttp.ClientSession, url: str, rid: str) -> dict[str, Any]:
    while True:
        _, body = await call(session, url, _status(rid))
        if body["status"] == "COMPLETED":
            result: dict[str, Any] = body
            return result
        await asyncio.sleep(0.005)


class Jobs:
    """Reads the job store behind the proxies: the SQLite file, or Redis."""

    def __init__(self, data: Path, redis_url: str) -> None:
        self.db = data / "jobs.sqlite3"
        self.redis = redis.Redis.from_url(redis_url) if redis_url else None
        self.prefix = "flux-proxy:jobs"

    def start_latencies(self, signed: list[str]) -> list[float]:
        ids = [fal_id(s) for s in signed]
        if self.redis is not None:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(f"{self.prefix}:job:{job_id}", "started", "created")
            return [(float(a) - float(b)) * 1000 for a, b in pipe.execute()]
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                f"SELECT started - created FROM jobs WHERE id IN ({','.join('?' * len(ids))})",
                ids).fetchall()
        return [r[0] * 1000 for r in rows]

    def unfinished_and_failed(self, signed: list[str]) -> tuple[int, int]:
        if self.redis is not None:
            left = (int(self.redis.zcard(f"{self.prefix}:queue"))  # type: ignore[arg-type]
                    + int(self.redis.zcard(f"{self.prefix}:running")))  # type: ignore[arg-type]
            if left:
                return left, 0
            pipe = self.redis.pipeline(transaction=False)
            for rid in signed:
                pipe.hget(f"{self.prefix}:job:{fal_id(rid)}", "error")
            return 0, sum(e is not None for e in pipe.execute())
        with sqlite3.connect(self.db) as db:
            (left,) = db.execute("SELECT COUNT(*) FROM jobs WHERE "
                                 "status != 'COMPLETED'").fetchone()
            (bad,) = db.execute("SELECT COUNT(*) FROM jobs WHERE "
                                "error IS NOT NULL").fetchone()
        return int(left), int(bad)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        use_redis = args.store == "redis" or (args.store == "" and args.processes > 1)
        server = RedisServer().start() if use_redis else None
        redis_url = server.url if server else ""
        started = [start_proxy(data, args.concurrency, redis_url)
                   for _ in range(args.processes)]
        urls = [f"{base}/api/fal/proxy" for _, base in started]
        turn = iter(range(1 << 62))

        def pick() -> str:  # round-robin over the proxy processes
            return urls[next(turn) % len(urls)]

        jobs = Jobs(data, redis_url)
        conn = aiohttp.TCPConnector(limit=args.clients)
        try:
            async with aiohttp.ClientSession(connector=conn) as session:
                for _, base in started:
                    await wait_up(session, base)
                print(f"{args.processes} proxy process(es), "
                      f"{'Redis' if redis_url else 'SQLite'} job store")
                # 1. submit-to-start, idle queue
                ids = []
                for _ in range(args.jobs):
                    code, sub = await call(session, pick(), SUBMIT, INPUT)
                    assert code == 200, sub
                    ids.append(sub["request_id"])
                    await wait_done(session, pick(), sub["request_id"])
                lat = jobs.start_latencies(ids)
                print(f"submit-to-start (idle queue, {len(lat)} jobs): "
                      f"p50 {statistics.median(lat):.1f} ms, p95 {pct(lat, 0.95):.1f} ms, "
                      f"max {max(lat):.1f} ms")
                # 2. status throughput
                target = _status(ids[-1])
                count = errors = 0
                stop = time.perf_counter() + args.seconds

                async def poller() -> None:
                    nonlocal count, errors
                    while time.perf_counter() < stop:
                        status, _ = await call(session, pick(), target)
                        count += 1
                        errors += status != 200

                t0 = time.perf_counter()
                await asyncio.gather(*(poller() for _ in range(args.clients)))
                elapsed = time.perf_counter() - t0
                print(f"status throughput ({args.clients} clients): {count / elapsed:.0f} req/s, "
                      f"{errors} errors")
                # 3. largest queue
                for size in args.queue:
                    sem = asyncio.Semaphore(args.clients)
                    failures = 0

                    async def submit_one(sem: asyncio.Semaphore = sem) -> str:
                        nonlocal failures
                        async with sem:
                            status, body = await call(session, pick(), SUBMIT, INPUT)
                            failures += status != 200
                            return str(body.get("request_id", ""))

                    t0 = time.perf_counter()
                    rids = await asyncio.gather(*(submit_one() for _ in range(size)))
                    submitted = time.perf_counter() - t0
                    await wait_done(session, pick(), rids[-1])
                    while True:
                        left, bad = jobs.unfinished_and_failed([r for r in rids if r])
                        if not left:
                            break
                        await asyncio.sleep(0.05)
                    drained = time.perf_counter() - t0
                    print(f"queue of {size}: submitted in {submitted:.2f} s "
                          f"({size / submitted:.0f}/s), all done in {drained:.2f} s "
                          f"({size / drained:.0f} jobs/s), {failures} submit errors, "
                          f"{bad} failed jobs")
        finally:
            for proc, _ in started:
                proc.send_signal(signal.SIGTERM)
            for proc, _ in started:
                proc.wait(15)
            if server is not None:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--queue", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1000, 5000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4,
                        help="demo worker slots per process")
    parser.add_argument("--processes", type=int, default=1,
                        help="proxy processes; more than one share a Redis job store")
    parser.add_argument("--store", choices=["sqlite", "redis"], default="",
                        help="job store (default: sqlite for one process, else redis)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
