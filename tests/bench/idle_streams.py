"""Many idle SSE status streams held by one proxy process: memory per stream, polls meanwhile.

    python3 tests/bench/idle_streams.py [--streams 9500] [--polls 300]

Starts (all on loopback, all stopped at the end): a raw asyncio upstream that answers
`.../status/stream` with one event and then stays silent (a queued job), and `.../status` with
COMPLETED JSON; `flux-proxy serve` pointed at it; then opens the streams in batches from
several loopback source addresses, measures the proxy's RSS, answers polls while the streams
are open, and closes everything. Not a test: it prints figures.

Each proxied stream costs the proxy two sockets (client side and upstream side); on a machine
whose hard open-files limit is 20,000 that caps one process just under 10,000 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STREAM_TARGET = "https://queue.fal.run/fal-ai/flux/requests/{rid}/status/stream"
POLL_TARGET = "https://queue.fal.run/fal-ai/flux/requests/{rid}/status"
EVENT = b'data: {"status":"IN_QUEUE","queue_position":3}\n\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- upstream ------------------------------------------------------------------------------


async def _upstream(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.endswith(b"/status/stream"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"x-fal-request-id: r\r\ntransfer-encoding: chunked\r\n\r\n"
                                 + f"{len(EVENT):x}\r\n".encode() + EVENT + b"\r\n")
                    await writer.drain()
                    while True:  # a keepalive comment every 15 s, like fal
                        await asyncio.sleep(15)
                        writer.write(b"8\r\n: ping\n\n\r\n")
                        await writer.drain()
                body = b'{"status":"COMPLETED","logs":null,"metrics":{}}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# --- client --------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _open_stream(port: int, source: str, i: int
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    target = STREAM_TARGET.format(rid=f"r{i}")
    writer.write(f"GET /api/fal/proxy HTTP/1.1\r\nhost: x\r\nx-fal-target-url: {target}\r\n"
                 "accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:80].decode(errors="replace"))
    data = b""
    while b"data:" not in data:
        chunk = await reader.read(4096)
        if not chunk:
            raise RuntimeError("stream closed before the first event")
        data += chunk
    return reader, writer


async def _poll(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    request = (f"GET /api/fal/proxy HTTP/1.1\r\nhost: x\r\nx-fal-target-url: "
               f"{POLL_TARGET.format(rid='p')}\r\n\r\n").encode()
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        times.append((time.perf_counter() - t0) * 1000)
    writer.close()
    return times


async def _client(port: int, pid: int, streams: int, polls: int, batch: int) -> None:
    sources = [f"127.0.0.{i}" for i in range(2, 10)]
    await asyncio.sleep(0)
    rss_before = _rss_kib(pid)
    idle_poll = await _poll(port, polls)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = 0
    t0 = time.perf_counter()
    for start in range(0, streams, batch):
        results = await asyncio.gather(
            *(_open_stream(port, sources[i % len(sources)], i)
              for i in range(start, min(start + batch, streams))),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                errors += 1
                if errors <= 3:
                    print(f"  stream error: {r!r}", file=sys.stderr)
            else:
                opened.append(r)
    open_s = time.perf_counter() - t0
    await asyncio.sleep(1.0)
    rss_after = _rss_kib(pid)
    busy_poll = await _poll(port, polls)
    for _, writer in opened:
        writer.close()
    await asyncio.sleep(1.0)
    rss_closed = _rss_kib(pid)

    def q(values: list[float], p: float) -> float:
        return statistics.quantiles(values, n=100)[int(p) - 1]

    per_stream = (rss_after - rss_before) / max(len(opened), 1)
    print(f"\nidle SSE streams through one flux-proxy process ({os.cpu_count()} CPUs)")
    print(f"{'streams open':28}{len(opened)} of {streams} asked, {errors} errors, "
          f"opened in {open_s:.1f} s")
    print(f"{'proxy RSS before':28}{rss_before / 1024:.1f} MiB")
    print(f"{'proxy RSS with streams':28}{rss_after / 1024:.1f} MiB "
          f"(target < 1024 MiB)")
    print(f"{'memory per stream':28}{per_stream:.1f} KiB")
    print(f"{'proxy RSS after close':28}{rss_closed / 1024:.1f} MiB")
    print(f"{'poll p50/p99, no streams':28}{q(idle_poll, 50):.2f} / {q(idle_poll, 99):.2f} ms")
    print(f"{'poll p50/p99, streams open':28}{q(busy_poll, 50):.2f} / {q(busy_poll, 99):.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=9500)
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--role", choices=["bench", "upstream"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    _raise_nofile()
    if args.role == "upstream":
        asyncio.run(_upstream(args.port))
        return 0
    up_port, px_port = _free_port(), _free_port()
    env = {**os.environ, "FAL_KEY": "bench-key",
           "FLUX_PROXY_UPSTREAM_QUEUE": f"http://127.0.0.1:{up_port}",
           "FLUX_PROXY__LOG__ACCESS": "false", "FLUX_PROXY__UPSTREAM__POOL_SIZE": "20000",
           "FLUX_PROXY__LIMITS__ENABLED": "false",
           # anonymous callers known by address; the ids below are fal's own (no ownership)
           "FLUX_PROXY__IDENTITY__RESOLVERS": '["address"]',
           "FLUX_PROXY__POLICY__OWNERSHIP": "false",}  # thousands of streams from one address
    upstream = subprocess.Popen([sys.executable, __file__, "--role", "upstream",
                                 "--port", str(up_port)])
    proxy = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--port", str(px_port)],
                             env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", px_port)):
                break
            time.sleep(0.1)
        asyncio.run(asyncio.wait_for(
            _client(px_port, proxy.pid, args.streams, args.polls, args.batch), timeout=300))
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
