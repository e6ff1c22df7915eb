"""`fal_webhook`: POST the outcome to the caller's URL, with retries, like fal does.

Policy: only hosts listed in `local.webhook_hosts` are accepted (at submit time, 400
otherwise), so the proxy cannot be turned into a request cannon against the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ...errors import ProxyError
from .store import Job

__all__ = ["WebhookSender", "webhook_body"]

log = logging.getLogger("flux_proxy.local")


def webhook_body(job: Job) -> dict[str, Any]:
    """fal's webhook payload: status OK with the output, or ERROR with the error body."""
    try:
        payload = json.loads(job.result or b"null")
    except ValueError:
        payload = None
    ok = job.error is None
    return {"request_id": job.id, "gateway_request_id": job.id,
            "status": "OK" if ok else "ERROR", "payload": payload, "error": job.error}


class WebhookSender:
    def __init__(self, hosts: tuple[str, ...], attempts: int, timeout: float,
                 backoff: float) -> None:
        self._hosts = frozenset(h.lower() for h in hosts)
        self._attempts = attempts
        self._timeout = timeout
        self._backoff = backoff
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def check(self, url: str) -> None:
        """Refuse a webhook URL outside the policy (400, nothing queued)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        with_port = f"{host}:{parts.port}" if parts.port else host
        if parts.scheme not in ("http", "https") or not (
                host in self._hosts or with_port in self._hosts):
            raise ProxyError(400, "fal_webhook: this host is not allowed (local.webhook_hosts)",
                             error_type="bad_request")

    def send(self, job: Job) -> None:
        task = asyncio.ensure_future(self._deliver(job.webhook, webhook_body(job)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._session.post(
                        url, json=body, allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as resp:
                    if 200 <= resp.status < 300:
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = exc.__class__.__name__
            log.warning("webhook for %s failed (attempt %d): %s", body["request_id"], attempt,
                        problem)
            if attempt < self._attempts:
                await asyncio.sleep(delay)
                delay *= 2

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
