"""The identify stage: ask each configured resolver in turn; the first that answers wins."""

from __future__ import annotations

import ipaddress
import secrets as _random
import time
from collections.abc import Callable, Sequence
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..context import Caller, ProxyRequest
from ..errors import ProxyError
from .settings import IdentitySettings
from .tokens import SALT_COOKIE, TokenError, TokenVerifier, serializer

__all__ = ["Resolver", "build_identify", "client_address"]

Resolver = Callable[[ProxyRequest], Caller | None]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # 192.0.2.1:4711
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_chain(request: ProxyRequest) -> list[str]:
    """Hop addresses from X-Forwarded-For, else RFC 7239 Forwarded, nearest last."""
    hops: list[str] = []
    for name, value in request.headers:
        if name == b"x-forwarded-for":
            hops += [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
    if hops:
        return hops
    for name, value in request.headers:
        if name == b"forwarded":
            for element in value.decode("latin-1").split(","):
                for pair in element.split(";"):
                    key, _, val = pair.strip().partition("=")
                    if key.lower() == "for" and val:
                        hops.append(val)
    return hops


def client_address(request: ProxyRequest, trusted: Sequence[Network]) -> str:
    """The caller's address. Forwarding headers count only when the peer is a trusted proxy,
    and then only up to the first hop that is not itself a trusted proxy."""
    peer = request.client_host
    if not trusted:
        return peer
    ip = _parse_ip(peer)
    if ip is None or not any(ip in net for net in trusted):
        return peer
    address = peer
    for hop in reversed(_forwarded_chain(request)):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            break
        address = str(hop_ip)
        if not any(hop_ip in net for net in trusted):
            break
    return address


def _user_identity(user: Any) -> str | None:
    for attr in ("identity", "username", "id", "display_name"):
        try:
            value = getattr(user, attr, None)
        except NotImplementedError:  # starlette's BaseUser.identity
            continue
        if value is not None and str(value):
            return str(value)
    return None


class _Chain:
    """Resolvers built once from settings; `__call__` is the pipeline's identify stage."""

    def __init__(self, settings: IdentitySettings) -> None:
        self._settings = settings
        self._trusted: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies
        ]
        self._cookie: URLSafeTimedSerializer | None = None
        if settings.secrets:
            self._cookie = serializer(settings.secrets, SALT_COOKIE)
        table: dict[str, Resolver] = {
            "host_user": self.host_user,
            "bearer": self.bearer,
            "cookie": self.cookie,
            "address": self.address,
        }
        self._resolvers = [table[name] for name in settings.resolvers]
        self._tokens = TokenVerifier(settings.secrets or ["unused"], settings.max_token_ttl)
        self._bearers: dict[tuple[bytes, str], tuple[Caller, float]] = {}  # see `bearer`
        self._anonymous = any(n in ("cookie", "address") for n in settings.resolvers)

    def __call__(self, request: ProxyRequest) -> None:
        for resolve in self._resolvers:
            caller = resolve(request)
            if caller is not None:
                request.caller = caller
                return
        raise ProxyError(
            401,
            "authentication required: sign in, or send a token from your app "
            "(Authorization: Bearer <token>)",
            headers={"www-authenticate": 'Bearer realm="flux-proxy"'},
        )

    def host_user(self, request: ProxyRequest) -> Caller | None:
        """`request.user` set by the host app's AuthenticationMiddleware."""
        user = request.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        ident = _user_identity(user)
        if ident is None:
            return None
        return Caller(id=f"user:{ident}", kind="user", address=self._addr(request),
                      claims={"via": "host_user"})

    def bearer(self, request: ProxyRequest) -> Caller | None:
        """`Authorization: Bearer <token>` or `Key <token>` (the fal client's credentials)."""
        raw = None
        for name, value in request.headers:  # (`request.header`, without decoding)
            if name == b"authorization":
                raw = value
                break
        if not raw or not self._settings.secrets:  # no secret: no token can be ours
            return None
        # (no trusted proxy: the peer, as client_address would answer, two calls fewer)
        address = client_address(request, self._trusted) if self._trusted else request.client_host
        # The browser sends the same token with every poll: its caller is built once (per
        # address), and used until the token expires.
        known = self._bearers.get((raw, address))
        if known is not None and time.time() < known[1]:
            return known[0]
        header = raw.decode("latin-1")
        scheme, _, token = header.strip().partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme not in ("bearer", "key") or not token:
            return None
        try:
            user, until = self._tokens.verify_until(token)
        except TokenError as exc:
            if scheme == "key" and exc.reason == "invalid":
                return None  # a fal key pasted into the client: ignored, never forwarded
            raise ProxyError(
                401, f"bearer token is {exc.reason}",
                headers={"www-authenticate": f'Bearer error="invalid_token", '
                                             f'error_description="token {exc.reason}"'},
            ) from None
        caller = Caller(id=f"user:{user}", kind="user", address=address,
                        claims={"via": "bearer"})
        if len(self._bearers) >= 4096:
            self._bearers.pop(next(iter(self._bearers)))  # oldest first
        self._bearers[(raw, address)] = (caller, until)
        return caller

    def cookie(self, request: ProxyRequest) -> Caller | None:
        """A signed anonymous id in an HttpOnly cookie, set on first contact."""
        assert self._cookie is not None  # settings refuse `cookie` without secrets
        s = self._settings
        raw = _read_cookie(request.header(b"cookie"), s.cookie_name)
        cid: str | None = None
        if raw:
            try:
                value = self._cookie.loads(raw, max_age=s.cookie_max_age)
                cid = value if isinstance(value, str) else None
            except BadSignature:
                cid = None
        if cid is None:
            cid = _random.token_urlsafe(16)
            request.response_headers.append((b"set-cookie", self._set_cookie(request, cid)))
        return Caller(id=f"anon:{cid}", kind="anonymous", address=self._addr(request),
                      claims={"via": "cookie"})

    def address(self, request: ProxyRequest) -> Caller | None:
        """The client address (forwarding headers only from trusted proxies)."""
        addr = self._addr(request)
        if not addr:
            return None
        return Caller(id=f"ip:{addr}", kind="address", address=addr, claims={"via": "address"})

    def _addr(self, request: ProxyRequest) -> str:
        return client_address(request, self._trusted)

    def _set_cookie(self, request: ProxyRequest, cid: str) -> bytes:
        assert self._cookie is not None
        s = self._settings
        value = self._cookie.dumps(cid)
        secure = s.cookie_secure == "always" or (
            s.cookie_secure == "auto" and request.scope.get("scheme") == "https"
        )
        parts = [f"{s.cookie_name}={value}", "Path=/", f"Max-Age={s.cookie_max_age}",
                 "HttpOnly", "SameSite=Lax"]
        if secure:
            parts.append("Secure")
        return "; ".join(parts).encode("latin-1")


def _read_cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip('"')
    return None


def build_identify(settings: IdentitySettings) -> Callable[[ProxyRequest], Any]:
    """The identify stage for these settings."""
    return _Chain(settings)
