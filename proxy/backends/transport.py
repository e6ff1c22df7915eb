"""The pooled upstream HTTP client behind every hosted call.

Chosen by measurement (see README, "Performance"): at 64 concurrent connections on one core
httpx's own transport managed about 160 req/s, `httpx-aiohttp` about 1,150 and aiohttp's
client about 2,400; the lean HTTP/1.1 client in `http1.py` (asyncio + httptools) does more
again and imports in a fraction of aiohttp's time. Nothing else in the proxy path touches it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

from ..headers import filter_response_headers
from ..settings import UpstreamSettings
from .base import UpstreamError
from .http1 import ClientError, Connection, ConnectionPool

__all__ = ["HttpTransport", "TransportResponse", "default_ssl_context"]


def default_ssl_context() -> ssl.SSLContext:
    """Verified TLS with the system's CAs, HTTP/1.1 over ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _upstream_error(exc: ClientError) -> UpstreamError:
    kind = exc.kind if exc.kind in ("unreachable", "timeout", "too_large") else "failed"
    return UpstreamError(kind, str(exc), sent=exc.sent)  # type: ignore[arg-type]


class TransportResponse:
    """An upstream response with its head received; see `UpstreamResponse`."""

    __slots__ = ("_conn", "_idle", "_open", "_pool", "_read_timeout", "headers", "status")

    def __init__(self, pool: ConnectionPool, conn: Connection, read_timeout: float,
                 idle_timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._idle = idle_timeout
        self._open = True
        self.status = conn.status
        self.headers = filter_response_headers(conn.raw_headers)

    def _finish(self) -> None:
        if self._open:
            self._open = False
            self._pool.release(self._conn)

    async def read(self, limit: int) -> bytes:
        conn = self._conn
        try:
            if conn.content_length is not None and conn.content_length > limit:
                raise UpstreamError("too_large", "upstream response too large", sent=True)
            parts: list[bytes] = []
            size = 0
            while True:
                if not await conn.wait_data(self._read_timeout):
                    raise UpstreamError("timeout", "upstream body timed out", sent=True)
                data = conn.take()
                if data:
                    size += len(data)
                    if size > limit:
                        raise UpstreamError("too_large", "upstream response too large",
                                            sent=True)
                    parts.append(data)
                if conn.finished:
                    break
        except ClientError as exc:
            await self.aclose()
            raise _upstream_error(exc) from exc
        except BaseException:
            await self.aclose()
            raise
        self._finish()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                if not await conn.wait_data(self._idle):
                    return  # idle past stream_idle_timeout: end the stream
                data = conn.take()
                if data:
                    yield data
                if conn.finished:
                    self._finish()
                    return
        except ClientError:
            return
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        # An unfinished response drops its connection, so that the upstream sees the
        # disconnect and stops working (and billing).
        if self._open:
            self._open = False
            if self._conn.finished:
                self._pool.release(self._conn)
            else:
                self._pool.drop(self._conn)


class HttpTransport:
    """Pooled keep-alive to fal's hosts: no redirects, no cookies, no environment proxies."""

    def __init__(self, settings: UpstreamSettings,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._ssl_context = ssl_context
        self._pool: ConnectionPool | None = None

    def _get_pool(self) -> ConnectionPool:
        # Created lazily inside the running loop; mounted sub-apps get no lifespan events.
        if self._pool is None:
            given = self._ssl_context
            self._pool = ConnectionPool(
                size=self._settings.pool_size,
                keepalive=self._settings.keepalive_timeout,
                connect_timeout=self._settings.connect_timeout,
                ssl_context=(lambda: given) if given is not None else default_ssl_context,
            )
        return self._pool

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, *, stream: bool
    ) -> TransportResponse:
        """Send one request and wait for the response head (bounded by first_byte_timeout)."""
        pool = self._get_pool()
        up = self._settings
        try:
            conn = await pool.request(method, url, headers, body, up.first_byte_timeout)
        except ClientError as exc:
            raise _upstream_error(exc) from exc
        return TransportResponse(pool, conn, up.first_byte_timeout, up.stream_idle_timeout)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = None
