"""What the guards cost the whole server, in CPU instructions per request: uvicorn included.

    python3 tests/bench/server_instructions.py [--scenario submit|status|both] [--no-redis]

`instructions.py` counts the ASGI app's work in-process; the server around it (uvicorn's
HTTP parsing and response writing, the event loop) is left out there, and so is what the
guards cost it (uvicorn checks each response header byte by byte: the RateLimit headers
alone are ~18k instructions a submit). This runs `flux-proxy serve` itself under valgrind's
cachegrind, as users start it (the CLI, its GC tuning, uvloop + httptools), for each of the
three configurations of `guards_bench.sh` (guards off, memory limits, Redis limits; the
Redis one with a `redis-server` of its own), against the shared harness's fake queue
upstream, and sends it exactly N requests over 16 keep-alive connections (a small client
here: wrk counts by time, not requests). Twice, for N = 400 and 1,600, after the same
warm-up: the difference over 1,200 requests is the instructions per request, start-up and
shutdown cancelled out. Kernel time (sockets) is not in it; everything the proxy process
runs in user space is. Needs `valgrind`. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(ROOT))

from tests.bench import instructions  # noqa: E402
from tests.bench.cpu_per_request import LIMITS, SECRET, STATUS, SUBMIT  # noqa: E402
from tests.fakes.redis_server import RedisServer, _free_port  # noqa: E402

CONNECTIONS = 16
WARM_UP = 160
SIZES = (400, 1600)  # requests per run: the difference is over 1,200
BODY = (BENCH / "wrk" / "bodies" / "submit.json").read_bytes().strip()


def _config(name: str, redis_url: str) -> str:
    resolvers, limits = '["bearer"]', LIMITS
    if name == "guards-off":
        resolvers, limits = '["address"]', "enabled = false\n"
    elif name == "guards-redis":
        limits += f'storage = "{redis_url}"\n'
    return (f'[log]\naccess = false\n[identity]\nresolvers = {resolvers}\n'
            f'secrets = ["{SECRET}"]\n[policy]\nownership = false\n[limits]\n{limits}')


def _request(scenario: str, token: str) -> bytes:
    head = [f"x-fal-target-url: {SUBMIT if scenario == 'submit' else STATUS}",
            f"authorization: Bearer {token}", "host: 127.0.0.1"]
    if scenario == "submit":
        head += ["content-type: application/json", f"content-length: {len(BODY)}"]
        return ("POST /api/fal/proxy HTTP/1.1\r\n" + "\r\n".join(head) + "\r\n\r\n").encode() + BODY
    return ("GET /api/fal/proxy HTTP/1.1\r\n" + "\r\n".join(head) + "\r\n\r\n").encode()


async def _drive(port: int, request: bytes, count: int) -> None:
    """Send `count` requests in all over CONNECTIONS keep-alive connections; each must be 200."""
    left = [count]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"the proxy answered {head[:200]!r}")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if length is None:
                    raise SystemExit(f"no content-length: {head[:300]!r}")
                await reader.readexactly(int(length.group(1)))
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the proxy exited: {proc.stderr.read().decode()[-2000:]}"
                             if proc.stderr else "the proxy exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the proxy did not start under valgrind")


def _instructions(name: str, scenario: str, count: int, work: Path, redis_url: str) -> int:
    cfg = work / f"{name}.toml"
    cfg.write_text(_config(name, redis_url))
    token = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "token", "issue", "--user", "bench",
         "--config", str(cfg)], capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip()
    port = _free_port()
    env = {**os.environ, "FAL_KEY": "bench-key", "PYTHONHASHSEED": "0",
           "FLUX_PROXY_UPSTREAM_QUEUE": "http://127.0.0.1:18081"}
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    proc = subprocess.Popen(
        [*pin, "valgrind", "--tool=cachegrind", "--cache-sim=no",
         "--cachegrind-out-file=/dev/null", sys.executable, "-m", "proxy.cli", "serve",
         "--port", str(port), "--config", str(cfg)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, proc)
        request = _request(scenario, token)
        asyncio.run(_drive(port, request, WARM_UP))
        asyncio.run(_drive(port, request, count))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return instructions.cachegrind_total(err.decode(errors="replace"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["submit", "status", "both"], default="both")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 1
    scenarios = ["submit", "status"] if args.scenario == "both" else [args.scenario]
    names = ["guards-off", "guards-memory"] + ([] if args.no_redis else ["guards-redis"])
    work = Path(tempfile.mkdtemp(prefix="flux-server-instr."))
    redis = None if args.no_redis else RedisServer().start()
    url = redis.url if redis is not None else ""
    try:
        rows = instructions.per_request(
            names, scenarios,
            lambda name, scenario, count: _instructions(name, scenario, count, work, url), SIZES)
    finally:
        if redis is not None:
            redis.stop()
    instructions.print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
