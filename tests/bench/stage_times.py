"""Where a proxied request's CPU goes, stage by stage, measured in place.

    taskset -c 0 python3 tests/bench/stage_times.py [--scenario status|submit] [--rounds 20]
        [--redis]

`guard_cpu.py` runs the guard stages alone in a tight loop, where they stay in the CPU caches;
inside real requests the rest of the request (HTTP parsing, the upstream client) evicts them
and every stage costs about 3x more. This drives the standalone ASGI app directly (no
server socket on our side) against the shared harness's fake queue upstream (nginx on
:18081, started here on CPU 1), 64 concurrent callers, and reports process CPU per request (best of
`--rounds`) and the wall time of each guard stage and of merging the response headers,
for guards off and guards on (memory limits; Redis with `--redis`, on a redis-server of its
own). A stage's time is its synchronous part: what it hands back to await (a Redis round trip)
is not in it. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxy import pipeline as pipeline_module  # noqa: E402
from proxy.app import create_app  # noqa: E402
from proxy.identity.tokens import issue_token  # noqa: E402
from proxy.settings import Settings, settings_from_dict  # noqa: E402
from tests.bench import guard_cpu  # noqa: E402
from tests.fakes.redis_server import RedisServer  # noqa: E402

BENCH = ROOT.parent / "shared" / "bench"
STATUS, SUBMIT = guard_cpu.STATUS.encode(), guard_cpu.SUBMIT.encode()
BODY = (BENCH / "wrk" / "bodies" / "submit.json").read_bytes().strip()
CALLERS, PER_ROUND = 64, 40
STAGES = ("identify", "authorize", "police", "charge")


def _settings(name: str, redis_url: str) -> Settings:
    """guard_cpu.py's configurations, forwarding to the fake upstream."""
    return settings_from_dict({**guard_cpu.guards_config(name, redis_url),
                               "upstream": {"queue": "http://127.0.0.1:18081"},
                               "fal": {"key": "bench-key"}})


class _Timers:
    """Wall time per named step, summed."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        totals = self.totals

        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)  # (an awaitable it returns is awaited outside the timer)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

        return timed


def request_sender(app: Any, scenario: str) -> Callable[[], Awaitable[None]]:
    """A coroutine function that sends `app` one request of `scenario` in-process (a signed
    bearer token, the harness's submit body or status target) and exits unless it answers
    200. Also `opcodes.py`'s."""
    token = issue_token("bench", 3600, [guard_cpu.SECRET]).encode()
    method, target, body = ("GET", STATUS, b"") if scenario == "status" else ("POST", SUBMIT, BODY)
    headers = [(b"host", b"127.0.0.1"), (b"x-fal-target-url", target),
               (b"authorization", b"Bearer " + token)]
    if body:
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]

    async def one() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": "/api/fal/proxy",
                 "raw_path": b"/api/fal/proxy", "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 5555),
                 "server": ("127.0.0.1", 8000), "state": {}}
        sent = False
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never leaves
            return {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise SystemExit(f"the proxy answered {status}: is the fake upstream running?")

    return one


@contextlib.asynccontextmanager
async def started(app: Any) -> AsyncIterator[None]:
    """`app` through its lifespan: started on entry, shut down on exit."""
    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await lifespan_in.put({"type": "lifespan.startup"})
    life = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     lifespan_in.get, lifespan_out.put))
    await lifespan_out.get()
    try:
        yield
    finally:
        await lifespan_in.put({"type": "lifespan.shutdown"})
        await life


async def _measure(settings: Settings, scenario: str, rounds: int
                   ) -> tuple[float, dict[str, float]]:
    timers = _Timers()
    merge = pipeline_module._merge_headers
    pipeline_module._merge_headers = timers.wrap("merge headers", merge)
    app = create_app(settings)
    one = request_sender(app, scenario)

    async def caller(count: int) -> None:
        for _ in range(count):
            await one()

    try:
        async with started(app):
            pipeline = app.state.proxy.pipeline
            pipeline._stage_list = tuple(
                timers.wrap(name, stage)
                for name, stage in zip(STAGES, pipeline._stage_list, strict=True))
            gc.freeze()  # as `flux-proxy serve` does
            await asyncio.gather(*(caller(PER_ROUND) for _ in range(CALLERS)))  # warm-up
            timers.totals.clear()
            best = float("inf")
            for _ in range(rounds):
                start = time.process_time()
                await asyncio.gather(*(caller(PER_ROUND) for _ in range(CALLERS)))
                best = min(best, (time.process_time() - start) / (CALLERS * PER_ROUND))
            served = rounds * CALLERS * PER_ROUND
            return best * 1e6, {k: v / served * 1e6 for k, v in timers.totals.items()}
    finally:
        pipeline_module._merge_headers = merge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["status", "submit"], default="status")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--redis", action="store_true", help="also guards with Redis limits")
    args = parser.parse_args()
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    upstream = subprocess.Popen([*pin, "bash", str(BENCH / "upstream" / "start.sh")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    names = ["guards-off", "guards-memory"] + (["guards-redis"] if args.redis else [])
    try:
        import uvloop
        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        with RedisServer() if args.redis else _Nothing() as redis:
            url = redis.url if redis is not None else ""
            rows = [(name, *run(_measure(_settings(name, url), args.scenario, args.rounds)))
                    for name in names]
    finally:
        upstream.terminate()
        subprocess.run(["pkill", "-f", "upstream-nginx"], check=False)
    steps = [*STAGES, "merge headers"]
    print(f"\n{args.scenario}: CPU µs per request (best of {args.rounds} rounds of "
          f"{CALLERS * PER_ROUND}), then wall µs per request in each step")
    print(f"{'':15}{'CPU':>8}" + "".join(f"{s:>15}" for s in steps))
    for name, cpu, steps_us in rows:
        print(f"{name:15}{cpu:8.1f}" + "".join(f"{steps_us.get(s, 0.0):15.2f}" for s in steps))
    return 0


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
