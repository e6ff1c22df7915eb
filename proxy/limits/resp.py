"""A lean Redis connection for the limits hot path: RESP spoken directly over one socket.

Why: every request runs one or two budget scripts (`redis_engine.py`), and through redis-py
each call paid for a pipeline object, a connection checkout, packing every argument one by
one (~2 µs each, and a coalesced script call has hundreds), a reader task wake-up and timeout
bookkeeping: ~100 µs of proxy CPU per submit. Here a caller hands over a command already
packed (the engine caches each caller's packed keys), it is written at once on a persistent
connection, and its reply is parsed straight from `data_received` into the caller's callback:
no task, no stream, no per-argument work.

What redis-py gave and this keeps: the URL's host, port, unix socket, db, username and TLS
options (read from redis-py's own parsing of the URL, so both clients agree), AUTH with the
configured password, a timeout per call (the reply must come within `timeout` seconds of the
write, or the connection is dropped and every pending call fails with redis-py's
`TimeoutError`), and reconnection: a broken connection fails its pending calls with
`ConnectionError` and the next call opens a new one. Errors are redis-py's exception classes
(`RedisError` subclasses), so the limits' "store down" handling is unchanged.

Everything else (usage reads, pings, slot releases) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoScriptError,
    RedisError,
    ResponseError,
    TimeoutError,
)

__all__ = ["RedisLink", "bulk", "pack"]

Callback = Callable[[Any], None]  # gets the reply, or the exception that stands for it
_INCOMPLETE = object()


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def pack(*args: bytes | str | int) -> bytes:
    """One command, RESP-encoded (for the few commands that are not hot)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(bulk(arg if isinstance(arg, bytes) else str(arg).encode()))
    return b"".join(parts)


