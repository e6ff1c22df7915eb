"""README's plain HTML/JS sample, verbatim, in Chromium against a mounted proxy in demo mode.

The sample is cut out of README.md, so the snippet a reader copies is the one that is tested.
The host app is README's Starlette sample (minus the login): `FalProxy` mounted at the proxy
route, its media app beside it, and the shipped client bundle served as a static file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from proxy import FalProxy
from proxy.demo_page import STATIC_DIR
from tests.browser.conftest import REPO_ROOT
from tests.browser.test_demo_page_local import demo_settings
from tests.fakes.server import ServerHandle

pytestmark = pytest.mark.browser


def readme_frontend_sample() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("**Frontend**"):]
    match = re.search(r"```html\n(.*?)```", section, re.S)
    assert match, "README's **Frontend** paragraph has no ```html sample"
    return match.group(1)


def test_readme_html_sample_generates_an_image(
    tmp_path: Path, new_page: Callable[..., Page], console_errors: Callable[[Page], list[str]],
) -> None:
    html = ("<!doctype html><html><head><link rel=\"icon\" href=\"data:,\"></head>"
            f"<body>{readme_frontend_sample()}</body></html>")

    async def sample(request: Request) -> HTMLResponse:
        return HTMLResponse(html)

    settings = demo_settings(tmp_path, 0.0)
    proxy = FalProxy(settings)
    assert proxy.media_app is not None
    app = Starlette(routes=[
        Route("/", sample),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR)),
        Mount("/api/fal/proxy", app=proxy),
        Mount(settings.local.path, app=proxy.media_app),
    ])
    with ServerHandle(app) as server:
        page = new_page()
        page.goto(f"{server.url}/")
        image = page.locator("img")
        expect(image).to_be_visible(timeout=15_000)
        page.wait_for_function(
            "() => { const i = document.querySelector('img');"
            " return i.complete && i.naturalWidth === 1024 && i.naturalHeight === 768; }"
        )
        assert (image.get_attribute("src") or "").startswith(f"{server.url}/fal-local/")
        assert console_errors(page) == []
