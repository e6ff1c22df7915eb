"""Guards on against guards off, both loaded at once on the same core: the paired measure.

    python3 tests/bench/paired_cpu.py [--redis] [--pieces] [--only NAMES] [--rounds 5]
                                        [--seconds 5]

This box's speed swings by up to 2x within minutes, so two figures taken one after the
other (what the shared harness and `cpu_per_request.py` do) differ by ±20% for the same code.
Here guards off and one guarded configuration run side by side, both pinned to CPU 0, each
loaded by its own wrk (64 connections, CPU 1) for the same seconds: the scheduler splits the
core between them, and a swing of the machine's speed hits both at the same instant. Their
req/s ratio is then what the guards cost in throughput, and each one's CPU time over its
requests (user + system, from /proc, also shown apart) what they cost per request: user time
is the proxy's own code, system time its socket calls (the kernel's loopback work, waking
the peer it writes to included). A run's pairs agree within
~3% (its median moves by up to ~0.04 between runs; single sequential rounds by ±20%). One
pair per guarded configuration and scenario per round; medians of the per-round ratios,
with their range. The configurations are `guards_bench.sh`'s (and `cpu_per_request.py`'s).
`--pieces` adds guards-memory with one piece off at a time (the concurrency cap, the global
cap, usage accounting; and bearer identity with no limits), to see what each costs, and two
rows that are not guards: guards off with the access log on (`access-log`), which every other
configuration leaves off, and guards off with uvicorn's own two writes per response
(`two-writes`: `server.coalesce_writes` off). `--only` keeps just the named configurations.
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.cpu_per_request import (  # noqa: E402
    LIMITS,
    STATUS,
    SUBMIT,
    _config,
    _measure,
    _services,
    _start_all,
    _stop,
    _wrk_missing,
)


def _load(proc: subprocess.Popen[bytes], token: str, port: int, target: str,
          script: Path | None, seconds: int, out: dict[str, tuple[float, float, float]],
          name: str) -> None:
    """`_measure` in a thread: its figures go into `out[name]`."""
    out[name] = _measure(proc, token, port, target, script, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--redis", action="store_true", help="also guards with Redis limits")
    parser.add_argument("--pieces", action="store_true",
                        help="also guards-memory with one piece off at a time")
    parser.add_argument("--only", default="",
                        help="comma-separated configurations to pair with guards off (e.g. "
                             "--pieces --only two-writes): more rounds of one pair in the time")
    args = parser.parse_args()
    if _wrk_missing():
        return 1
    work = Path(tempfile.mkdtemp(prefix="flux-paired-bench."))
    lua, configs, procs = _services(work, args.redis)
    redis_config = configs.pop("guards-redis", None)  # (listed after the pieces)
    if args.pieces:
        configs.update({
            "no-concurrency": _config('["bearer"]', LIMITS.replace(
                "concurrency = 100000000", "concurrency = 0")),
            "no-global-cap": _config('["bearer"]', LIMITS.replace(
                'global_cost = "100000000/day"', 'global_cost = ""')),
            "no-usage": _config('["bearer"]', LIMITS + "usage = false\n"),
            "bearer-only": _config('["bearer"]', "enabled = false\n"),
            # not a guard: guards off with the access log on, as `flux-proxy serve` runs
            # by default (every other configuration here has it off)
            "access-log": configs["guards-off"].replace("access = false", "access = true"),
            # not a guard either: guards off with uvicorn's own two writes per response
            "two-writes": configs["guards-off"] + "[server]\ncoalesce_writes = false\n",
        })
    if redis_config is not None:
        configs["guards-redis"] = redis_config
    if args.only:
        keep = {"guards-off", *args.only.split(",")}
        configs = {name: text for name, text in configs.items() if name in keep}
    # per round: req/s, CPU, user CPU and system CPU per request, each against guards off
    ratios: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    try:
        running = _start_all(configs, work, 18160, procs)
        time.sleep(3)
        for round_number in range(1, args.rounds + 1):
            for scenario, target, script in (("submit", SUBMIT, lua), ("status", STATUS, None)):
                for name in list(running)[1:]:
                    out: dict[str, tuple[float, float, float]] = {}
                    loads = [threading.Thread(target=_load, args=(
                        *running[who], target, script, args.seconds, out, who))
                        for who in ("guards-off", name)]
                    for load in loads:
                        load.start()
                    for load in loads:
                        load.join()
                    (rps, user, system), (off_rps, off_user, off_system) = (
                        out[name], out["guards-off"])
                    cpu = (user + system) / (off_user + off_system)
                    ratios.setdefault((name, scenario), []).append(
                        (rps / off_rps, cpu, user / (off_user or 1e-9),
                         system / (off_system or 1e-9)))  # (CPU is counted in ticks)
                    print(f"round {round_number} {scenario} {name}: {rps:.0f} req/s against "
                          f"{off_rps:.0f} ({rps / off_rps:.3f}), CPU per request {cpu:.3f}x "
                          f"(user {user * 1e6:.0f} µs against {off_user * 1e6:.0f}, system "
                          f"{system * 1e6:.0f} against {off_system * 1e6:.0f})", flush=True)
    finally:
        _stop(procs)
    print(f"\n{args.rounds} paired round(s) of {args.seconds} s; medians of per-round ratios "
          "to guards off (range)")
    print(f"{'TARGET':15}{'SCENARIO':10}{'req/s vs off':>22}{'CPU/request vs off':>24}"
          f"{'user':>8}{'system':>8}")
    for (name, scenario), rows in ratios.items():
        speeds = [row[0] for row in rows]
        costs = [row[1] for row in rows]
        print(f"{name:15}{scenario:10}{statistics.median(speeds):8.3f} "
              f"({min(speeds):.2f}-{max(speeds):.2f}){statistics.median(costs):11.3f} "
              f"({min(costs):.2f}-{max(costs):.2f})"
              f"{statistics.median(row[2] for row in rows):8.3f}"
              f"{statistics.median(row[3] for row in rows):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
