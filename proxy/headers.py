"""Which headers cross the proxy, in each direction. Deny by default."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["filter_response_headers", "forward_request_headers"]

# Never passed back to the client: hop-by-hop (RFC 9110 §7.6.1), cookies from fal, and what
# the server in front of us sets itself (length is recomputed, server/date are its own).
_DROP_RESPONSE = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"set-cookie",
        b"set-cookie2", b"content-length", b"server", b"date", b"alt-svc",
    }
)


def forward_request_headers(
    headers: Iterable[tuple[bytes, bytes]], allowed: frozenset[bytes]
) -> dict[str, str]:
    """The caller's headers that may go upstream: only names on the allowlist, first value wins.

    Authorization, Cookie and x-fal-target-url can never be on the allowlist (settings refuse).
    """
    out: dict[str, str] = {}
    for name, value in headers:
        if name in allowed:
            key = name.decode("latin-1")
            if key not in out:
                out[key] = value.decode("latin-1")
    return out


def filter_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop, cookies and length/server/date."""
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower not in _DROP_RESPONSE:
            out.append((lower, value))
    return out
