"""The state of one proxied request as it moves down the pipeline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi_types import Scope
    from .target import Target

__all__ = ["Caller", "Outcome", "ProxyRequest", "ResponseFilter", "SettleHook"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a stable id for limits and ownership, and how we know it."""

    id: str
    kind: str  # "user" (host app / signed token), "anonymous" (cookie + address), "address"
    address: str = ""
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """How the request ended, for settlement (limits, usage, access log)."""

    status: int = 0
    upstream_status: int | None = None
    error: str | None = None  # None, "refused", "unreachable", "timeout", "unknown", "disconnected"
    streamed: bool = False
    body: bytes = b""  # a buffered answer as the upstream sent it, before any response filter

    @property
    def upstream_succeeded(self) -> bool:
        return self.upstream_status is not None and 200 <= self.upstream_status < 300


# A filter may rewrite a buffered JSON response body (e.g. sign request ids in a submit answer).
# Filters and hooks answer synchronously (bytes, None) unless they must wait for something (a
# Redis call): then they return an awaitable. On every request, a coroutine per step costs more
# than most steps do.
ResponseFilter = Callable[["ProxyRequest", int, bytes], "bytes | Awaitable[bytes]"]
SettleHook = Callable[["ProxyRequest", Outcome], "Awaitable[None] | None"]


@dataclass(slots=True)
class ProxyRequest:
    """Everything the stages learn about one request; each stage reads and adds a little."""

    scope: Scope
    method: str
    headers: list[tuple[bytes, bytes]]
    target: Target
    body: bytes = b""
    caller: Caller | None = None
    json: Any = None  # parsed body, when a stage needed to look inside
    json_dirty: bool = False  # set when a stage changed `json`; the body is re-encoded once
    upstream_headers: dict[str, str] = field(default_factory=dict)  # extra headers to send
    response_filters: list[ResponseFilter] = field(default_factory=list)
    settle_hooks: list[SettleHook] = field(default_factory=list)
    # added to the reply, replacing upstream headers of the same name
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # per-stage scratch space (cost, ...)
    started: float = field(default_factory=time.perf_counter)
    upstream_ms: float | None = None

    def header(self, name: bytes) -> str | None:
        """First value of a request header (name in lower case), decoded as latin-1."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    @property
    def client_host(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""
