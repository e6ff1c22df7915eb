"""The upstream HTTP client (proxy/backends/transport.py + http1.py) against real sockets.

Each test runs a small raw HTTP server on 127.0.0.1 that writes exact bytes, so framing,
keep-alive, timeouts and disconnects are what a real upstream would do to the proxy.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from proxy.backends.base import UpstreamError
from proxy.backends.transport import HttpTransport
from proxy.settings import UpstreamSettings

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> bytes:
        """One whole request (head + content-length body), or b"" at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head + await self.reader.readexactly(length)

    async def reply(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    open_now: int = 0
    most_open: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, context: ssl.SSLContext | None = None) -> Server:
        state = Server(0)

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            state.open_now += 1
            state.most_open = max(state.most_open, state.open_now)
            conn = Conn(reader, writer)
            try:
                await handler(conn)  # then wait: only the client ends the connection
                if await reader.read(1) == b"":
                    state.closed_by_client.set()
            except (ConnectionError, asyncio.IncompleteReadError):
                state.closed_by_client.set()
            finally:
                state.open_now -= 1
                writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def transport() -> AsyncIterator[Callable[..., HttpTransport]]:
    """Makes clients (upstream settings overridden), each closed when the test ends."""
    clients: list[HttpTransport] = []

    def make(ssl_context: ssl.SSLContext | None = None, **overrides: float | int
             ) -> HttpTransport:
        settings = UpstreamSettings(**overrides)  # type: ignore[arg-type]
        clients.append(HttpTransport(settings, ssl_context=ssl_context))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


