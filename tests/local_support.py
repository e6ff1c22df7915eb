"""Helpers for local-backend tests: settings for a local queue, and direct protocol calls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from proxy.settings import Settings, settings_from_dict
from tests.support import PERMISSIVE, _merge

QUEUE = "https://queue.fal.run"
FLUX = "fal-ai/flux/dev"


def local_settings(data_dir: Path, workers: list[dict[str, Any]] | None = None,
                   **local: Any) -> Settings:
    """A local-mode proxy (no fal key unless `fal` is given) with fast polling."""
    fal = local.pop("fal", None)
    section: dict[str, Any] = {"mode": "local", "data_dir": str(data_dir),
                               "health_interval": 0.2, "poll_interval": 0.05,
                               "workers": workers or [{"kind": "demo", "step_seconds": 0.05}]}
    # Same permissive identity/policy as the hosted tests (callers known by address), plus
    # sync_mode, which the local queue answers with data URIs.
    data: dict[str, Any] = _merge(PERMISSIVE, {
        "local": _merge(section, local),
        "policy": {"inputs": {"*": {"allow_sync_mode": True}}},
    })
    if fal is not None:
        data.update(fal)
    return settings_from_dict(data)


class Queue:
    """fal's queue calls through the proxy route, with httpx (for cases the JS client hides)."""

    def __init__(self, proxy: str, app: str = "fal-ai/flux") -> None:
        self.proxy = proxy
        self.app = app

    def call(self, method: str, target: str, body: Any = None) -> httpx.Response:
        return httpx.request(method, self.proxy, headers={"x-fal-target-url": target},
                             json=body, timeout=10)

    def submit(self, inp: dict[str, Any], query: str = "") -> httpx.Response:
        return self.call("POST", f"{QUEUE}/{FLUX}{query}", inp)

    def status(self, rid: str, logs: bool = True) -> httpx.Response:
        return self.call("GET", f"{QUEUE}/{self.app}/requests/{rid}/status?logs={int(logs)}")

    def result(self, rid: str) -> httpx.Response:
        return self.call("GET", f"{QUEUE}/{self.app}/requests/{rid}")

    def cancel(self, rid: str) -> httpx.Response:
        return self.call("PUT", f"{QUEUE}/{self.app}/requests/{rid}/cancel")

    def wait(self, rid: str, status: str = "COMPLETED", timeout: float = 20) -> dict[str, Any]:
        """Poll until the job reaches `status` (bounded)."""
        deadline = time.monotonic() + timeout
        order = ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
        while time.monotonic() < deadline:
            body: dict[str, Any] = self.status(rid).json()
            if order.index(body["status"]) >= order.index(status):
                return body
            time.sleep(0.02)
        raise AssertionError(f"{rid} did not reach {status} in {timeout}s")


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll `predicate` until true (bounded); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)
