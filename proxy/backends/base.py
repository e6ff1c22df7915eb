"""The one seam every backend implements: `forward(request) -> UpstreamResponse`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ..context import ProxyRequest

__all__ = ["Backend", "BufferedResponse", "UpstreamError", "UpstreamResponse"]


class UpstreamResponse(Protocol):
    """A response whose head has arrived; the body is read whole or chunk by chunk."""

    status: int
    headers: list[tuple[bytes, bytes]]  # already filtered for the client

    async def read(self, limit: int) -> bytes:
        """The whole body; raises `UpstreamError` past `limit` bytes or on failure."""
        ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Chunks as they arrive (SSE); ends quietly when the upstream ends or idles out."""
        ...

    async def aclose(self) -> None:
        """Release (or drop) the upstream connection; safe to call twice."""
        ...


class Backend(Protocol):
    """Answers a request that has passed every guard."""

    async def forward(self, request: ProxyRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class UpstreamError(Exception):
    """The upstream could not be reached or failed mid-way.

    `sent` tells whether the request may have reached the upstream: a billed operation that
    may have been accepted must not be answered with a status the fal client retries.
    """

    def __init__(
        self, kind: Literal["unreachable", "timeout", "failed", "too_large"], message: str,
        *, sent: bool,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent = sent


class BufferedResponse:
    """An `UpstreamResponse` whose body is already in memory (local backend, tests)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def read(self, limit: int) -> bytes:
        return self.body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self.body:
            yield self.body

    async def aclose(self) -> None:
        return None
