"""CPU time per proxied request, guards off vs on: a cost figure that noise cannot move much.

    python3 tests/bench/cpu_per_request.py [--seconds 5] [--rounds 5] [--redis] [--redis-cpu 0]

On a shared machine req/s swings by +-20% between runs, but the CPU seconds a proxy process
burns per request it serves barely do. This starts the shared harness's fake queue upstream
(nginx on :18081, CPU 1) and every proxy configuration at once (each pinned to CPU 0, wrk on
CPU 1, 64 connections; redis-server on CPU 1 unless --redis-cpu says otherwise), measures
them in turn, round after round, and reports req/s and CPU microseconds per request
(user+system of the proxy process, from /proc) for the submit and status scenarios, with the
median of each round's ratio to guards-off. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT.parent / "shared" / "bench"
SECRET = "bench-signing-secret-0123456789"
LIMITS = """submit = "100000000/hour"
cost = "100000000/hour"
global_cost = "100000000/day"
polling = "100000000/hour"
concurrency = 100000000
strategy = "sliding-window"
"""
STATUS = ("https://queue.fal.run/fal-ai/flux/requests/"
          "2b5e4c1a-7d3f-4e8b-9a61-0c4f2d8e9b17/status")
SUBMIT = "https://queue.fal.run/fal-ai/flux/dev"
BODY = (BENCH / "wrk" / "bodies" / "submit.json")


def _config(resolvers: str, limits: str) -> str:
    return (f'[log]\naccess = false\n[identity]\nresolvers = {resolvers}\n'
            f'secrets = ["{SECRET}"]\n[policy]\nownership = false\n[limits]\n{limits}')


def _cpu_times(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _cpu_seconds(pid: int) -> float:
    return sum(_cpu_times(pid))


def _wrk(seconds: int, target: str, token: str, lua: Path | None, port: int
         ) -> tuple[float, int]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s",
           "-H", f"x-fal-target-url: {target}", "-H", f"authorization: Bearer {token}"]
    if lua is not None:
        cmd += ["-s", str(lua)]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/api/fal/proxy"], capture_output=True,
                         text=True, timeout=seconds + 30, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    return (float(rps.group(1)) if rps else 0.0), (int(count.group(1)) if count else 0)


def _wrk_missing() -> bool:
    if shutil.which("wrk"):
        return False
    print("wrk is missing: apt-get install wrk", file=sys.stderr)
    return True


def _measure(proc: subprocess.Popen[bytes], token: str, port: int, target: str,
             script: Path | None, seconds: int) -> tuple[float, float, float]:
    """One proxy under load for `seconds` (after a 1 s warm-up): its req/s, and its user and
    system CPU seconds per request served."""
    _wrk(1, target, token, script, port)
    user, system = _cpu_times(proc.pid)
    rps, served = _wrk(seconds, target, token, script, port)
    user_after, system_after = _cpu_times(proc.pid)
    served = max(served, 1)
    return rps, (user_after - user) / served, (system_after - system) / served


def _start_all(configs: dict[str, str], work: Path, first_port: int,
               procs: list[subprocess.Popen[bytes]]
               ) -> dict[str, tuple[subprocess.Popen[bytes], str, int]]:
    """A proxy per configuration, on consecutive ports, each added to `procs` (for `_stop`):
    by name, the process, its bearer token and its port."""
    running: dict[str, tuple[subprocess.Popen[bytes], str, int]] = {}
    for index, (name, text) in enumerate(configs.items()):
        proxy, token = _start(name, text, work, first_port + index)
        procs.append(proxy)
        running[name] = (proxy, token, first_port + index)
    return running


def _start(name: str, text: str, work: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    cfg = work / f"{name}.toml"
    cfg.write_text(text)
    token = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "token", "issue", "--user", "bench",
         "--config", str(cfg)], capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip()
    env = {**os.environ, "FAL_KEY": "bench-key",
           "FLUX_PROXY_UPSTREAM_QUEUE": "http://127.0.0.1:18081"}
    proxy = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "proxy.cli", "serve", "--port",
         str(port), "--config", str(cfg)], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proxy, token


def _services(work: Path, redis: bool, redis_cpu: str = "1"
              ) -> tuple[Path, dict[str, str], list[subprocess.Popen[bytes]]]:
    """wrk's submit script, the configurations (guards off, memory limits, Redis limits when
    asked) and the services they need, started: redis-server and the harness's fake
    upstream, both on CPU 1 (redis-server on `redis_cpu`). Stop them with `_stop`."""
    lua = work / "submit.lua"
    lua.write_text('wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\n'
                   f"wrk.body = [[{BODY.read_text().strip()}]]\n")
    configs = {"guards-off": _config('["address"]', "enabled = false\n"),
               "guards-memory": _config('["bearer"]', LIMITS)}
    procs: list[subprocess.Popen[bytes]] = []
    if redis:
        redis_port = 18399
        procs.append(subprocess.Popen(
            ["taskset", "-c", redis_cpu, "redis-server", "--port", str(redis_port),
             "--save", "", "--appendonly", "no", "--dir", str(work)],
            stdout=subprocess.DEVNULL))
        configs["guards-redis"] = _config(
            '["bearer"]', LIMITS + f'storage = "redis://127.0.0.1:{redis_port}/0"\n')
    procs.append(subprocess.Popen(
        ["taskset", "-c", "1", "bash", str(BENCH / "upstream" / "start.sh")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return lua, configs, procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    subprocess.run(["pkill", "-f", "upstream-nginx"], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every target this many times, interleaved")
    parser.add_argument("--redis", action="store_true", help="also guards with Redis limits")
    parser.add_argument("--redis-cpu", default="1",
                        help="the CPU redis-server runs on (0: the proxy's)")
    args = parser.parse_args()
    if _wrk_missing():
        return 1
    work = Path(tempfile.mkdtemp(prefix="flux-cpu-bench."))
    lua, configs, procs = _services(work, args.redis, args.redis_cpu)
    # every proxy runs at once (each idle while another is measured), so that rounds can
    # alternate between them: the machine's drift then moves all of them alike
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        running = _start_all(configs, work, 18150, procs)
        time.sleep(2.5)
        for _ in range(args.rounds):
            for scenario, target, script in (("submit", SUBMIT, lua), ("status", STATUS, None)):
                for name, started in running.items():
                    rps, user, system = _measure(*started, target, script, args.seconds)
                    figures.setdefault((name, scenario), []).append(
                        (rps, (user + system) * 1e6))
    finally:
        _stop(procs)
    print(f"\n{args.rounds} round(s) of {args.seconds} s, medians; ratios are the median of each "
          "round's ratio to guards-off")
    print(f"{'TARGET':15}{'SCENARIO':10}{'REQ/S':>8}{'CPU us/req':>12}"
          f"{'req/s vs off':>14}{'CPU vs off':>12}")
    for scenario in ("submit", "status"):
        base = figures[("guards-off", scenario)]
        for name in running:
            runs = figures[(name, scenario)]
            rps_ratio = statistics.median(r[0] / b[0] for r, b in zip(runs, base, strict=True))
            cpu_ratio = statistics.median(r[1] / b[1] for r, b in zip(runs, base, strict=True))
            print(f"{name:15}{scenario:10}{statistics.median(r[0] for r in runs):8.0f}"
                  f"{statistics.median(r[1] for r in runs):12.0f}{rps_ratio:13.2f}x"
                  f"{cpu_ratio:11.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
