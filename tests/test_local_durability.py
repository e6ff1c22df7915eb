"""The proxy as a real process: SIGKILL with jobs queued and running, restart, all complete
exactly once; and the embedded default (no key, no config) serving the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.fakes.fal_worker import FakeWorker
from tests.js_client import run_flow
from tests.local_support import Queue, wait_until
from tests.support import TEST_SECRET, fal_id

ROOT = Path(__file__).resolve().parent.parent
INPUT = {"prompt": "a quiet harbour", "seed": 3, "image_size": "square", "num_inference_steps": 10}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(cwd: Path, port: int, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m proxy.cli serve` in `cwd`, with no fal key in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "FLUX_PROXY"))}
    env["PYTHONPATH"] = str(ROOT)
    log = (cwd / "proxy.log").open("a")  # a file, not a pipe: a full pipe would block it
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--port", str(port), *args],
        cwd=cwd, env=env, stderr=log, text=True)
    try:
        def up() -> bool:
            assert proc.poll() is None, (cwd / "proxy.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=20)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_jobs_survive_sigkill_and_run_exactly_once(tmp_path: Path) -> None:
    with FakeWorker(step_seconds=0.05) as worker:
        config = tmp_path / "flux-proxy.toml"
        config.write_text(
            '[local]\nmode = "local"\ndata_dir = "data"\nhealth_interval = 0.2\n'
            f'poll_interval = 0.05\n[[local.workers]]\nkind = "http"\nurl = "{worker.url}"\n'
            # A configured secret keeps signed request ids valid across the restart.
            f'[identity]\nresolvers = ["address"]\nsecrets = ["{TEST_SECRET}"]\n')
        port = _free_port()
        queue = Queue(f"http://127.0.0.1:{port}/api/fal/proxy")
        with serve(tmp_path, port, "--config", str(config)) as proc:
            done = queue.submit({**INPUT, "num_inference_steps": 1}).json()["request_id"]
            # The client sees signed ids; the worker knows jobs by the local queue's own id.
            queue.wait(done)
            before = queue.result(done).json()
            jobs = [queue.submit(INPUT).json()["request_id"] for _ in range(4)]
            queue.wait(jobs[0], "IN_PROGRESS")
            wait_until(lambda: worker.started[fal_id(jobs[0])] == 1)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        wait_until(lambda: not worker.running)  # the worker saw the connection drop
        assert worker.completed.total() == 1
        with serve(tmp_path, port, "--config", str(config)):
            assert queue.result(done).json() == before  # results survive the restart
            for rid in jobs:
                assert queue.wait(rid)["status"] == "COMPLETED"
                assert queue.result(rid).status_code == 200
        assert all(worker.completed[fal_id(rid)] == 1 for rid in [done, *jobs])
        assert worker.started[fal_id(jobs[0])] == 2  # the running one re-ran after the restart
        assert all(worker.started[fal_id(rid)] == 1 for rid in jobs[1:])


def test_embedded_default_runs_the_demo_with_no_key_and_no_config(tmp_path: Path) -> None:
    port = _free_port()
    with serve(tmp_path, port) as proc:
        out = run_flow("subscribe-polling", f"http://127.0.0.1:{port}/api/fal/proxy",
                       input={"prompt": "hello", "image_size": "square"}, logs=True)
        assert out["ok"], out
        image = out["result"]["images"][0]
        assert httpx.get(image["url"]).status_code == 200
        messages = [e["message"] for u in out["updates"] for e in (u.get("logs") or [])]
        assert any("demo" in m for m in messages)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        banner = (tmp_path / "proxy.log").read_text()
    assert f"listening on http://127.0.0.1:{port}" in banner
    assert "DEMO MODE" in banner
    assert (tmp_path / "flux-proxy-data" / "jobs.sqlite3").is_file()
