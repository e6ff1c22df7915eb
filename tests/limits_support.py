"""Helpers for the limits tests: clients from distinct loopback addresses, common requests."""

from __future__ import annotations

import json
from typing import Any

import httpx

SUBMIT = "https://queue.fal.run/fal-ai/flux/dev"
STREAM = "https://fal.run/fal-ai/flux/dev/stream"


def client(address: str = "127.0.0.1") -> httpx.AsyncClient:
    """An async client whose connections come from `address` (127.0.0.x are all loopback)."""
    transport = httpx.AsyncHTTPTransport(
        local_address=address, limits=httpx.Limits(max_connections=200))
    return httpx.AsyncClient(transport=transport, timeout=20)


def flux_input(images: int = 1, size: Any = "square_hd", **extra: Any) -> bytes:
    return json.dumps({"prompt": "a cat", "num_images": images, "image_size": size,
                       **extra}).encode()


async def submit(http: httpx.AsyncClient, url: str, body: bytes | None = None,
                 target: str = SUBMIT) -> httpx.Response:
    return await http.post(url, content=body or flux_input(), headers={
        "x-fal-target-url": target, "content-type": "application/json"})


async def queue_call(http: httpx.AsyncClient, url: str, method: str, request_id: str,
                     tail: str = "/status") -> httpx.Response:
    target = f"https://queue.fal.run/fal-ai/flux/requests/{request_id}{tail}"
    return await http.request(method, url, headers={"x-fal-target-url": target})


def policy(response: httpx.Response) -> dict[str, dict[str, int]]:
    """`RateLimit` header as {name: {"r": remaining, "t": reset}}."""
    out: dict[str, dict[str, int]] = {}
    for part in response.headers.get("ratelimit", "").split(","):
        if not part.strip():
            continue
        name, *params = part.strip().split(";")
        out[name.strip('"')] = {k: int(v) for k, v in (p.split("=") for p in params)}
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if base == name and found == want:
            return float(value)
    return 0.0
