"""Time to the first SSE event through flux-proxy, nginx and the upstream directly, precisely.

    python3 tests/bench/sse_first_event.py [--probes 30]

The shared harness's SSE check times one curl per target, from launch to the first `data:`
line: curl's own start-up is most of that figure and single probes swing by ±3 ms, more than
the 2 ms the target allows. Here the harness's SSE upstream (:18082), its fake queue upstream
(:18081, which hands `.../status/stream` on to :18082, as the harness's fal-style targets
see it), its nginx peer (:18091) and `flux-proxy serve` (:18100) run pinned to CPU 0 as in the
harness, and this process, on CPU 1, opens a raw socket per probe and times from connecting to
the first `data:` line: `fal.stream` (POST) and the status stream (GET), targets interleaved,
`--probes` of each. It prints the median and quartiles per target and method, and ours less
nginx's. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT.parent / "shared" / "bench"
REQUEST_ID = "2b5e4c1a-7d3f-4e8b-9a61-0c4f2d8e9b17"
EVENTS, DELAY = 3, 50  # the upstream's stream shape (only the first event is timed)
PATHS = {"POST": "/fal-ai/flux/dev/stream",
         "GET": f"/fal-ai/flux/requests/{REQUEST_ID}/status/stream"}
FAL_HOSTS = {"POST": "https://fal.run", "GET": "https://queue.fal.run"}
BODY = b'{"prompt":"a red fox"}'


def _request(target: str, method: str) -> tuple[int, bytes]:
    """The port to connect to and the bytes to send: as the harness's SSE check does."""
    path = PATHS[method]
    upstream = f"http://127.0.0.1:18082{path}?n={EVENTS}&delay={DELAY}"
    if target == "direct":
        port, line = 18082, f"{path}?n={EVENTS}&delay={DELAY}"
        extra = "authorization: Key bench-key\r\n"  # (what the proxies add)
    elif target == "nginx":
        port, line, extra = 18091, "/api/fal/proxy", f"x-fal-target-url: {upstream}\r\n"
    else:  # ours takes real fal URLs and maps them to the fakes (as --fal-target does)
        port, line = 18100, "/api/fal/proxy"
        extra = f"x-fal-target-url: {FAL_HOSTS[method]}{path}\r\n"
    head = (f"{method} {line} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n"
            f"{extra}")
    if method == "POST":
        head += f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n"
    return port, (head + "connection: close\r\n\r\n").encode() + (
        BODY if method == "POST" else b"")


def _probe(port: int, payload: bytes) -> float:
    """Milliseconds from connecting to the first `data:` line."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(payload)
        seen = b""
        while b"\ndata:" not in seen and not seen.startswith(b"data:"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"stream ended before an event: {seen[:200]!r}")
            seen += chunk
        return (time.perf_counter() - started) * 1000


def _wait(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on :{port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=30)
    args = parser.parse_args()
    env = {**os.environ, "SSE_EVENTS": str(EVENTS), "SSE_DELAY": str(DELAY),
           "FAL_KEY": "bench-key", "FLUX_PROXY_UPSTREAM_QUEUE": "http://127.0.0.1:18081",
           "FLUX_PROXY_UPSTREAM_RUN": "http://127.0.0.1:18082",
           "FLUX_PROXY__LIMITS__ENABLED": "false",
           "FLUX_PROXY__IDENTITY__RESOLVERS": '["address"]',
           "FLUX_PROXY__POLICY__OWNERSHIP": "false"}
    pin = ["taskset", "-c", "0"]
    commands = [
        [*pin, "bash", str(BENCH / "upstream" / "start-sse.sh")],
        [*pin, "bash", str(BENCH / "upstream" / "start.sh")],
        [*pin, "bash", str(BENCH / "peers" / "nginx-proxy" / "start.sh")],
        [*pin, sys.executable, "-m", "proxy.cli", "serve", "--port", "18100"],
    ]
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for cmd in commands]
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for port in (18082, 18081, 18091, 18100):
            _wait(port)
        os.sched_setaffinity(0, {1})
        requests = {(target, method): _request(target, method)
                    for target in ("direct", "nginx", "ours") for method in ("POST", "GET")}
        for port, payload in requests.values():  # warm every path once
            _probe(port, payload)
        for _ in range(args.probes):
            for key, (port, payload) in requests.items():
                times.setdefault(key, []).append(_probe(port, payload))
                time.sleep(0.02)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        subprocess.run(["pkill", "-f", "upstream-nginx|nginx-proxy"], check=False)
    print(f"first SSE event, {args.probes} raw-socket probes per target and method "
          "(ms: median, quartiles)")
    for (target, method), values in times.items():
        q1, median, q3 = statistics.quantiles(values, n=4)
        print(f"{target:8}{method:6}{median:7.2f}  ({q1:.2f}-{q3:.2f})")
    for method in ("POST", "GET"):
        ours = statistics.median(times[("ours", method)])
        nginx = statistics.median(times[("nginx", method)])
        print(f"ours - nginx, {method}: {ours - nginx:+.2f} ms (target: within 2 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
