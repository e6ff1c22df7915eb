"""Errors in fal's own shape, so the fal client maps them (`ApiError`, `ValidationError`)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ProxyError", "error_body"]


def error_body(detail: Any, **extra: Any) -> bytes:
    """`{"detail": ...}` encoded once; `extra` adds fields such as `error_type`."""
    return json.dumps({"detail": detail, **extra}, separators=(",", ":")).encode()


class ProxyError(Exception):
    """A refusal or failure the proxy answers itself, as `{"detail": ...}` JSON.

    Raising it from any pipeline stage stops the request before anything else happens.
    """

    def __init__(
        self,
        status: int,
        detail: Any,
        *,
        headers: dict[str, str] | None = None,
        error_type: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail if isinstance(detail, str) else json.dumps(detail))
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.error_type = error_type
        self.extra = extra or {}

    def body(self) -> bytes:
        extra = dict(self.extra)
        if self.error_type:
            extra["error_type"] = self.error_type
        return error_body(self.detail, **extra)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json")]
        if self.error_type:
            headers.append((b"x-fal-error-type", self.error_type.encode()))
        headers.extend((k.lower().encode(), v.encode("latin-1")) for k, v in self.headers.items())
        return headers
