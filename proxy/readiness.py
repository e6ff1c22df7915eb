"""`/readyz`: is this instance able to serve? Reports the limits store (Redis) state.

Liveness (`/healthz`) stays trivially OK so an orchestrator does not restart a healthy process
while Redis is down; readiness says 503 so a load balancer can route around it until Redis
is back. It recovers by itself: every check pings again.
"""

from __future__ import annotations

import json
from typing import Any

from .asgi_types import Receive, Scope, Send
from .limits.store import Backing

__all__ = ["Readiness"]


class Readiness:
    """ASGI app: 200 `{"status": "ready", ...}` or 503 `{"status": "unavailable", ...}`."""

    def __init__(self, backing: Backing | None) -> None:
        self.backing = backing

    async def report(self) -> tuple[bool, dict[str, Any]]:
        if self.backing is None:
            return True, {"status": "ready", "limits": "off"}
        up = await self.backing.ping()
        state = {"storage": self.backing.kind, "state": "up" if up else "down"}
        return up, {"status": "ready" if up else "unavailable", "limits": state}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ok, report = await self.report()
        body = json.dumps(report).encode()
        await send({"type": "http.response.start", "status": 200 if ok else 503, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})
