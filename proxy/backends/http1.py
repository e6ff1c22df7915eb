"""A lean pooled HTTP/1.1 client: asyncio protocols plus httptools' parser (llhttp).

Why not a general client: the proxy's upstream calls are few and simple (GET/POST/PUT, a
body already in memory, keep-alive to three hosts), and the HTTP client was most of the
proxy's CPU (README, "Performance"). httptools is the parser uvicorn already uses; what is
left here is a connection pool, request serialisation and flow control.

Deliberately absent: redirects (never followed), cookies, proxies from the environment,
decompression (bytes pass through as sent), 100-continue, HTTP/2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ClientError", "Connection", "ConnectionPool", "Origin"]

_HIGH_WATER = 256 * 1024  # pause reading an unread stream past this many buffered bytes
_LOW_WATER = 64 * 1024
_MAX_HEAD = 64 * 1024  # response header bytes; llhttp itself sets no limit
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ClientError(Exception):
    """A request failed; `kind` and `sent` map onto `UpstreamError`."""

    def __init__(self, kind: str, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent = sent


class Origin:
    """Where one base URL points: scheme, host, port and the Host header to send."""

    __slots__ = ("host", "host_header", "key", "port", "tls")

    def __init__(self, scheme: str, host: str, port: int, key: str) -> None:
        self.key = key  # the origin text it was parsed from: the pool's key
        self.tls = scheme == "https"
        self.host = host
        self.port = port
        default = 443 if self.tls else 80
        shown = f"[{host}]" if ":" in host else host
        self.host_header = shown if port == default else f"{shown}:{port}"

    @classmethod
    def split(cls, url: str) -> tuple[str, str]:
        """`https://host:port/path?q` -> ("https://host:port", "/path?q")."""
        start = url.index("//") + 2
        slash = url.find("/", start)
        if slash < 0:
            return url, "/"
        return url[:slash], url[slash:]

    @classmethod
    def parse(cls, origin: str) -> Origin:
        scheme, _, authority = origin.partition("://")
        if scheme not in ("http", "https") or not authority or "@" in authority:
            raise ValueError(f"unsupported upstream origin {origin!r}")
        if authority.startswith("["):
            host, _, rest = authority[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = authority.partition(":")
        port = int(port_text) if port_text else (443 if scheme == "https" else 80)
        return cls(scheme, host, port, origin)


class Connection(asyncio.Protocol):
    """One upstream socket and the response being read from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: str) -> None:
        self._loop = loop
        self.key = key  # which idle list of the pool it belongs to
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.active = False  # a request is in flight; bytes at any other time are an error
        self.reused = False
        self.idle_since = 0.0
        self.idle_in: deque[Connection] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.content_length: int | None = None
        self._until_close = False
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received_any = False
        self.done = False
        self.keep_alive = False
        self.error: ClientError | None = None
        self._paused = False

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active:  # unsolicited bytes on an idle connection: never trust it again
            self.close()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done:  # bytes after our complete response: keep it, retire the socket
                self.keep_alive = False
                self.close()
                return
            self._fail(ClientError("failed", f"malformed upstream response: {exc}", sent=True))
            return
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_in is not None:
            with contextlib.suppress(ValueError):
                self.idle_in.remove(self)
            self.idle_in = None
        if self._head is None:
            return  # never used
        if self._until_close and self.status and not self.done:
            self.done = True  # a body delimited by the end of the connection
            self._wake()
            return
        if not self.done:
            self._fail(ClientError("failed", "upstream closed the connection", sent=True))

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.done:
            raise ValueError("a second response to one request")  # stops the parse

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD:
            raise ValueError("upstream response head too large")  # fails the parse
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # informational: the real head follows
            self.raw_headers = []
            return
        self.status = status
        chunked = False
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self._until_close = (
            not chunked and self.content_length is None and status not in (204, 304)
        )
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if not self.status:
            return  # the end of an informational response
        self.done = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- used by ConnectionPool / responses ----------------------------------------------
    def start(self, data: bytes) -> asyncio.Future[None]:
        """Send one request; the returned future resolves when the response head is in."""
        self._reset()
        self.active = True
        self._head = head = self._loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return head

    @property
    def finished(self) -> bool:
        """The whole response is in and has been taken."""
        return self.done and not self.chunks

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: ClientError) -> None:
        self.error = error
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved: the caller may have gone already
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
            waiter.exception()
        self.close()

    def take(self) -> bytes:
        """Everything buffered so far (possibly b"")."""
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait_data(self, timeout: float) -> bool:
        """Wait until a chunk, the end or an error arrives; False on timeout."""
        if not (self.chunks or self.done or self.error):
            self._waiter = waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self.chunks or self.done:
            return True
        if self.error is not None:
            raise self.error
        return False

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _timeout_head(head: asyncio.Future[None]) -> None:
    if not head.done():
        head.set_exception(ClientError("timeout", "upstream did not answer in time", sent=True))


