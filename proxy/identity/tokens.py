"""Signed tokens with itsdangerous: bearer tokens for users, anonymous cookies, request ids.

Each purpose has its own salt, so a value signed for one purpose never verifies as another.
Secrets are a list, oldest first: the newest (last) signs, all of them verify, which is how a
secret is rotated without logging anybody out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

if TYPE_CHECKING:
    from ..settings import Settings
    from .settings import IdentitySettings

__all__ = [
    "SALT_BEARER",
    "SALT_COOKIE",
    "SALT_REQUEST_ID",
    "TokenError",
    "issue_token",
    "parse_ttl",
    "serializer",
    "verify_token",
]

SALT_BEARER = "flux-proxy/bearer"
SALT_COOKIE = "flux-proxy/anon-cookie"
SALT_REQUEST_ID = "flux-proxy/request-id"

class TokenError(ValueError):
    """A token that does not verify; `reason` is safe to show ("expired", "invalid")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


SecretsLike: TypeAlias = "str | Sequence[str] | IdentitySettings | Settings"


def _secret_list(secrets: SecretsLike) -> list[str]:
    identity: Any = getattr(secrets, "identity", secrets)  # Settings -> IdentitySettings
    value = getattr(identity, "secrets", identity)
    keys = [value] if isinstance(value, str) else [str(s) for s in value]
    if not keys or not all(keys):
        raise ValueError("no signing secret: set identity.secrets")
    return keys


def serializer(secrets: SecretsLike, salt: str) -> URLSafeTimedSerializer:
    """A serializer for one purpose; `secrets` oldest first (the last one signs)."""
    return URLSafeTimedSerializer(_secret_list(secrets), salt=salt)


def _seconds(ttl: float | timedelta) -> float:
    return ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)


def issue_token(user_id: str, ttl: float | timedelta, secrets: SecretsLike) -> str:
    """A bearer token for `user_id`, valid `ttl` seconds; mint it in your app's backend.

    `secrets` is the same list as `identity.secrets` (or the `Settings` itself). The browser
    passes it as the fal client's `credentials` (sent as `Authorization: Key <token>`) or as
    `Authorization: Bearer <token>`.
    """
    seconds = _seconds(ttl)
    if not user_id:
        raise ValueError("user_id must not be empty")
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    exp = int(time.time() + seconds)
    token: str = serializer(secrets, SALT_BEARER).dumps({"u": user_id, "e": exp})
    return token


def _decode(
    signer: URLSafeTimedSerializer, token: str, max_ttl: float, now: float
) -> tuple[str, float]:
    """(user id, valid until) of a bearer token; `TokenError` when it does not verify."""
    try:
        data, signed = signer.loads(token, max_age=int(max_ttl), return_timestamp=True)
    except SignatureExpired:
        raise TokenError("expired") from None
    except BadSignature:
        raise TokenError("invalid") from None
    if not isinstance(data, dict) or not isinstance(data.get("u"), str):
        raise TokenError("invalid")
    exp = data.get("e")
    if not isinstance(exp, int) or exp <= now:
        raise TokenError("expired")
    user: str = data["u"]
    return user, min(float(exp), signed.timestamp() + max_ttl)


def verify_token(token: str, secrets: SecretsLike, max_ttl: float) -> str:
    """The user id in a valid bearer token; `TokenError` when forged, expired or too long-lived."""
    return _decode(serializer(secrets, SALT_BEARER), token, max_ttl, time.time())[0]


class TokenVerifier:
    """`verify_token` for one set of secrets, remembering tokens it already verified.

    The browser sends the same token on every status poll; checking the HMAC and decoding it
    each time cost more than the rest of the guards together. A remembered token is still
    refused the moment it expires (its own expiry or `max_ttl` after signing).
    """

    def __init__(self, secrets: SecretsLike, max_ttl: float, cache_size: int = 4096) -> None:
        self._serializer = serializer(secrets, SALT_BEARER)
        self._max_ttl = max_ttl
        self._cache: dict[str, tuple[str, float]] = {}  # token -> (user, valid until)
        self._cache_size = cache_size

    def verify(self, token: str) -> str:
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[str, float]:
        """The user, and until when the token is valid (`time.time()` clock)."""
        hit = self._cache.get(token)
        now = time.time()
        if hit is not None:
            if now < hit[1]:
                return hit
            del self._cache[token]
            raise TokenError("expired")
        user, until = _decode(self._serializer, token, self._max_ttl, now)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest first
        self._cache[token] = (user, until)
        return user, until


_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `7d` → seconds."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"bad ttl {text!r}: use e.g. 3600, 15m, 1h or 7d")
    return float(match.group(1)) * _UNIT[match.group(2)]
