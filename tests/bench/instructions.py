"""What the guards cost per request in CPU instructions: the one figure noise cannot move.

    python3 tests/bench/instructions.py [--scenario submit|status|both] [--redis]

On this shared machine req/s and even CPU time per request swing by up to 2x between runs
seconds apart, so a 10% guard cost cannot be read from them reliably. Instructions can: this
drives the standalone ASGI app in-process against the shared harness's fake queue upstream
(as `stage_times.py` does: 16 concurrent callers, no server socket on our side) under
valgrind's cachegrind, once for 160 requests and once for 960, and reports the difference
per request (start-up and warm-up cancel out), for guards off, guards on with memory limits
and (`--redis`) with Redis limits, with each one's ratio to guards off. Repeated runs agree
to within 0.1%. Kernel time (sockets) and cache misses are not in it: in the real server
the same instructions take longer, so read it as the guards' share of the Python work.
Needs `valgrind`. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import stage_times  # noqa: E402
from tests.fakes.redis_server import RedisServer  # noqa: E402

SHORT, LONG = 160, 960


def _child(name: str, scenario: str, count: int, redis_url: str) -> None:
    """Serve `count` requests of `scenario` (after a warm-up of 16), then exit."""
    import asyncio

    stage_times.CALLERS, stage_times.PER_ROUND = 16, 1
    settings = stage_times._settings(name, redis_url)
    try:
        import uvloop
        uvloop.run(stage_times._measure(settings, scenario, count // 16))
    except ImportError:
        asyncio.run(stage_times._measure(settings, scenario, count // 16))


def _instructions(name: str, scenario: str, count: int, redis_url: str) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--child", name, scenario, str(count), redis_url],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    ).stderr
    return cachegrind_total(out)


def cachegrind_total(stderr: str) -> int:
    """The instructions a cachegrind run counted, from its report on stderr."""
    found = re.search(r"I\s+refs:\s+([\d,]+)", stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


Row = tuple[str, str, float]  # configuration, scenario, instructions per request


def per_request(names: list[str], scenarios: list[str], count: Callable[[str, str, int], int],
                sizes: tuple[int, int] = (SHORT, LONG)) -> list[Row]:
    """`count(name, scenario, requests)` for both `sizes` of each, against the shared
    harness's fake queue upstream (started here, on CPU 1): the difference per request."""
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    upstream = subprocess.Popen([*pin, "bash", str(stage_times.BENCH / "upstream" / "start.sh")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    rows: list[Row] = []
    try:
        for scenario in scenarios:
            for name in names:
                short, long = (count(name, scenario, size) for size in sizes)
                rows.append((name, scenario, (long - short) / (sizes[1] - sizes[0])))
                print(f"{name:15}{scenario:10}{rows[-1][2]:12,.0f}", file=sys.stderr, flush=True)
    finally:
        upstream.terminate()
        subprocess.run(["pkill", "-f", "upstream-nginx"], check=False)
    return rows


def print_table(rows: list[Row]) -> None:
    """Each row with its ratio to guards-off in the same scenario."""
    print(f"\n{'TARGET':15}{'SCENARIO':10}{'INSTR/REQ':>12}{'vs off':>9}")
    for name, scenario, per in rows:
        base = next(p for n, s, p in rows if n == "guards-off" and s == scenario)
        print(f"{name:15}{scenario:10}{per:12,.0f}{per / base:8.2f}x")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["submit", "status", "both"], default="both")
    parser.add_argument("--redis", action="store_true", help="also guards with Redis limits")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 1
    scenarios = ["submit", "status"] if args.scenario == "both" else [args.scenario]
    names = ["guards-off", "guards-memory"] + (["guards-redis"] if args.redis else [])
    with RedisServer() if args.redis else stage_times._Nothing() as redis:
        url = redis.url if redis is not None else ""
        rows = per_request(names, scenarios,
                           lambda name, scenario, count: _instructions(name, scenario, count, url))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