async def test_keeps_the_connection_alive_between_requests(serve, transport) -> None:
    seen: list[bytes] = []

    async def handler(conn: Conn) -> None:
        while request := await conn.request():
            seen.append(request)
            await conn.reply(ok(b'{"n":%d}' % len(seen)))

    server = await serve(handler)
    client = transport()
    for n in (1, 2, 3):
        resp = await client.send("GET", server.url + "/a/b?x=1", {"accept": "*/*"}, None,
                                 stream=False)
        assert resp.status == 200
        assert await resp.read(1000) == b'{"n":%d}' % n
    assert server.connections == 1
    assert seen[0].startswith(b"GET /a/b?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"accept: */*\r\n" in seen[0]


async def test_sends_the_body_with_its_length_and_filters_response_headers(
    serve, transport
) -> None:
    got: list[bytes] = []

    async def handler(conn: Conn) -> None:
        got.append(await conn.request())
        await conn.reply(ok(b"{}", b"set-cookie: a=b\r\nx-fal-request-id: r1\r\n"
                                   b"connection: keep-alive\r\n"))

    server = await serve(handler)
    client = transport()
    resp = await client.send("POST", server.url + "/fal-ai/flux/dev", {}, b'{"p":"cat"}',
                             stream=False)
    assert await resp.read(100) == b"{}"
    assert got[0].endswith(b"content-length: 11\r\n\r\n{\"p\":\"cat\"}")
    names = [name for name, _ in resp.headers]
    assert b"x-fal-request-id" in names
    assert b"set-cookie" not in names and b"connection" not in names
    assert b"content-length" not in names


async def test_chunked_and_close_delimited_bodies(serve, transport) -> None:
    async def chunked(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def until_close(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        conn.writer.close()

    client = transport()
    for handler, expected in ((chunked, b"hello world"), (until_close, b"all of it")):
        server = await serve(handler)
        resp = await client.send("GET", server.url + "/", {}, None, stream=False)
        assert await resp.read(100) == expected


async def test_a_response_over_the_limit_is_refused_and_its_connection_dropped(
    serve, transport
) -> None:
    async def big(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(b"x" * 5000))

    async def big_chunks(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(10):
            await conn.reply(b"3e8\r\n" + b"y" * 1000 + b"\r\n")

    client = transport()
    for handler in (big, big_chunks):
        server = await serve(handler)
        resp = await client.send("GET", server.url + "/", {}, None, stream=False)
        with pytest.raises(UpstreamError) as info:
            await resp.read(4096)
        assert info.value.kind == "too_large"
        await asyncio.wait_for(server.closed_by_client.wait(), 5)


async def test_timeouts_and_unreachable_upstreams(serve, transport) -> None:
    async def silent(conn: Conn) -> None:
        await conn.request()
        await asyncio.sleep(5)

    server = await serve(silent)
    client = transport(first_byte_timeout=0.2)
    with pytest.raises(UpstreamError) as info:
        await client.send("POST", server.url + "/", {}, b"{}", stream=False)
    assert (info.value.kind, info.value.sent) == ("timeout", True)

    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(UpstreamError) as info:
        await client.send("POST", f"http://127.0.0.1:{port}/", {}, b"{}", stream=False)
    assert (info.value.kind, info.value.sent) == ("unreachable", False)


async def test_a_header_with_a_line_break_is_never_sent(serve, transport) -> None:
    async def handler(conn: Conn) -> None:
        server.requests.append(await conn.request())

    server = await serve(handler)
    client = transport()
    with pytest.raises(UpstreamError) as info:
        await client.send("GET", server.url + "/", {"x-a": "1\r\nauthorization: x"}, None,
                          stream=False)
    assert info.value.sent is False
    await asyncio.sleep(0.05)
    assert server.requests == []


async def test_an_idle_connection_the_server_closed_is_not_reused(serve, transport) -> None:
    async def once(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(b"{}"))  # keep-alive by default, then closed by the server

    server = await serve(once)
    client = transport()
    first = await client.send("GET", server.url + "/", {}, None, stream=False)
    assert await first.read(100) == b"{}"
    await asyncio.sleep(0.1)
    second = await client.send("GET", server.url + "/", {}, None, stream=False)
    assert await second.read(100) == b"{}"
    assert server.connections == 2


async def test_streams_each_chunk_as_it_arrives_and_closing_drops_the_upstream(
    serve, transport
) -> None:
    more = asyncio.Event()

    async def sse(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
        await conn.reply(b"f\r\ndata: {\"a\":1}\n\n\r\n")
        await more.wait()
        await conn.reply(b"f\r\ndata: {\"a\":2}\n\n\r\n")

    server = await serve(sse)
    client = transport()
    resp = await client.send("GET", server.url + "/status/stream", {}, None, stream=True)
    chunks = resp.iter_chunks()
    assert await asyncio.wait_for(anext(chunks), 2) == b'data: {"a":1}\n\n'
    more.set()  # the second event exists only after the first was received
    assert await asyncio.wait_for(anext(chunks), 2) == b'data: {"a":2}\n\n'
    await chunks.aclose()
    await resp.aclose()
    await asyncio.wait_for(server.closed_by_client.wait(), 5)


async def test_an_idle_stream_ends_after_the_idle_timeout(serve, transport) -> None:
    async def quiet(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")

    server = await serve(quiet)
    client = transport(stream_idle_timeout=0.2)
    resp = await client.send("GET", server.url + "/", {}, None, stream=True)
    assert [chunk async for chunk in resp.iter_chunks()] == []
    await asyncio.wait_for(server.closed_by_client.wait(), 5)


async def test_the_pool_size_bounds_open_connections(serve, transport) -> None:
    async def slow(conn: Conn) -> None:
        while await conn.request():
            await asyncio.sleep(0.05)
            await conn.reply(ok(b"{}"))

    server = await serve(slow)
    client = transport(pool_size=2)

    async def one() -> bytes:
        resp = await client.send("GET", server.url + "/", {}, None, stream=False)
        return await resp.read(100)

    assert await asyncio.gather(*(one() for _ in range(6))) == [b"{}"] * 6
    assert server.most_open == 2


async def test_informational_responses_are_skipped(serve, transport) -> None:
    async def early_hints(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + ok(b'{"ok":1}'))

    server = await serve(early_hints)
    client = transport()
    resp = await client.send("GET", server.url + "/", {}, None, stream=False)
    assert resp.status == 200
    assert await resp.read(100) == b'{"ok":1}'
    assert (b"link", b"</a>") not in resp.headers


async def test_https_upstreams_are_verified(serve, transport) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reply(ok(b'{"tls":true}'))

    server = await serve(handler, server_context)
    url = f"https://127.0.0.1:{server.port}/x"
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    client = transport(ssl_context=trusting)
    default = transport()
    resp = await client.send("GET", url, {}, None, stream=False)
    assert await resp.read(100) == b'{"tls":true}'
    with pytest.raises(UpstreamError) as info:  # our test CA is not a system CA
        await default.send("GET", url, {}, None, stream=False)
    assert (info.value.kind, info.value.sent) == ("unreachable", False)


async def test_an_endless_response_head_is_refused(serve, transport) -> None:
    async def huge_head(conn: Conn) -> None:
        await conn.request()
        await conn.reply(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):
            await conn.reply(b"x-pad-%d: %s\r\n" % (i, b"v" * 100))

    server = await serve(huge_head)
    client = transport()
    with pytest.raises(UpstreamError) as info:
        await client.send("GET", server.url + "/", {}, None, stream=False)
    assert info.value.kind == "failed"
    await asyncio.wait_for(server.closed_by_client.wait(), 5)


async def test_bytes_sent_on_an_idle_connection_retire_it(serve, transport) -> None:
    async def chatty(conn: Conn) -> None:
        while await conn.request():
            await conn.reply(ok(b"{}") + b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{\"bad\":1}")

    server = await serve(chatty)
    client = transport()
    for _ in range(2):
        resp = await client.send("GET", server.url + "/", {}, None, stream=False)
        assert await resp.read(100) == b"{}"  # never the stray response
        await asyncio.sleep(0.05)
    assert server.connections == 2
