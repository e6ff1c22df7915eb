"""Shared helpers and fixtures: a tiny random FLUX pipeline and the real worker over HTTP."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny tensors: OpenMP threads only add spin-wait contention on small shared CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class RunningWorker:
    """A worker app served by uvicorn in a background thread on 127.0.0.1."""

    app: Any
    base_url: str
    server: Any
    thread: threading.Thread

    @property
    def state(self) -> Any:
        return self.app.state.worker

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(app: Any) -> RunningWorker:
    """Start ``app`` with uvicorn on an ephemeral port and wait until it accepts requests."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningWorker(app, f"http://127.0.0.1:{port}", server, thread)


def wait_for(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="worker tests need the 'gpu' extra (torch)")
    pytest.importorskip("diffusers", reason="worker tests need the 'gpu' extra (diffusers)")
    pytest.importorskip("transformers", reason="worker tests need the 'gpu' extra (transformers)")
    pytest.importorskip("tokenizers", reason="worker tests need the 'gpu' extra (tokenizers)")
    from .tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"), seed=0)


def tiny_settings(model_dir: Path, **kw: Any) -> Any:
    from proxy.worker.settings import WorkerSettings

    kw.setdefault("device", "cpu")
    kw.setdefault("warmup_image_size", {"width": 64, "height": 64})
    kw.setdefault("warmup_steps", 1)
    return WorkerSettings(model_dir=model_dir, **kw)


@pytest.fixture(scope="session")
def worker(tiny_model_dir: Path) -> Iterator[RunningWorker]:
    """One ready worker for the whole session (tests must leave it idle)."""
    import httpx

    from proxy.worker.app import create_app

    running = serve(create_app(tiny_settings(tiny_model_dir)))
    try:
        wait_for(lambda: httpx.get(running.base_url + "/readyz").status_code == 200)
        yield running
    finally:
        running.stop()


@pytest.fixture
def idle_worker(worker: RunningWorker) -> Iterator[RunningWorker]:
    """The session worker, reset to defaults after each test and waited until idle."""
    settings = worker.state.settings
    yield worker
    settings.step_delay_s = 0.0
    settings.nsfw_checker = None
    settings.max_side = 2048
    wait_for(lambda: not worker.state.busy)
