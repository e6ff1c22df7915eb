"""uvicorn's httptools protocol, writing each response's head and body as one socket write.

Why: uvicorn writes a response's head and its body with two `transport.write` calls, and
uvloop sends each at once: two system calls and two wake-ups of the client per response,
where one would do. On a loopback proxy those writes are the largest cost after our own
Python. Here a response head is held until the next write on its connection (the body,
which an ASGI app sends right after the start, in the same event-loop turn) and goes out
with it; a head no body write follows in that turn (a stream's first event comes later, a
HEAD request, a `100 Continue`) goes out alone at the end of the turn, so nothing waits
longer than it would have for the loop to get round to it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import ServerSettings

__all__ = ["CoalescingHttpToolsProtocol", "HeadHoldingTransport", "http_protocol"]

_HEAD = b"HTTP/"  # how every response head uvicorn writes starts
_JOIN_BELOW = 64 * 1024  # a body this small is copied behind the head; a larger one is not


class HeadHoldingTransport:
    """Wraps a connection's transport: a write that starts a response waits for the next
    write or the end of the loop turn (see the module docstring); everything else passes
    through, in order."""

    __slots__ = ("_flush_soon", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""
        self._flush_soon = self._flush  # (bound once: one per response otherwise)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held:
            self._held = b""
            if len(data) < _JOIN_BELOW:
                self._transport.write(held + data)
            else:  # one writev, no copy of a large body
                self._transport.writelines((held, data))
        elif data[:5] == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self._flush_soon)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held:
            self._held = b""
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()  # a head written just before closing (uvicorn's 400s) still goes out
        self._transport.close()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # the rest of the transport API, rarely used
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's `httptools` protocol over a `HeadHoldingTransport` (`flux-proxy serve`'s
    `http=` protocol class unless `server.coalesce_writes` is off)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]


def http_protocol(settings: ServerSettings) -> type[asyncio.Protocol] | str:
    """What `flux-proxy serve` passes as uvicorn's `http=`."""
    return CoalescingHttpToolsProtocol if settings.coalesce_writes else "auto"
