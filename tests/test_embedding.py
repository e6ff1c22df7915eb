"""The proxy inside existing apps: mounted, and as middleware, in Starlette and FastAPI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route

from proxy import FalProxy, FalProxyMiddleware
from tests.fakes.fal_upstream import FakeFal
from tests.fakes.server import ServerHandle
from tests.js_client import run_flow
from tests.support import FAKE_KEY, proxy_settings

INPUT = {"prompt": "a fox", "seed": 3}


async def _slow_chunks() -> AsyncIterator[bytes]:
    for i in range(3):
        yield f"chunk-{i}\n".encode()
        await asyncio.sleep(0.3)


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("host app", headers={"x-host": "1", "set-cookie": "host=1"})


async def slow(request: Request) -> StreamingResponse:
    return StreamingResponse(_slow_chunks(), media_type="text/plain")


def _starlette_mounted(fake: FakeFal) -> Starlette:
    return Starlette(routes=[Route("/", home), Route("/slow", slow),
                             Mount("/api/fal/proxy", app=FalProxy(proxy_settings(fake)))])


def _starlette_middleware(fake: FakeFal) -> Starlette:
    return Starlette(routes=[Route("/", home), Route("/slow", slow)],
                     middleware=[Middleware(FalProxyMiddleware, settings=proxy_settings(fake))])


def _fastapi_mounted(fake: FakeFal) -> FastAPI:
    app = FastAPI()
    app.add_api_route("/", home)
    app.add_api_route("/slow", slow)
    app.mount("/api/fal/proxy", FalProxy(proxy_settings(fake)))
    return app


def _fastapi_middleware(fake: FakeFal) -> FastAPI:
    app = FastAPI()

    @app.get("/items")
    async def items() -> JSONResponse:
        return JSONResponse({"items": [1, 2]})

    app.add_api_route("/", home)
    app.add_api_route("/slow", slow)
    app.add_middleware(FalProxyMiddleware, settings=proxy_settings(fake))
    return app


BUILDERS = {
    "starlette-mount": _starlette_mounted,
    "starlette-middleware": _starlette_middleware,
    "fastapi-mount": _fastapi_mounted,
    "fastapi-middleware": _fastapi_middleware,
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_real_client_through_embedded_proxy(fake_fal: FakeFal, kind: str) -> None:
    with ServerHandle(BUILDERS[kind](fake_fal)) as server:
        url = f"{server.url}/api/fal/proxy"
        out = run_flow("subscribe-streaming", url, input=INPUT, logs=True)
        assert out["ok"], out
        assert out["result"] == fake_fal.flux_output(INPUT)
        stream = run_flow("stream", url, input=INPUT)
        assert stream["ok"] and stream["result"] == fake_fal.flux_output(INPUT)
        # The host app still answers its own routes, untouched.
        home_r = httpx.get(server.url + "/")
        assert home_r.text == "host app" and home_r.headers["x-host"] == "1"
        assert home_r.headers["set-cookie"] == "host=1"
    assert all(r.headers["authorization"] == f"Key {FAKE_KEY}"
               for r in fake_fal.records if r.host != "direct")


async def test_middleware_does_not_buffer_host_responses(fake_fal: FakeFal) -> None:
    with ServerHandle(_starlette_middleware(fake_fal)) as server:
        arrivals = []
        async with httpx.AsyncClient() as client:
            t0 = time.monotonic()
            async with client.stream("GET", server.url + "/slow") as r:
                async for line in r.aiter_lines():
                    if line:
                        arrivals.append((line, time.monotonic() - t0))
        assert [a[0] for a in arrivals] == ["chunk-0", "chunk-1", "chunk-2"]
        assert arrivals[0][1] < arrivals[-1][1] - 0.4  # first chunk came before the last
    assert fake_fal.records == []


def test_middleware_passes_other_paths_and_methods(fake_fal: FakeFal) -> None:
    with ServerHandle(_fastapi_middleware(fake_fal)) as server:
        assert httpx.get(server.url + "/items").json() == {"items": [1, 2]}
        # A path that merely starts with the route is the host app's, not the proxy's.
        assert httpx.get(server.url + "/api/fal/proxy/x").status_code == 404
        refused = httpx.post(server.url + "/api/fal/proxy", content=b"{}")
        assert refused.status_code == 400 and "x-fal-target-url" in refused.json()["detail"]
    assert fake_fal.records == []


def test_middleware_added_to_the_standalone_app_sees_proxy_requests(fake_fal: FakeFal) -> None:
    """create_app answers the proxy route ahead of Starlette's stack only while nothing else
    is in it: middleware a user adds (here, one tagging responses) must see proxy requests."""
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from proxy.app import create_app

    class Tag:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def tagged(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message["headers"], (b"x-tagged", b"1")]
                await send(message)

            await self.app(scope, receive, tagged)

    target = {"x-fal-target-url": "https://queue.fal.run/fal-ai/flux/dev"}
    plain = create_app(proxy_settings(fake_fal))
    tagged_app = create_app(proxy_settings(fake_fal))
    tagged_app.add_middleware(Tag)
    for app, tagged in ((plain, False), (tagged_app, True)):
        with ServerHandle(app) as server:
            resp = httpx.post(server.url + "/api/fal/proxy", headers=target, json=INPUT)
        assert resp.status_code == 200, resp.text
        assert ("x-tagged" in resp.headers) is tagged
    assert len(fake_fal.requests(method="POST")) == 2
