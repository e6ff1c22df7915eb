"""CORS for the proxy route: exact origins only, preflights answered before the pipeline.

Every response to an allowed origin (refusals included) gets `Access-Control-Allow-Origin`
and exposes `x-fal-request-id`, without which the fal client's `requestId` is empty. Other
origins get no CORS headers at all, so the browser withholds the answer from the page.
"""

from __future__ import annotations

from ..asgi_types import ASGIApp, Message, Receive, Scope, Send
from ..errors import error_body
from .settings import CorsSettings

__all__ = ["ALLOWED_HEADERS", "Cors"]

ALLOWED_METHODS = ("GET", "POST", "PUT")
# What @fal-ai/client sends (wire protocol §2.6); any other x-fal-* header is allowed too.
ALLOWED_HEADERS = (
    "accept", "authorization", "content-type", "x-fal-target-url", "x-fal-queue-priority",
    "x-fal-runner-hint", "x-fal-request-timeout", "x-fal-object-lifecycle-preference",
    "x-fal-object-lifecycle",
)
EXPOSED = b"x-fal-request-id, x-fal-request-timeout-type, x-fal-error-type"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Cors:
    """ASGI wrapper around the proxy pipeline."""

    def __init__(self, app: ASGIApp, settings: CorsSettings) -> None:
        self.app = app
        self._origins = frozenset(settings.origins)
        self._credentials = settings.allow_credentials
        self._max_age = str(settings.max_age).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin")
        allowed = origin is not None and origin in self._origins
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await self._preflight(scope, send, origin if allowed else None)
            return
        extra: list[tuple[bytes, bytes]] = [(b"vary", b"Origin")]
        if allowed and origin is not None:
            extra += self._allow(origin)
            extra.append((b"access-control-expose-headers", EXPOSED))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allow(self, origin: str) -> list[tuple[bytes, bytes]]:
        headers = [(b"access-control-allow-origin", origin.encode("latin-1"))]
        if self._credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    async def _preflight(self, scope: Scope, send: Send, origin: str | None) -> None:
        method = (_header(scope, b"access-control-request-method") or "").upper()
        asked = [h.strip().lower() for h in
                 (_header(scope, b"access-control-request-headers") or "").split(",") if h.strip()]
        refused = [h for h in asked if h not in ALLOWED_HEADERS and not h.startswith("x-fal-")]
        if origin is None or method not in ALLOWED_METHODS or refused:
            why = ("origin is not allowed" if origin is None else
                   f"method {method} is not allowed" if method not in ALLOWED_METHODS else
                   f"headers {', '.join(refused)} are not allowed")
            body = error_body(f"CORS preflight refused: {why}")
            await send({"type": "http.response.start", "status": 403, "headers": [
                (b"content-type", b"application/json"), (b"vary", b"Origin"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        allow_headers = ", ".join(dict.fromkeys([*ALLOWED_HEADERS, *asked]))
        headers = [
            *self._allow(origin),
            (b"access-control-allow-methods", ", ".join(ALLOWED_METHODS).encode()),
            (b"access-control-allow-headers", allow_headers.encode("latin-1")),
            (b"access-control-max-age", self._max_age),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
