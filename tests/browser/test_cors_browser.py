"""CORS and CSRF in a real headless Chromium page that uses the real fal client cross-origin.

The page is served from one origin (http://localhost:P) and calls the proxy on another
(http://localhost:Q); a foreign page is the same file served as http://127.0.0.1:P.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from proxy.identity import issue_token
from tests.browser.bundle import bundle_fal_client
from tests.fakes.fal_upstream import FakeFal
from tests.fakes.server import ServerHandle
from tests.js_client import JS_DIR
from tests.support import proxy_settings, running_proxy

pytestmark = pytest.mark.browser

PAGE = Path(__file__).parent / "page.html"
INPUT = {"prompt": "a glass teapot", "seed": 11}


def _page_app() -> Starlette:
    script = bundle_fal_client(JS_DIR / "node_modules")

    async def index(request: Any) -> FileResponse:
        return FileResponse(PAGE)

    async def client(request: Any) -> Response:
        return Response(script, media_type="text/javascript")

    return Starlette(routes=[Route("/", index), Route("/fal-client.js", client)])


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[str, str]]:
    """(allowed page origin, foreign page origin): one static server, two origins."""
    with ServerHandle(_page_app()) as server:
        yield f"http://localhost:{server.port}", f"http://127.0.0.1:{server.port}"


def _run(browser: Any, page_origin: str, **options: Any) -> dict[str, Any]:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(page_origin + "/")
        out: dict[str, Any] = page.evaluate("(o) => window.runFal(o)", {"input": INPUT,
                                                                        **options})
        return out
    finally:
        context.close()


def test_cross_origin_page_with_bearer_token(
    browser: Any, pages: tuple[str, str], fake_fal: FakeFal
) -> None:
    allowed, foreign = pages
    settings = proxy_settings(fake_fal, identity={"resolvers": ["bearer"]},
                              policy={"cors": {"origins": [allowed]}})
    token = issue_token("alice", 600, settings)
    with running_proxy(settings) as server:
        proxy = f"http://localhost:{server.port}/api/fal/proxy"
        out = _run(browser, allowed, proxy=proxy, credentials=token)
        assert out["ok"], out
        assert out["data"] == fake_fal.flux_output(INPUT)
        assert out["requestId"]  # x-fal-request-id is exposed to the page
        calls = len(fake_fal.records)
        assert calls >= 3  # submit, status..., result
        # The same page on a foreign origin: the preflight is refused, nothing is sent.
        blocked = _run(browser, foreign, proxy=proxy, credentials=token, abortAfter=800)
        assert not blocked["ok"] and blocked["status"] is None, blocked
        assert "Failed to fetch" in blocked["fetchErrors"][0]
        assert len(fake_fal.records) == calls


def test_cookie_identity_across_origins(
    browser: Any, pages: tuple[str, str], fake_fal: FakeFal
) -> None:
    """Anonymous cookie callers: the allowed (same-site) page works with credentials, the
    foreign page's request never reaches fal."""
    allowed, foreign = pages
    settings = proxy_settings(fake_fal, identity={"resolvers": ["cookie"]}, policy={
        "cors": {"origins": [allowed], "allow_credentials": True}})
    with running_proxy(settings) as server:
        proxy = f"http://localhost:{server.port}/api/fal/proxy"
        out = _run(browser, allowed, proxy=proxy, include=True)
        assert out["ok"], out  # one cookie carried submit, status and result (ownership)
        calls = len(fake_fal.records)
        blocked = _run(browser, foreign, proxy=proxy, include=True, abortAfter=800)
        assert not blocked["ok"] and "Failed to fetch" in blocked["fetchErrors"][0], blocked
        assert len(fake_fal.records) == calls