def _error(message: str) -> RedisError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return AuthenticationError(message)
    return ResponseError(message)


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """The reply that starts at `pos` and where it ends; `_INCOMPLETE` if not all there yet.
    An error reply is returned (not raised) as its exception."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1: end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            return _INCOMPLETE, pos
        return bytes(buf[end + 2: stop]), stop + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1: end]), end + 2
    if kind == 43:  # + simple string
        return bytes(buf[pos + 1: end]), end + 2
    if kind == 45:  # - error
        return _error(buf[pos + 1: end].decode(errors="replace")), end + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1: end])
        if count < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(count):
            item, at = _parse(buf, at)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, at
    raise ConnectionError(f"Protocol error: unexpected reply type {chr(kind)!r}")


class _Connection(asyncio.Protocol):
    """One socket: commands written in order, replies handed to their callbacks in order."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: deque[tuple[float, Callback]] = deque()  # (deadline, callback)
        self._timer: asyncio.TimerHandle | None = None
        self._corked: list[bytes] | None = None
        self.closed = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        waiting = self._waiting
        try:
            while pos < len(buf):
                reply, pos = _parse(buf, pos)
                if reply is _INCOMPLETE:
                    break
                if not waiting:
                    raise ConnectionError("Protocol error: a reply nobody asked for")
                waiting.popleft()[1](reply)
        except (ValueError, ConnectionError) as exc:
            self.fail(exc if isinstance(exc, RedisError) else ConnectionError(str(exc)))
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"Connection closed by server{f': {exc}' if exc else ''}."))

    # -- for RedisLink

    def send(self, command: bytes, callback: Callback) -> None:
        if self.closed or self._transport is None:
            callback(ConnectionError("Connection closed."))
            return
        if self._corked is not None:
            self._corked.append(command)
        else:
            self._transport.write(command)
        self._waiting.append((self._loop.time() + self._timeout, callback))
        if self._timer is None:
            self._timer = self._loop.call_later(self._timeout, self._check)

    def cork(self) -> None:
        """Hold writes until `uncork`, which sends them as one."""
        self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and not self.closed and self._transport is not None:
            self._transport.write(b"".join(corked))

    def _check(self) -> None:
        """Runs at most once per `timeout` while calls are pending: fails them all when the
        oldest is overdue (the connection is then dropped: its replies would be out of step)."""
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][0]
        if deadline <= self._loop.time():
            self.fail(TimeoutError("Timeout reading from Redis"))
        else:
            self._timer = self._loop.call_at(deadline, self._check)

    def fail(self, exc: BaseException) -> None:
        """Drop the connection; every pending call gets `exc`."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        waiting, self._waiting = self._waiting, deque()
        for _, callback in waiting:
            callback(exc)


class RedisLink:
    """A persistent connection, opened on first use and again after it broke (module doc)."""

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._queued: list[tuple[bytes, Callback]] = []  # while connecting
        self._connecting: asyncio.Task[None] | None = None
        self._due: list[Callable[[], None]] = []  # flushes asked for in this turn

    def at_turn_end(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        """Call `flush` soon, with the other flushes asked for in this turn: what they send
        goes out in one write (one syscall for every script of the turn)."""
        if not self._due:
            loop.call_soon(self._flush_due)
        self._due.append(flush)

    def _flush_due(self) -> None:
        due, self._due = self._due, []
        connection = self._connection
        if connection is None or connection.closed:
            for flush in due:
                flush()
            return
        connection.cork()
        try:
            for flush in due:
                flush()
        finally:
            connection.uncork()

    def send(self, command: bytes, callback: Callback) -> None:
        """Write a packed command (now, or once connected); `callback` gets its reply, or an
        exception: `ResponseError` (or `NoScriptError`) for an error reply, `ConnectionError`
        or `TimeoutError` when the connection failed. Never raises."""
        connection = self._connection
        if connection is not None and not connection.closed:
            connection.send(command, callback)
            return
        self._queued.append((command, callback))
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            connection = await asyncio.wait_for(self._open(), self._timeout)
        except BaseException as exc:
            self._connecting = None
            queued, self._queued = self._queued, []
            failure: BaseException = exc
            if isinstance(exc, asyncio.TimeoutError):
                failure = TimeoutError("Timeout connecting to Redis")
            elif isinstance(exc, OSError):
                failure = ConnectionError(f"Error connecting to Redis: {exc}")
            for _, callback in queued:
                callback(failure)
            if not isinstance(exc, Exception):
                raise
            return
        self._connecting = None
        self._connection = connection
        queued, self._queued = self._queued, []
        for command, callback in queued:
            connection.send(command, callback)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        options = self._pool.connection_kwargs
        kind = self._pool.connection_class
        connection = _Connection(self._timeout)
        if issubclass(kind, UnixDomainSocketConnection):
            await loop.create_unix_connection(lambda: connection, options["path"])
        else:
            context: ssl.SSLContext | None = None
            if issubclass(kind, SSLConnection):  # redis-py's reading of the TLS options
                context = kind(**options).ssl_context.get()
            host = options.get("host", "localhost")
            await loop.create_connection(
                lambda: connection, host, options.get("port", 6379), ssl=context,
                server_hostname=host if context is not None else None)
        try:
            handshake = []
            if options.get("password"):
                user = options.get("username")
                handshake.append(pack("AUTH", *([user] if user else []), options["password"]))
            if options.get("db"):
                handshake.append(pack("SELECT", options["db"]))
            for command in handshake:
                reply = await self._ask(connection, command)
                if isinstance(reply, BaseException):
                    raise reply
        except BaseException:
            connection.fail(ConnectionError("Handshake failed"))
            raise
        return connection

    @staticmethod
    async def _ask(connection: _Connection, command: bytes) -> Any:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def replied(reply: Any) -> None:
            if not answer.done():
                answer.set_result(reply)

        connection.send(command, replied)
        return await answer

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._connection is not None:
            self._connection.fail(ConnectionError("Connection closed."))
            self._connection = None
