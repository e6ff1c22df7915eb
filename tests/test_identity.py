"""Who is calling: each resolver over plain HTTP and with the real fal client."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Mount

from proxy import FalProxy, FalProxyMiddleware
from proxy.app import create_app
from proxy.cli import main
from proxy.context import ProxyRequest
from proxy.identity import issue_token
from proxy.identity.resolvers import client_address
from proxy.identity.tokens import SALT_BEARER, SALT_COOKIE, serializer
from proxy.settings import ConfigError, Settings
from proxy.target import parse_target
from tests.fakes.fal_upstream import FakeFal
from tests.fakes.server import ServerHandle
from tests.js_client import run_flow
from tests.support import FAKE_KEY, TEST_SECRET, proxy_settings, proxy_url, running_proxy

SUBMIT = "https://queue.fal.run/fal-ai/flux/dev"
INPUT = {"prompt": "a red kite", "seed": 2}
OLD_SECRET = "old-signing-secret-abcdefghijkl"


def _bearer_settings(fake: FakeFal, **identity: Any) -> Settings:
    return proxy_settings(fake, identity={"resolvers": ["bearer"], **identity})


def _submit(url: str, **headers: str) -> httpx.Response:
    return httpx.post(url, content=b'{"prompt":"a cat"}', timeout=10, follow_redirects=True,
                      headers={
        "x-fal-target-url": SUBMIT, "content-type": "application/json", **headers})


def _status(url: str, rid: str, **headers: str) -> httpx.Response:
    return httpx.get(url, timeout=10, headers={
        "x-fal-target-url": f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status",
        **headers})


def test_unidentified_caller_is_401_by_default(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, strict=True)  # the shipped defaults
    assert settings.identity.resolvers == ("host_user", "bearer")
    with running_proxy(settings) as server:
        url = proxy_url(server)
        r = _submit(url)
        assert r.status_code == 401 and "authentication required" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        # Spoofed forwarding headers and a fal key in the client change nothing.
        assert _submit(url, **{"x-forwarded-for": "10.0.0.1",
                               "authorization": "Key some-fal-key"}).status_code == 401
        out = run_flow("run", url, input=INPUT)
        assert not out["ok"] and out["error"]["status"] == 401
    assert fake_fal.records == []


def test_bearer_token_plain_http_and_real_client(fake_fal: FakeFal) -> None:
    settings = _bearer_settings(fake_fal)
    token = issue_token("alice", 3600, settings)
    with running_proxy(settings) as server:
        url = proxy_url(server)
        r = _submit(url, authorization=f"Bearer {token}")
        assert r.status_code == 200, r.text
        # The real client sends its `credentials` as `Authorization: Key <token>`.
        out = run_flow("subscribe-polling", url, input=INPUT, credentials=token)
        assert out["ok"], out
        assert out["result"] == fake_fal.flux_output(INPUT)
        # Without the token the same client is refused.
        refused = run_flow("run", url, input=INPUT)
        assert not refused["ok"] and refused["error"]["status"] == 401
    # Our token never travels upstream: fal only ever sees the server key.
    assert fake_fal.records
    assert all(rec.headers["authorization"] == f"Key {FAKE_KEY}" for rec in fake_fal.records)


def _expired_token(secret: str, user: str) -> str:
    """Signed correctly, with an expiry in the past (no sleeping in tests)."""
    token: str = serializer([secret], SALT_BEARER).dumps({"u": user, "e": int(time.time()) - 5})
    return token


def test_token_expiry_rotation_and_purpose(fake_fal: FakeFal) -> None:
    settings = _bearer_settings(fake_fal, secrets=[OLD_SECRET, TEST_SECRET])
    with running_proxy(settings) as server:
        url = proxy_url(server)

        def status_of(token: str) -> tuple[int, str]:
            r = _submit(url, authorization=f"Bearer {token}")
            return r.status_code, r.json().get("detail", "") if r.status_code != 200 else ""

        # Rotation: tokens signed with the old secret still verify; new ones use the newest.
        assert status_of(issue_token("u1", 60, [OLD_SECRET]))[0] == 200
        fresh = issue_token("u1", 60, settings)
        assert status_of(fresh)[0] == 200
        assert status_of(issue_token("u1", 60, [TEST_SECRET]))[0] == 200
        # Expired, forged, another purpose's signature, a retired secret: all 401.
        assert status_of(_expired_token(TEST_SECRET, "u1")) == (401, "bearer token is expired")
        assert status_of(fresh[:-2] + "xx") == (401, "bearer token is invalid")
        cookie_value = serializer([TEST_SECRET], SALT_COOKIE).dumps({"u": "u1", "e": 2**40})
        assert status_of(cookie_value) == (401, "bearer token is invalid")
        retired = issue_token("u1", 60, ["a-secret-nobody-uses-any-more"])
        assert status_of(retired) == (401, "bearer token is invalid")
    assert len(fake_fal.records) == 3


def test_cli_token_issue(fake_fal: FakeFal, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLUX_PROXY__IDENTITY__SECRETS", f'["{TEST_SECRET}"]')
    assert main(["token", "issue", "--user", "carol", "--ttl", "1h"]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "issue", "--user", "carol", "--ttl", "soon"]) == 2
    assert main(["token", "issue", "--user", "carol", "--ttl", "400d"]) == 2  # > max_token_ttl
    with running_proxy(_bearer_settings(fake_fal)) as server:
        assert _submit(proxy_url(server), authorization=f"Bearer {token}").status_code == 200


def test_cookie_resolver_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match=r"identity\.secrets"):
        proxy_settings(None, identity={"resolvers": ["cookie"], "secrets": []})


# --- anonymous: cookie + address ----------------------------------------------------------


def test_anonymous_cookie_identity(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, identity={"resolvers": ["cookie"]})
    with running_proxy(settings) as server, httpx.Client(timeout=10) as browser:
        url = proxy_url(server)
        own = server.url  # the proxy's own origin: a same-origin page
        first = browser.post(url, content=b'{"prompt":"a"}', headers={
            "x-fal-target-url": SUBMIT, "content-type": "application/json", "origin": own})
        assert first.status_code == 200, first.text
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("flux_anon=")
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http on loopback; https gets Secure
        rid = first.json()["request_id"]
        # The same browser (cookie jar) is the same caller: it may read its request...
        again = browser.get(url, headers={
            "x-fal-target-url": f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status"})
        assert again.status_code in (200, 202) and "set-cookie" not in again.headers
        # ...another browser on the same address may not, and gets a cookie of its own.
        other = _status(url, rid)
        assert other.status_code == 404 and other.headers["set-cookie"] != cookie
        # A tampered cookie is a new anonymous caller, not an error.
        forged = _status(url, rid, cookie="flux_anon=" + cookie.split(";")[0][10:-3] + "abc")
        assert forged.status_code == 404 and "set-cookie" in forged.headers
    assert len(fake_fal.requests(method="GET")) == 1


def test_cookie_caller_writes_need_an_allowed_origin(fake_fal: FakeFal) -> None:
    """CSRF: a cookie caller's POST/PUT needs an allowed Origin or Sec-Fetch-Site."""
    settings = proxy_settings(fake_fal, identity={"resolvers": ["cookie"]},
                              policy={"cors": {"origins": ["https://app.example.com"]}})
    with running_proxy(settings) as server, httpx.Client(timeout=10) as browser:
        url = proxy_url(server)

        def submit(**headers: str) -> httpx.Response:
            return browser.post(url, content=b'{"prompt":"a"}', headers={
                "x-fal-target-url": SUBMIT, "content-type": "application/json", **headers})

        for headers in ({"origin": "https://evil.example"}, {},
                        {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
            r = submit(**headers)
            assert r.status_code == 403, headers
            assert r.json()["error_type"] == "csrf"
        assert fake_fal.records == []
        assert submit(origin="https://app.example.com").status_code == 200
        assert submit(**{"sec-fetch-site": "same-origin"}).status_code == 200
        assert submit(origin=server.url).status_code == 200  # the proxy's own origin
    assert len(fake_fal.records) == 3


def test_address_identity_ignores_untrusted_forwarding_headers(fake_fal: FakeFal) -> None:
    """An untrusted peer's X-Forwarded-For is ignored; a trusted proxy's is believed."""
    # uvicorn itself believes X-Forwarded-For from 127.0.0.1 unless told not to (the CLI
    # turns that off; so do these servers), which would defeat the check below.
    untrusted = proxy_settings(fake_fal, identity={"resolvers": ["address"]})
    with ServerHandle(create_app(untrusted), proxy_headers=False) as server:
        url = proxy_url(server)
        rid = _submit(url, **{"x-forwarded-for": "203.0.113.7"}).json()["request_id"]
        # Spoofing another address does not make the caller someone else.
        assert _status(url, rid, **{"x-forwarded-for": "198.51.100.9"}).status_code in (200, 202)
        assert _status(url, rid, forwarded="for=198.51.100.9").status_code in (200, 202)

    trusted = proxy_settings(fake_fal, identity={"resolvers": ["address"],
                                                 "trusted_proxies": ["127.0.0.0/8"]})
    with ServerHandle(create_app(trusted), proxy_headers=False) as server:
        url = proxy_url(server)
        rid = _submit(url, **{"x-forwarded-for": "203.0.113.7"}).json()["request_id"]
        same = {"x-forwarded-for": "198.51.100.9, 203.0.113.7"}  # spoofed left part ignored
        assert _status(url, rid, **same).status_code in (200, 202)
        assert _status(url, rid, **{"x-forwarded-for": "198.51.100.9"}).status_code == 404
        assert _status(url, rid, forwarded='for="203.0.113.7:4711"').status_code in (200, 202)
        assert _status(url, rid, forwarded="for=198.51.100.9").status_code == 404


# --- the host app's logged-in user ------------------------------------------------------


class HeaderAuth(AuthenticationBackend):
    """Stands in for the host app's login (session cookie, OAuth, ...)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = conn.headers.get("x-test-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(user)) if user else None


def _fastapi_app(fake: FakeFal) -> FastAPI:
    app = FastAPI()
    app.add_middleware(FalProxyMiddleware, settings=proxy_settings(
        fake, identity={"resolvers": ["host_user"]}))
    app.add_middleware(AuthenticationMiddleware, backend=HeaderAuth())  # outermost: runs first
    return app


def _starlette_mounted(fake: FakeFal) -> Starlette:
    proxy = FalProxy(proxy_settings(fake, identity={"resolvers": ["host_user"]}))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await proxy.aclose()  # mounted apps get no lifespan of their own

    return Starlette(routes=[Mount("/api/fal/proxy", app=proxy)], lifespan=lifespan,
                     middleware=[Middleware(AuthenticationMiddleware, backend=HeaderAuth())])


@pytest.fixture(params=["fastapi-middleware", "starlette-mount"])
def host_app(request: pytest.FixtureRequest, fake_fal: FakeFal) -> Iterator[ServerHandle]:
    build = _fastapi_app if request.param == "fastapi-middleware" else _starlette_mounted
    with ServerHandle(build(fake_fal)) as server:
        yield server


def test_host_app_user(host_app: ServerHandle, fake_fal: FakeFal) -> None:
    url = f"{host_app.url}/api/fal/proxy"
    alice = {"x-test-user": "alice", "origin": host_app.url}  # a page of the host app
    out = run_flow("submit", url, input=INPUT, headers=alice)
    assert out["ok"], out
    rid = out["requestId"]
    assert run_flow("status", url, request_id=rid, headers=alice)["ok"]
    bob = run_flow("status", url, request_id=rid, headers={"x-test-user": "bob"})
    assert not bob["ok"] and bob["error"]["status"] == 404
    anonymous = run_flow("status", url, request_id=rid)
    assert not anonymous["ok"] and anonymous["error"]["status"] == 401
    # Host users usually log in with a cookie: writes from a foreign page are refused.
    evil = _submit(url, **{"x-test-user": "alice", "origin": "https://evil.example"})
    assert evil.status_code == 403
    assert len(fake_fal.requests(method="POST")) == 1
    assert len(fake_fal.requests(method="GET")) == 1


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    ("203.0.113.5", [(b"x-forwarded-for", b"1.1.1.1")], "203.0.113.5"),  # untrusted peer
    ("10.0.0.2", [(b"x-forwarded-for", b"1.1.1.1, 198.51.100.4")], "198.51.100.4"),
    ("10.0.0.2", [(b"x-forwarded-for", b"1.1.1.1, 198.51.100.4, 10.0.0.9")], "198.51.100.4"),
    ("10.0.0.2", [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"198.51.100.4")],
     "198.51.100.4"),
    ("::1", [(b"forwarded", b'for="[2001:db8::7]:4711";proto=https')], "2001:db8::7"),
    ("10.0.0.2", [(b"forwarded", b"for=192.0.2.60:80, for=10.0.0.3")], "192.0.2.60"),
    ("10.0.0.2", [(b"x-forwarded-for", b"not-an-ip")], "10.0.0.2"),
    ("10.0.0.2", [], "10.0.0.2"),
])
def test_client_address_from_trusted_proxies(peer: str, headers: list[tuple[bytes, bytes]],
                                             expected: str) -> None:
    """The address limits and anonymous identity see, behind (or not) a reverse proxy."""
    request = ProxyRequest(scope={"client": (peer, 5000)}, method="GET", headers=headers,
                           target=parse_target("https://fal.run/fal-ai/flux/dev", "POST"))
    assert client_address(request, TRUSTED) == expected


def test_token_verifier_remembers_tokens_but_not_past_their_expiry() -> None:
    from proxy.identity.tokens import TokenError, TokenVerifier

    secrets = ["verifier-secret-0123456789"]
    verifier = TokenVerifier(secrets, max_ttl=3600, cache_size=2)
    short = issue_token("alice", 1.5, secrets)
    assert verifier.verify(short) == "alice"
    assert verifier.verify(short) == "alice"  # remembered
    time.sleep(1.6)
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(short)
    with pytest.raises(TokenError, match="invalid"):
        verifier.verify(short[:-2] + "xx")
    for user in ("a", "b", "c"):  # the cache stays bounded
        assert verifier.verify(issue_token(user, 60, secrets)) == user
    assert len(verifier._cache) <= 2


def test_a_remembered_bearer_caller_lasts_only_as_long_as_its_token() -> None:
    """The identify stage builds a token's caller once per address and reuses it; once the
    token expires the caller is refused, remembered or not."""
    from proxy.errors import ProxyError
    from proxy.identity import build_identify
    from proxy.identity.settings import IdentitySettings

    secrets = ["resolver-secret-0123456789"]
    identify = build_identify(IdentitySettings(resolvers=("bearer",), secrets=tuple(secrets)))

    def identified(token: str, peer: str = "198.51.100.7") -> Any:
        request = ProxyRequest(scope={"client": (peer, 5000)}, method="GET",
                               headers=[(b"authorization", f"Bearer {token}".encode())],
                               target=parse_target("https://fal.run/fal-ai/flux/dev", "POST"))
        identify(request)
        return request.caller

    short = issue_token("alice", 1.5, secrets)
    first = identified(short)
    assert first.id == "user:alice" and first.address == "198.51.100.7"
    assert identified(short) is first  # remembered
    elsewhere = identified(short, "203.0.113.9")
    assert elsewhere.id == "user:alice" and elsewhere.address == "203.0.113.9"
    time.sleep(1.6)
    with pytest.raises(ProxyError) as refused:
        identified(short)
    assert refused.value.status == 401 and "expired" in str(refused.value.detail)


def test_a_bearer_callers_address_is_the_client_behind_a_trusted_proxy() -> None:
    """The address a token's caller carries (what host apps and hooks see) follows the same
    rule as address identity: forwarding headers only from a trusted proxy."""
    from proxy.identity import build_identify
    from proxy.identity.settings import IdentitySettings

    secrets = ("resolver-secret-0123456789",)
    token = issue_token("alice", 60, list(secrets))

    def address(trusted: tuple[str, ...]) -> str:
        identify = build_identify(IdentitySettings(resolvers=("bearer",), secrets=secrets,
                                                   trusted_proxies=trusted))
        request = ProxyRequest(scope={"client": ("10.0.0.2", 5000)}, method="GET",
                               headers=[(b"authorization", f"Bearer {token}".encode()),
                                        (b"x-forwarded-for", b"198.51.100.4")],
                               target=parse_target("https://fal.run/fal-ai/flux/dev", "POST"))
        identify(request)
        assert request.caller is not None and request.caller.id == "user:alice"
        return request.caller.address

    assert address(("10.0.0.0/8",)) == "198.51.100.4"
    assert address(()) == "10.0.0.2"
