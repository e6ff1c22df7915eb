"""Endpoint allowlist: glob patterns over endpoint ids, applied to every operation.

Submit, run and stream are checked by endpoint id; status, stream-status, result and cancel
carry only the app (`owner/alias`), so they are checked against the apps the patterns name
(ownership then ties each request id to its caller).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from ..context import ProxyRequest
from ..errors import ProxyError
from ..target import Operation

__all__ = ["Allowlist", "app_pattern"]

_BY_ENDPOINT = frozenset({Operation.RUN, Operation.STREAM, Operation.SUBMIT})
_BY_APP = frozenset({Operation.STATUS, Operation.STATUS_STREAM, Operation.RESULT,
                     Operation.CANCEL})
_UPLOADS = frozenset({Operation.STORAGE_INITIATE, Operation.STORAGE_INITIATE_MULTIPART})


def app_pattern(pattern: str) -> str:
    """The app part of an endpoint pattern: `fal-ai/flux/dev` → `fal-ai/flux`."""
    segments = pattern.split("/")
    size = 3 if segments[0] in ("workflows", "comfy") else 2
    return "/".join(segments[:size])


class Allowlist:
    """The authorize check for endpoints (and uploads, which name no endpoint)."""

    def __init__(self, patterns: Sequence[str], *, uploads: bool) -> None:
        self.patterns = tuple(patterns)
        self.apps = tuple(dict.fromkeys(app_pattern(p) for p in self.patterns))
        self._uploads = uploads

    def endpoint_allowed(self, endpoint_id: str) -> bool:
        return any(fnmatchcase(endpoint_id, p) for p in self.patterns)

    def app_allowed(self, app_id: str) -> bool:
        return any(fnmatchcase(app_id, p) for p in self.apps)

    def __call__(self, request: ProxyRequest) -> None:
        target = request.target
        op = target.operation
        if op in _BY_ENDPOINT:
            endpoint = target.endpoint_id or ""
            if not self.endpoint_allowed(endpoint):
                raise ProxyError(403, f"endpoint {endpoint!r} is not allowed on this proxy")
        elif op in _BY_APP:
            app = target.app_id or ""
            if not self.app_allowed(app):
                raise ProxyError(403, f"endpoint {app!r} is not allowed on this proxy")
        elif op in _UPLOADS and not self._uploads:
            raise ProxyError(403, "file uploads are disabled on this proxy "
                                  "(policy.allow_uploads)")
