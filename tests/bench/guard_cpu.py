"""CPU per request of the guards alone: identify, authorize, police, charge and settle, in-process.

    python3 tests/bench/guard_cpu.py [--requests 20000] [--rounds 3] [--no-redis]

`cpu_per_request.py` measures whole proxied requests, where HTTP on both sides dominates and
a shared machine moves figures by ±20%. This runs only the pipeline's stages, response
filters and settle hooks for a submit and a status poll (64 concurrent callers of one
process, no sockets except Redis), with the same three configurations: guards off (address
identity, no limits), guards on with memory limits, guards on with Redis limits (a
`redis-server` of its own). It prints process CPU µs per request, the best of `--rounds`,
and what the guards add over guards-off. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxy.assemble import build_services, build_stages  # noqa: E402
from proxy.context import Outcome, ProxyRequest  # noqa: E402
from proxy.identity.tokens import issue_token  # noqa: E402
from proxy.metrics import MetricsAccessLog  # noqa: E402
from proxy.pipeline import Stages  # noqa: E402
from proxy.settings import Settings, settings_from_dict  # noqa: E402
from proxy.target import parse_target  # noqa: E402
from tests.fakes.redis_server import RedisServer  # noqa: E402

SECRET = "bench-signing-secret-0123456789"
LIMITS = {"submit": "100000000/hour", "cost": "100000000/hour", "global_cost": "100000000/day",
          "polling": "100000000/hour", "concurrency": 100000000, "strategy": "sliding-window"}
REQUEST_ID = "2b5e4c1a-7d3f-4e8b-9a61-0c4f2d8e9b17"
STATUS = f"https://queue.fal.run/fal-ai/flux/requests/{REQUEST_ID}/status"
SUBMIT = "https://queue.fal.run/fal-ai/flux/dev"
BODY = json.dumps({"prompt": "a cat in a hat", "image_size": "landscape_4_3",
                   "num_inference_steps": 28, "num_images": 1}).encode()
ANSWERS = {"submit": json.dumps({"request_id": REQUEST_ID, "status": "IN_QUEUE"}).encode(),
           "status": json.dumps({"status": "IN_PROGRESS", "queue_position": 0}).encode()}
CONCURRENCY = 64


def guards_config(name: str, redis_url: str) -> dict[str, Any]:
    """The configuration of guards-off, guards-memory or guards-redis (also stage_times.py's)."""
    data: dict[str, Any] = {"log": {"access": False}, "policy": {"ownership": False},
                            "identity": {"secrets": [SECRET], "resolvers": ["bearer"]},
                            "limits": dict(LIMITS)}
    if name == "guards-off":
        data["identity"]["resolvers"] = ["address"]
        data["limits"] = {"enabled": False}
    elif name == "guards-redis":
        data["limits"]["storage"] = redis_url
    return data


def _settings(name: str, redis_url: str) -> Settings:
    return settings_from_dict(guards_config(name, redis_url))


async def _one(stages: Stages, log: MetricsAccessLog, token: bytes, scenario: str) -> None:
    method, target, body = ("POST", SUBMIT, BODY) if scenario == "submit" else ("GET", STATUS, b"")
    headers = [(b"x-fal-target-url", target.encode()), (b"authorization", b"Bearer " + token)]
    scope = {"type": "http", "method": method, "headers": headers,
             "client": ("127.0.0.1", 40000), "path": "/api/fal/proxy"}
    request = ProxyRequest(scope=scope, method=method, headers=headers,
                           target=parse_target(target, method), body=body)
    for stage in (stages.identify, stages.authorize, stages.police, stages.charge):
        pending = stage(request)  # as the pipeline does: None, or an awaitable to finish
        if pending is not None:
            await pending
    answer = ANSWERS[scenario]
    outcome = Outcome(status=200, upstream_status=200, body=answer)
    for response_filter in request.response_filters:
        filtered = response_filter(request, 200, answer)
        answer = filtered if isinstance(filtered, bytes) else await filtered
    for hook in request.settle_hooks:
        settling = hook(request, outcome)
        if settling is not None:
            await settling
    log.record(scope, request, outcome, request.started)


async def _measure(settings: Settings, scenario: str, requests: int) -> float:
    services = build_services(settings)
    stages = build_stages(settings, services)
    log = MetricsAccessLog(services.metrics, False)
    token = issue_token("bench", 3600, [SECRET]).encode()

    async def caller(count: int) -> None:
        for _ in range(count):
            await _one(stages, log, token, scenario)

    try:
        await asyncio.gather(*(caller(requests // CONCURRENCY // 4) for _ in range(CONCURRENCY)))
        start = time.process_time()
        await asyncio.gather(*(caller(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
        return (time.process_time() - start) / (requests // CONCURRENCY * CONCURRENCY) * 1e6
    finally:
        await services.aclose()


async def _main(args: argparse.Namespace, redis_url: str) -> None:
    names = ["guards-off", "guards-memory"] + ([] if args.no_redis else ["guards-redis"])
    best: dict[tuple[str, str], float] = {}
    for name in names:
        for scenario in ("submit", "status"):
            runs = [await _measure(_settings(name, redis_url), scenario, args.requests)
                    for _ in range(args.rounds)]
            best[(name, scenario)] = min(runs)
    print(f"\n{'TARGET':15}{'SCENARIO':10}{'CPU us/req':>12}{'added us':>10}")
    for (name, scenario), us in best.items():
        added = us - best[("guards-off", scenario)]
        print(f"{name:15}{scenario:10}{us:12.1f}{added:10.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop
        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    if args.no_redis:
        run(_main(args, ""))
        return 0
    with RedisServer() as redis:
        run(_main(args, redis.url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
