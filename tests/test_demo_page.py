"""The demo page is served by the standalone app when enabled, with a config from settings."""

from __future__ import annotations

import httpx

from tests.fakes.fal_upstream import FakeFal
from tests.support import proxy_settings, running_proxy


def test_demo_page_off_by_default_in_hosted_mode(fake_fal: FakeFal) -> None:
    with running_proxy(proxy_settings(fake_fal)) as server:
        assert httpx.get(f"{server.url}/demo/").status_code == 404
        assert httpx.get(f"{server.url}/demo/config.json").status_code == 404


def test_demo_page_served_with_config(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, demo={"page": True}, server={"route": "/fal"})
    with running_proxy(settings) as server:
        root = httpx.get(f"{server.url}/")
        assert root.status_code == 307 and root.headers["location"] == "/demo/"
        page = httpx.get(f"{server.url}/demo/")
        assert page.status_code == 200 and "fal-client.js" in page.text
        config = httpx.get(f"{server.url}/demo/config.json").json()
        assert config["proxyUrl"] == "/fal" and config["mode"] == "hosted"
        bundle = httpx.get(f"{server.url}/demo/fal-client.js")
        assert bundle.status_code == 200 and "1.10.1" in bundle.text[:400]
    assert fake_fal.records == []
