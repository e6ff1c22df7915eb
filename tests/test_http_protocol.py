"""`flux-proxy serve`'s HTTP protocol: a response's head and body leave in one socket write,
and nothing waits longer than the end of its event-loop turn for it."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from proxy.http_protocol import CoalescingHttpToolsProtocol, HeadHoldingTransport, http_protocol
from proxy.settings import ServerSettings
from tests.fakes.server import ServerHandle

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class _Recorder(asyncio.Transport):
    """What reaches the socket: one entry per write system call the transport would make."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:  # one writev
        self.writes.append(b"".join(bytes(part) for part in list_of_data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def test_a_head_and_the_body_written_after_it_leave_as_one_write() -> None:
    sent = _Recorder()
    transport = HeadHoldingTransport(sent, asyncio.get_running_loop())
    transport.write(HEAD)
    assert sent.writes == []  # held for the body
    transport.write(b"hello")
    assert sent.writes == [HEAD + b"hello"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left to send
    assert sent.writes == [HEAD + b"hello"]
    transport.write(b"next chunk")  # not a head: straight through
    assert sent.writes == [HEAD + b"hello", b"next chunk"]


async def test_a_head_with_no_body_in_its_turn_leaves_at_the_end_of_the_turn() -> None:
    """A stream whose first event comes later, a HEAD answer, a `100 Continue`."""
    sent = _Recorder()
    transport = HeadHoldingTransport(sent, asyncio.get_running_loop())
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert sent.writes == [HEAD]
    transport.write(b"data: 1\n\n")
    assert sent.writes == [HEAD, b"data: 1\n\n"]


async def test_a_large_body_follows_its_head_in_order() -> None:
    sent = _Recorder()
    transport = HeadHoldingTransport(sent, asyncio.get_running_loop())
    body = bytes(range(256)) * 1024  # 256 KiB: sent behind the head, not copied into it
    transport.write(HEAD)
    transport.write(memoryview(body))
    assert sent.writes == [HEAD + body]


async def test_closing_sends_a_held_head_first_and_aborting_drops_it() -> None:
    loop = asyncio.get_running_loop()
    sent = _Recorder()
    transport = HeadHoldingTransport(sent, loop)
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # as uvicorn's 400: write, close
    transport.close()
    assert sent.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and sent.closed

    dropped = _Recorder()
    transport = HeadHoldingTransport(dropped, loop)
    transport.write(HEAD)
    transport.abort()
    await asyncio.sleep(0)
    assert dropped.writes == [] and dropped.aborted


def test_serve_uses_it_unless_turned_off() -> None:
    assert http_protocol(ServerSettings()) is CoalescingHttpToolsProtocol
    assert http_protocol(ServerSettings(coalesce_writes=False)) == "auto"


# -- through a real server --------------------------------------------------------------------


def _streaming_app(go_on: threading.Event) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await asyncio.get_running_loop().run_in_executor(None, go_on.wait, 10)
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": False})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b"got " + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})
    return app


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def server() -> Any:
    go_on = threading.Event()
    with ServerHandle(_streaming_app(go_on), http=CoalescingHttpToolsProtocol) as handle:
        handle.go_on = go_on
        yield handle
    go_on.set()


def test_a_streamed_response_head_reaches_the_client_before_its_first_event(server: Any) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        head = _read_until(sock, b"\r\n\r\n")  # while the app still waits to send the event
        assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head
        assert b"data: 1" not in head
        server.go_on.set()
        assert b"data: 1" in _read_until(sock, b"data: 1")


def test_keep_alive_head_requests_and_100_continue_are_answered(server: Any) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        first = _read_until(sock, b"got hi")
        assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"got hi")
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nhost: x\r\n\r\n")  # a head and no body at all
        head = _read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
                     b"expect: 100-continue\r\n\r\n")
        assert _read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"abc")
        assert _read_until(sock, b"got abc").endswith(b"got abc")
