"""CORS over plain HTTP: preflights, exposed headers, and the default of no CORS at all."""

from __future__ import annotations

import httpx
import pytest

from proxy.settings import ConfigError
from tests.fakes.fal_upstream import FakeFal
from tests.support import proxy_settings, proxy_url, running_proxy

APP = "https://app.example.com"
FAL_CLIENT_HEADERS = ("content-type,x-fal-target-url,x-fal-queue-priority,x-fal-runner-hint,"
                      "authorization,x-fal-store-io")


def _preflight(url: str, origin: str, method: str = "POST",
               headers: str = FAL_CLIENT_HEADERS) -> httpx.Response:
    return httpx.options(url, headers={"origin": origin, "access-control-request-method": method,
                                       "access-control-request-headers": headers})


def test_preflight_and_responses(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, policy={"cors": {"origins": [APP]}})
    with running_proxy(settings) as server:
        url = proxy_url(server)
        ok = _preflight(url, APP)
        assert ok.status_code == 204
        assert ok.headers["access-control-allow-origin"] == APP
        assert ok.headers["access-control-allow-methods"] == "GET, POST, PUT"
        allowed = {h.strip() for h in ok.headers["access-control-allow-headers"].split(",")}
        assert set(FAL_CLIENT_HEADERS.split(",")) <= allowed
        assert "access-control-allow-credentials" not in ok.headers
        assert ok.headers["vary"] == "Origin"
        for origin, method, headers in ((("https://evil.example", "POST", "content-type")),
                                        (APP, "DELETE", "content-type"),
                                        (APP, "POST", "x-secret")):
            refused = _preflight(url, origin, method, headers)
            assert refused.status_code == 403, (origin, method, headers)
            assert "access-control-allow-origin" not in refused.headers

        # Real answers, refusals included, carry the CORS headers for an allowed origin only.
        def submit(origin: str, body: bytes) -> httpx.Response:
            return httpx.post(url, content=body, headers={
                "origin": origin, "content-type": "application/json",
                "x-fal-target-url": "https://queue.fal.run/fal-ai/flux/dev"})

        good = submit(APP, b'{"prompt":"a"}')
        assert good.status_code == 200 and good.headers["access-control-allow-origin"] == APP
        exposed = good.headers["access-control-expose-headers"]
        assert "x-fal-request-id" in exposed and "x-fal-request-timeout-type" in exposed
        bad = submit(APP, b'{"prompt":"a","num_images":99}')
        assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == APP
        foreign = submit("https://evil.example", b'{"prompt":"a"}')
        assert "access-control-allow-origin" not in foreign.headers
    assert len(fake_fal.records) == 2


def test_no_cors_by_default(fake_fal: FakeFal) -> None:
    with running_proxy(proxy_settings(fake_fal)) as server:
        r = _preflight(proxy_url(server), APP)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    assert fake_fal.records == []


@pytest.mark.parametrize("origin", ["*", "https://app.example.com/", "app.example.com",
                                    "https://app.example.com/path"])
def test_only_exact_origins_are_accepted(origin: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.cors\.origins\[0\]"):
        proxy_settings(None, policy={"cors": {"origins": [origin]}})
