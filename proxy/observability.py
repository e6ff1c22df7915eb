"""The access log: one structured line per proxied request, never a key or credential."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .asgi_types import Scope
from .context import Outcome, ProxyRequest

__all__ = ["ACCESS_LOGGER", "AccessLog"]

ACCESS_LOGGER = "flux_proxy.access"


class AccessLog:
    """Writes `{"op", "endpoint", "status", "ms", "upstream_ms", ...}` as one JSON line.

    Only ids the proxy derived (operation, endpoint, caller id) are logged: never headers,
    bodies, tokens or the fal key.
    """

    def __init__(self, enabled: bool = True, logger: logging.Logger | None = None) -> None:
        self._enabled = enabled
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)

    def record(
        self, scope: Scope, request: ProxyRequest | None, outcome: Outcome,
        started: float,
    ) -> None:
        if not self._enabled or not self._logger.isEnabledFor(logging.INFO):
            return
        entry: dict[str, Any] = {
            "method": scope.get("method"),
            "op": None,
            "endpoint": None,
            "status": outcome.status,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "upstream_ms": None,
        }
        if request is not None:
            target = request.target
            entry["op"] = target.operation.value
            entry["endpoint"] = target.endpoint_id or target.app_id or target.path
            if request.upstream_ms is not None:
                entry["upstream_ms"] = round(request.upstream_ms, 2)
            if request.caller is not None:
                entry["caller"] = request.caller.id
        if outcome.upstream_status is not None:
            entry["upstream_status"] = outcome.upstream_status
        if outcome.error:
            entry["error"] = outcome.error
        if outcome.streamed:
            entry["streamed"] = True
        self._logger.info(json.dumps(entry, separators=(",", ":")))
