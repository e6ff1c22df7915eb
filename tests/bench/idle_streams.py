"""Many idle SSE status streams held by one proxy process: memory per stream, polls meanwhile.

    python3 tests/bench/idle_streams.py [--backend hosted|local] [--streams N] [--polls 300]

hosted (default 9,900 streams): a raw asyncio upstream answers `.../status/stream` with one
event and then stays silent (a queued job), and `.../status` with COMPLETED JSON; `flux-proxy
serve` is pointed at it. Each proxied stream costs the proxy two sockets (client side and
upstream side): with a hard open-files limit of 20,000 one process tops out just under 10,000.

local (default 10,000 streams): `flux-proxy serve` runs fal's queue itself (SQLite store, one
demo worker so slow that the jobs stay queued); the bench submits one job per stream through
the proxy, then watches each job's status stream: one socket per stream.

Both then open the streams in batches from several loopback source addresses, measure the
proxy's RSS and CPU while the streams idle, answer polls meanwhile, and close everything (all
on loopback). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STREAM_TARGET = "https://queue.fal.run/fal-ai/flux/requests/{rid}/status/stream"
POLL_TARGET = "https://queue.fal.run/fal-ai/flux/requests/{rid}/status"
SUBMIT_TARGET = "https://queue.fal.run/fal-ai/flux/dev"
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


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _submit_jobs(port: int, n: int, connections: int = 16) -> list[str]:
    """Local backend: queue `n` jobs through the proxy (keep-alive connections); their ids."""
    body = b'{"prompt":"an idle stream","num_inference_steps":1}'
    request = (f"POST /api/fal/proxy HTTP/1.1\r\nhost: x\r\nx-fal-target-url: {SUBMIT_TARGET}"
               f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
               ).encode() + body
    ids: list[str] = []

    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answer = json.loads(await reader.readexactly(length))
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"submit refused: {head[:40]!r} {answer}")
            ids.append(answer["request_id"])
        writer.close()

    share, extra = divmod(n, connections)
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(connections)))
    return ids


async def _open_stream(port: int, source: str, rid: str
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    target = STREAM_TARGET.format(rid=rid)
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


async def _poll(port: int, n: int, rid: str) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    request = (f"GET /api/fal/proxy HTTP/1.1\r\nhost: x\r\nx-fal-target-url: "
               f"{POLL_TARGET.format(rid=rid)}\r\n\r\n").encode()
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        times.append((time.perf_counter() - t0) * 1000)
    writer.close()
    return times


async def _client(port: int, pid: int, streams: int, polls: int, batch: int,
                  backend: str) -> None:
    sources = [f"127.0.0.{i}" for i in range(2, 10)]
    await asyncio.sleep(0)
    if backend == "local":
        t_submit = time.perf_counter()
        rids = await _submit_jobs(port, streams + 1)
        print(f"  queued {len(rids)} jobs in {time.perf_counter() - t_submit:.1f} s",
              file=sys.stderr)
        poll_rid, rids = rids[-1], rids[:-1]
    else:
        poll_rid, rids = "p", [f"r{i}" for i in range(streams)]
    rss_before = _rss_kib(pid)
    idle_poll = await _poll(port, polls, poll_rid)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = 0
    t0 = time.perf_counter()
    for start in range(0, streams, batch):
        results = await asyncio.gather(
            *(_open_stream(port, sources[i % len(sources)], rids[i])
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
    cpu0, t_idle = _cpu_s(pid), time.perf_counter()
    await asyncio.sleep(5.0)  # the streams idle: what does holding them cost?
    idle_cpu = (_cpu_s(pid) - cpu0) / (time.perf_counter() - t_idle)
    busy_poll = await _poll(port, polls, poll_rid)
    for _, writer in opened:
        writer.close()
    await asyncio.sleep(1.0)
    rss_closed = _rss_kib(pid)

    def q(values: list[float], p: float) -> float:
        return statistics.quantiles(values, n=100)[int(p) - 1]

    per_stream = (rss_after - rss_before) / max(len(opened), 1)
    print(f"\nidle SSE status streams held by one flux-proxy process, {backend} backend "
          f"({os.cpu_count()} CPUs)")
    print(f"{'streams open':28}{len(opened)} of {streams} asked, {errors} errors, "
          f"opened in {open_s:.1f} s")
    print(f"{'proxy RSS before':28}{rss_before / 1024:.1f} MiB")
    print(f"{'proxy RSS with streams':28}{rss_after / 1024:.1f} MiB "
          f"(target < 1024 MiB)")
    print(f"{'memory per stream':28}{per_stream:.1f} KiB")
    print(f"{'proxy CPU while idle':28}{idle_cpu * 100:.0f}% of a core (5 s window)")
    print(f"{'proxy RSS after close':28}{rss_closed / 1024:.1f} MiB")
    print(f"{'poll p50/p99, no streams':28}{q(idle_poll, 50):.2f} / {q(idle_poll, 99):.2f} ms")
    print(f"{'poll p50/p99, streams open':28}{q(busy_poll, 50):.2f} / {q(busy_poll, 99):.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["hosted", "local"], default="hosted")
    parser.add_argument("--streams", type=int, default=0,
                        help="default: 9,900 hosted (2 sockets each), 10,000 local")
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--role", choices=["bench", "upstream"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    _raise_nofile()
    if args.role == "upstream":
        asyncio.run(_upstream(args.port))
        return 0
    streams = args.streams or (10_000 if args.backend == "local" else 9_900)
    up_port, px_port = _free_port(), _free_port()
    env = {**os.environ, "FLUX_PROXY__LOG__ACCESS": "false",
           "FLUX_PROXY__LIMITS__ENABLED": "false",  # thousands of streams from one address
           # anonymous callers known by address; the ids below are fal's own (no ownership)
           "FLUX_PROXY__IDENTITY__RESOLVERS": '["address"]',
           "FLUX_PROXY__POLICY__OWNERSHIP": "false"}
    data_dir = tempfile.TemporaryDirectory(prefix="flux-idle-")
    upstream = None
    if args.backend == "local":
        env.pop("FAL_KEY", None)
        env.update({"FLUX_PROXY__LOCAL__MODE": "local",
                    "FLUX_PROXY__LOCAL__DATA_DIR": data_dir.name,
                    "FLUX_PROXY__LOCAL__MAX_QUEUE": str(streams + 10),
                    # one job "runs" for an hour; all the others wait in the queue
                    "FLUX_PROXY__LOCAL__WORKERS": '[{kind = "demo", step_seconds = 3600}]'})
    else:
        env.update({"FAL_KEY": "bench-key", "FLUX_PROXY__UPSTREAM__POOL_SIZE": "20000",
                    "FLUX_PROXY_UPSTREAM_QUEUE": f"http://127.0.0.1:{up_port}"})
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
            _client(px_port, proxy.pid, streams, args.polls, args.batch, args.backend),
            timeout=600))
    finally:
        for proc in (proxy, upstream):
            if proc is None:
                continue
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
        data_dir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
