"""Cold start: from `flux-proxy serve` process start to the first proxied answer.

    python3 tests/bench/cold_start.py [--runs 5]

Also prints the CPU time the proxy process used until that answer (steadier than wall time on
a shared box) and the heaviest imports (`python -X importtime`). The package is byte-compiled
first, as `pip install` does: with PYTHONDONTWRITEBYTECODE set (common in containers) an
editable checkout would otherwise compile every module on every start. Not a test: it prints
figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = "https://queue.fal.run/fal-ai/flux/requests/abc/status"


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"status":"COMPLETED","logs":null}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def _first_answer(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/fal/proxy", headers={"x-fal-target-url": TARGET})
            if conn.getresponse().status == 200:
                return True
        time.sleep(0.002)
    return False


def _cpu_ms(pid: int) -> float:
    """utime + stime of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _import_profile() -> list[tuple[int, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import proxy.app"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
        if m and "." not in m.group(2):  # third-party and stdlib packages, not submodules
            rows.append((int(m.group(1)), m.group(2)))
    return sorted(rows, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    env = {**os.environ, "FAL_KEY": "bench-key",
           "FLUX_PROXY_UPSTREAM_QUEUE": f"http://127.0.0.1:{upstream.server_port}",
           # anonymous callers known by address; the polled id is fal's own (no ownership)
           "FLUX_PROXY__IDENTITY__RESOLVERS": '["address"]',
           "FLUX_PROXY__POLICY__OWNERSHIP": "false",}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "proxy")], check=True)
    times, cpu = [], []
    for i in range(args.runs):
        port = 18300 + i
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--port", str(port)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ok = _first_answer(port, t0 + 30)
            if ok:
                times.append((time.monotonic() - t0) * 1000)
                cpu.append(_cpu_ms(proc.pid))
        finally:
            proc.terminate()
            proc.wait(10)
    upstream.shutdown()
    print("\ncold start: process start -> first proxied answer (GET status through the proxy)")
    if times:
        print(f"  median {statistics.median(times):.0f} ms, min {min(times):.0f} ms, "
              f"max {max(times):.0f} ms over {len(times)} runs (target < 300 ms)")
        print(f"  CPU of the proxy process until then: median {statistics.median(cpu):.0f} ms "
              f"({min(cpu):.0f}-{max(cpu):.0f})")
    print("heaviest top-level imports of `import proxy.app` (cumulative, ms):")
    for micros, name in _import_profile()[:8]:
        print(f"  {micros / 1000:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