class ConnectionPool:
    """Keep-alive connections per origin, at most `size` in use at once."""

    def __init__(
        self, *, size: int, keepalive: float, connect_timeout: float,
        ssl_context: Callable[[], ssl.SSLContext],
    ) -> None:
        self._idle: dict[str, deque[Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._in_use = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._size = size
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._ssl: ssl.SSLContext | None = None

    def origin(self, text: str) -> Origin:
        origin = self._origins.get(text)
        if origin is None:
            origin = self._origins[text] = Origin.parse(text)
        return origin

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None,
        head_timeout: float,
    ) -> Connection:
        """Send a request and return its connection with the response head received.

        The caller reads the body through the connection, then calls `release()` (read to
        the end) or `drop()`.
        """
        origin_text, target = Origin.split(url)
        origin = self.origin(origin_text)
        data = _serialise(method, target, origin.host_header, headers, body)
        await self._acquire_slot()
        try:
            conn = self._pop_idle(origin_text)
            if conn is None:
                conn = await self._connect(origin)
            try:
                await self._send(conn, data, head_timeout)
            except ClientError as exc:
                if not (conn.reused and not conn.received_any and method in _IDEMPOTENT
                        and exc.kind == "failed"):
                    raise
                # A kept-alive socket the server had closed: try once on a new one.
                conn = await self._connect(origin)
                await self._send(conn, data, head_timeout)
        except BaseException:
            self._release_slot()
            raise
        conn.idle_in = None
        return conn

    async def _acquire_slot(self) -> None:
        # A semaphore, minus the coroutine machinery on the (usual) uncontended path.
        if self._in_use < self._size and not self._waiting:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # resolved by _release_slot, which hands its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as we were cancelled: pass it on
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise

    def _release_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        self._in_use -= 1

    async def _send(self, conn: Connection, data: bytes, timeout: float) -> None:
        head = conn.start(data)
        timer = asyncio.get_running_loop().call_later(timeout, _timeout_head, head)
        try:
            await head
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()

    def release(self, conn: Connection) -> None:
        """Give a finished connection back: to the idle pool if reusable, else closed."""
        self._release_slot()
        conn.active = False
        if conn.closed or not conn.finished or not conn.keep_alive:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        now = time.monotonic()
        while idle and (idle[0].closed or now - idle[0].idle_since > self._keepalive):
            idle.popleft().close()
        if len(idle) >= self._size:
            conn.close()
            return
        conn.idle_since = now
        conn.reused = True
        conn.idle_in = idle
        idle.append(conn)

    def drop(self, conn: Connection) -> None:
        """Close a connection whose response was not read to the end."""
        self._release_slot()
        conn.close()

    def _pop_idle(self, origin_url: str) -> Connection | None:
        idle = self._idle.get(origin_url)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self._keepalive:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = self._ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, origin.key), origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError as exc:
            raise ClientError("timeout", "upstream connect timeout", sent=False) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise ClientError(
                "unreachable", f"cannot connect to upstream: {exc}", sent=False
            ) from exc
        return conn

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


def _serialise(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes | None
) -> bytes:
    parts = [method, " ", target, " HTTP/1.1\r\nhost: ", host, "\r\n"]
    for name, value in headers.items():
        if ("\n" in value or "\r" in value or "\x00" in value
                or "\n" in name or "\r" in name or ":" in name or " " in name):
            raise ClientError("failed", f"refusing header {name!r}: invalid characters",
                              sent=False)
        parts += (name, ": ", value, "\r\n")
    if body is not None:
        parts += ("content-length: ", str(len(body)), "\r\n\r\n")
    elif method in ("POST", "PUT"):
        parts.append("content-length: 0\r\n\r\n")
    else:
        parts.append("\r\n")
    try:
        head = "".join(parts).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ClientError("failed", "request header is not latin-1", sent=False) from exc
    return head + body if body else head
