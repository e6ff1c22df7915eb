"""CSRF: a caller known by a cookie must prove its writes come from an allowed page.

Browsers attach cookies to cross-site requests; they also always send `Origin` on them (and
`Sec-Fetch-Site`, which page scripts cannot forge). So a state-changing request from a caller
identified by a cookie needs an allowed `Origin`, the proxy's own origin, or
`Sec-Fetch-Site: same-origin`. Bearer-token and address callers carry no ambient credential.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..context import ProxyRequest
from ..errors import ProxyError

__all__ = ["CsrfGuard"]


class CsrfGuard:
    """The authorize check for writes (POST, PUT) by cookie-identified callers."""

    def __init__(self, origins: Iterable[str], *, host_user: bool) -> None:
        self._origins = frozenset(origins)
        self._vias = frozenset({"cookie", "host_user"} if host_user else {"cookie"})

    def __call__(self, request: ProxyRequest) -> None:
        caller = request.caller
        if request.method == "GET" or caller is None:
            return
        if caller.claims.get("via") not in self._vias:
            return
        if request.header(b"sec-fetch-site") == "same-origin":
            return
        origin = request.header(b"origin")
        if origin and (origin in self._origins or _is_own_origin(origin, request)):
            return
        raise ProxyError(
            403,
            "cross-site request refused: this caller is identified by a cookie, so writes "
            "need an allowed Origin (policy.cors.origins) or a same-origin page",
            error_type="csrf",
        )


def _is_own_origin(origin: str, request: ProxyRequest) -> bool:
    host = request.header(b"host")
    if not host:
        return False
    _scheme, sep, rest = origin.partition("://")
    return bool(sep) and rest.lower() == host.lower()
