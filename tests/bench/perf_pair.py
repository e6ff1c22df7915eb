"""Where the guards' time goes, sampled: guards off and on loaded at once, profiled with `perf`.

    python3 tests/bench/perf_pair.py [--scenario submit|status] [--seconds 10] [--top 30]
        [--config guards-memory|guards-redis]

`paired_cpu.py` says how much CPU the guards cost per request; `server_instructions.py` says
which C functions execute their instructions. Neither says where the *time* goes, and on this
box time and instructions can part (cache misses, the kernel). This starts guards off and one
guarded configuration as `paired_cpu.py` does (both pinned to CPU 0, each loaded by its own
wrk on CPU 1, the harness's fake upstream), records both processes with `perf record -e
cpu-clock` for the same seconds, and prints samples per 1,000 requests for each, by shared
object and by symbol, sorted by what the guards add. Python functions are not named (they all
run in the eval loop); `opcodes.py` counts those. Needs `perf` and `wrk`. Not a test: it
prints figures.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.cpu_per_request import (  # noqa: E402
    STATUS,
    SUBMIT,
    _services,
    _start_all,
    _stop,
    _wrk,
    _wrk_missing,
)

Samples = collections.Counter[tuple[str, str]]  # (shared object, symbol) -> samples
_LINE = re.compile(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)")


def _samples(data: Path) -> Samples:
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym",
         "-F", "overhead,sample,dso,sym"], capture_output=True, text=True, check=True).stdout
    found: Samples = collections.Counter()
    for line in report.splitlines():
        match = _LINE.match(line)
        if match:
            found[(match.group(2).rsplit("/", 1)[-1], match.group(3).strip())] += int(
                match.group(1))
    return found


def _record(running: dict[str, tuple[subprocess.Popen[bytes], str, int]], target: str,
            script: Path | None, seconds: int, work: Path) -> dict[str, tuple[Samples, int]]:
    """Load every process at once for `seconds` while perf samples each: per name, its
    samples and the requests it served."""
    for _, token, port in running.values():
        _wrk(2, target, token, script, port)  # warm-up
    perfs = [subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-p", str(proc.pid),
         "-o", str(work / f"{name}.data"), "--", "sleep", str(seconds + 2)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, (proc, _, _) in running.items()]
    time.sleep(0.5)
    served: dict[str, int] = {}

    def load(name: str, token: str, port: int) -> None:
        served[name] = _wrk(seconds, target, token, script, port)[1]

    threads = [threading.Thread(target=load, args=(name, token, port))
               for name, (_, token, port) in running.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for perf in perfs:
        perf.wait()
    return {name: (_samples(work / f"{name}.data"), max(served[name], 1)) for name in running}


def _print(off: tuple[Samples, int], on: tuple[Samples, int], name: str, top: int) -> None:
    (base, base_requests), (guarded, requests) = off, on

    def per_k(counts: Samples, key: tuple[str, str], count: int) -> float:
        return counts.get(key, 0) * 1000 / count

    total_off = sum(base.values()) * 1000 / base_requests
    total_on = sum(guarded.values()) * 1000 / requests
    print(f"samples per 1,000 requests: guards off {total_off:.0f}, {name} {total_on:.0f} "
          f"({total_on / total_off:.3f}x); served {base_requests} and {requests}")
    by_object: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for key, value in base.items():
        by_object[key[0]][0] += value * 1000 / base_requests
    for key, value in guarded.items():
        by_object[key[0]][1] += value * 1000 / requests
    added = (total_on - total_off) or 1.0  # (the shares' denominator)
    print(f"\n{'+/-':>8}{'on':>9}{'off':>9}  {'share of +':>10}  shared object")
    for obj, (a, b) in sorted(by_object.items(), key=lambda kv: kv[1][0] - kv[1][1])[:12]:
        print(f"{b - a:8.1f}{b:9.1f}{a:9.1f}  {(b - a) / added:10.1%}  {obj}")
    keys = set(base) | set(guarded)
    print(f"\n{'+/-':>8}{'on':>9}{'off':>9}  {'share of +':>10}  symbol")
    ranked = sorted(keys, key=lambda k: per_k(base, k, base_requests) - per_k(guarded, k, requests))
    for key in ranked[:top]:
        a, b = per_k(base, key, base_requests), per_k(guarded, key, requests)
        print(f"{b - a:8.1f}{b:9.1f}{a:9.1f}  {(b - a) / added:10.1%}  {key[1]} ({key[0]})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["submit", "status"], default="submit")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--config", choices=["guards-memory", "guards-redis"],
                        default="guards-memory")
    args = parser.parse_args()
    if _wrk_missing():
        return 1
    if not shutil.which("perf"):
        print("perf is missing: apt-get install linux-perf", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="flux-perf-pair."))
    lua, configs, procs = _services(work, args.config == "guards-redis")
    configs = {"guards-off": configs["guards-off"], args.config: configs[args.config]}
    target, script = (SUBMIT, lua) if args.scenario == "submit" else (STATUS, None)
    try:
        running = _start_all(configs, work, 18250, procs)
        time.sleep(2.5)
        figures = _record(running, target, script, args.seconds, work)
    finally:
        _stop(procs)
    _print(figures["guards-off"], figures[args.config], args.config, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
