"""What the limits scripts cost redis-server, in CPU per proxied request.

    python3 tests/bench/redis_cpu.py [--scenario submit|status|both] [--reps 8]

With Redis limits every request waits for its admission script, so redis-server's time per
request is latency the proxy cannot hide: under load the proxy sat at 75-80% CPU while
redis-server, sharing a core with wrk, ran the scripts. This drives the standalone ASGI app
in-process with guards-redis (`stage_times.py`'s configuration: every limit on, 64
concurrent callers, the shared harness's fake queue upstream) and records each script call
the engine sends (admissions and settlements, as batched); then it replays those exact
calls, one after the other, against an idle redis-server of its own and reports that
server's CPU time (user + system, from /proc) per request, best of `--reps` replays, split
by script. Replays hit the same keys again, as a busy caller does; each figure is ~0.5 s of
redis-server CPU (its clock ticks at 10 ms). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxy.limits import redis_engine, resp  # noqa: E402
from tests.bench import stage_times  # noqa: E402
from tests.bench.cpu_per_request import _cpu_seconds  # noqa: E402
from tests.fakes.redis_server import RedisServer  # noqa: E402

CALLERS, PER_ROUND, ROUNDS = 64, 20, 2


def _record(scenario: str, redis_url: str) -> list[bytes]:
    """The script calls (packed EVALSHA commands) of a drive of `scenario`."""
    recorded: list[bytes] = []
    send = resp.RedisLink.send

    def recording(self: resp.RedisLink, command: bytes, callback: Any) -> None:
        if b"EVALSHA" in command[:40]:
            recorded.append(command)
        send(self, command, callback)

    resp.RedisLink.send = recording  # type: ignore[method-assign]
    stage_times.CALLERS, stage_times.PER_ROUND = CALLERS, PER_ROUND
    try:
        import uvloop
        uvloop.run(stage_times._measure(stage_times._settings("guards-redis", redis_url),
                                        scenario, ROUNDS))
    finally:
        resp.RedisLink.send = send  # type: ignore[method-assign]
    return recorded


def _replay(redis: RedisServer, commands: list[bytes], reps: int) -> float:
    """Best CPU seconds of redis-server over `reps` replays of `commands`."""
    host, port = redis.url.split("//")[1].split("/")[0].split(":")
    info = subprocess.check_output(["redis-cli", "-u", redis.url, "info", "server"]).decode()
    pid = int(info.split("process_id:")[1].split()[0])
    with socket.create_connection((host, int(port))) as sock:
        def ask(command: bytes) -> None:
            sock.sendall(command)
            reply = sock.recv(1 << 20)
            while not reply.endswith(b"\r\n") or (reply[:1] == b"$"
                                                  and reply.count(b"\r\n") < 2):
                reply += sock.recv(1 << 20)
            if reply[:1] == b"-":
                raise SystemExit(f"redis refused a replayed call: {reply[:200]!r}")

        for source in (redis_engine._ADMIT, redis_engine._SETTLE):
            ask(resp.pack("SCRIPT", "LOAD", source))  # (the recording server had them)
        start = _cpu_seconds(pid)
        for command in commands:
            ask(command)
        # each measurement runs the calls `times` times: ~0.5 s of CPU against 10 ms ticks
        times = max(1, round(0.5 / max(_cpu_seconds(pid) - start, 0.01)))
        best = float("inf")
        for _ in range(reps):
            start = _cpu_seconds(pid)
            for _ in range(times):
                for command in commands:
                    ask(command)
            best = min(best, (_cpu_seconds(pid) - start) / times)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["submit", "status", "both"], default="both")
    parser.add_argument("--reps", type=int, default=8)
    args = parser.parse_args()
    scenarios = ["submit", "status"] if args.scenario == "both" else [args.scenario]
    pin = ["taskset", "-c", "1"]
    upstream = subprocess.Popen([*pin, "bash", str(stage_times.BENCH / "upstream" / "start.sh")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    admit_sha = hashlib.sha1(redis_engine._ADMIT.encode()).hexdigest().encode()
    requests = CALLERS * PER_ROUND * (ROUNDS + 1)  # stage_times warms up with one round
    print(f"\n{'SCENARIO':10}{'SCRIPT':12}{'CALLS':>7}{'REQ/CALL':>10}{'CPU µs/REQ':>12}")
    try:
        for scenario in scenarios:
            with RedisServer() as recording:
                commands = _record(scenario, recording.url)
            with RedisServer() as redis:
                _replay(redis, commands, 1)  # loads the scripts, creates the keys
                for name, chosen in (
                        ("admission", [c for c in commands if admit_sha in c[:80]]),
                        ("settlement", [c for c in commands if admit_sha not in c[:80]]),
                        ("both", commands)):
                    if not chosen:
                        continue
                    cpu = _replay(redis, chosen, args.reps)
                    per_call = f"{requests / len(chosen):.1f}" if name != "both" else "-"
                    print(f"{scenario:10}{name:12}{len(chosen):7}{per_call:>10}"
                          f"{cpu / requests * 1e6:12.1f}")
    finally:
        upstream.terminate()
        subprocess.run(["pkill", "-f", "upstream-nginx"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
