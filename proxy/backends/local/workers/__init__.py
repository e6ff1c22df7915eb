"""Worker adapters: the demo, fal-style HTTP workers, ComfyUI; see `base` for the seam."""

from __future__ import annotations

from ..settings import WorkerSettings
from .base import WorkerAdapter
from .comfyui import ComfyWorker
from .demo import DemoWorker
from .http import HttpWorker

__all__ = ["build_worker"]


def build_worker(ws: WorkerSettings) -> WorkerAdapter:
    if ws.kind == "http":
        return HttpWorker(ws.name, ws.url, ws.concurrency, ws.timeout)
    if ws.kind == "comfyui":
        return ComfyWorker(ws.name, ws.url, ws.concurrency, ws.timeout, ws.comfyui)
    return DemoWorker(ws.name, ws.concurrency, ws.step_seconds)
