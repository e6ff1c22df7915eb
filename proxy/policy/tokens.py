"""Temporary fal tokens (`POST rest.fal.ai/tokens/`), used for realtime and client-mode streams.

A token lets the browser call fal directly, past every check here, until it expires. So it is
refused unless enabled; when enabled, its `allowed_apps` are cut down to the allowlisted apps
and its `token_expiration` is capped.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..context import ProxyRequest
from ..errors import ProxyError
from ..target import Operation
from .allowlist import Allowlist
from .inputs import parse_json_body
from .settings import TokenSettings

__all__ = ["TokenPolicy"]


class TokenPolicy:
    """`gate` (authorize) refuses tokens unless enabled; `police` rewrites the token request."""

    def __init__(self, settings: TokenSettings, allowlist: Allowlist) -> None:
        self._settings = settings
        # fal names apps in tokens by owner/alias or by bare alias (`flux` for fal-ai/flux).
        # Bare aliases come only from exact app ids: `fal-ai/*` must not turn into `*`.
        self._apps = allowlist.apps
        self._aliases = frozenset(
            a.rsplit("/", 1)[-1] for a in allowlist.apps if not any(c in a for c in "*?[")
        )

    def gate(self, request: ProxyRequest) -> None:
        if request.target.operation is Operation.TOKEN and not self._settings.enabled:
            raise ProxyError(403, "temporary fal tokens (rest.fal.ai/tokens/) are disabled "
                                  "(policy.tokens.enabled)")

    def police(self, request: ProxyRequest) -> None:
        if request.target.operation is not Operation.TOKEN:
            return
        data = parse_json_body(request)
        asked = data.get("allowed_apps")
        if not isinstance(asked, list) or not all(isinstance(a, str) for a in asked):
            asked = []
        apps = [a for a in asked
                 if a in self._aliases or ("/" in a and any(fnmatchcase(a, p) for p in self._apps))]
        if not apps:
            raise ProxyError(403, f"a token for apps {asked!r} is not allowed on this proxy")
        cap = self._settings.max_expiration
        ttl = data.get("token_expiration")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= cap:
            ttl = cap
        if apps != asked or ttl != data.get("token_expiration"):
            data["allowed_apps"] = apps
            data["token_expiration"] = ttl
            request.json_dirty = True
