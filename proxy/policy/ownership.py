"""Request ownership without server state: the client only ever sees signed request ids.

A submit answer's `request_id` (and its `*_url` fields and `x-fal-request-id` header) is
replaced by `sign(fal id, caller, app)`. Every status, status stream, result and cancel must
bring such an id back; it is verified and unwrapped to fal's id before anything is sent. Another
caller's id, a tampered or an expired one all get the same 404 as an id that never existed.

Status *stream* events are passed through unbuffered and still carry fal's own id: the fal
client does not read ids from them, and a bare fal id is useless here (it does not verify).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from itsdangerous import BadSignature

from ..context import ProxyRequest
from ..errors import ProxyError
from ..identity.tokens import SALT_REQUEST_ID, serializer
from ..target import Operation, TargetError

__all__ = ["Ownership", "binding"]

_SCOPED = frozenset({Operation.STATUS, Operation.STATUS_STREAM, Operation.RESULT,
                     Operation.CANCEL})
_URLS = (("response_url", ""), ("status_url", "/status"), ("cancel_url", "/cancel"))
_QUEUE = "https://queue.fal.run"


def binding(caller_id: str, app_id: str) -> str:
    """What a signed id is bound to: a short digest of the caller and the app."""
    digest = hashlib.sha256(f"{caller_id}\n{app_id}".encode()).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode()


class Ownership:
    """The authorize check for request-scoped operations, and the submit rewrite."""

    def __init__(self, secrets: Sequence[str], ttl: float) -> None:
        self._signer = serializer(list(secrets), SALT_REQUEST_ID)
        self._ttl = ttl

    def sign(self, fal_id: str, caller_id: str, app_id: str) -> str:
        signed: str = self._signer.dumps([fal_id, binding(caller_id, app_id)])
        return signed

    def unwrap(self, signed: str, caller_id: str, app_id: str) -> str | None:
        """fal's id, or None for anything not signed by us for this caller and app."""
        try:
            data = self._signer.loads(signed, max_age=int(self._ttl))
        except BadSignature:  # SignatureExpired is a BadSignature
            return None
        if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str)
                                                                   for x in data)):
            return None
        if not hmac.compare_digest(data[1], binding(caller_id, app_id)):
            return None
        fal_id: str = data[0]
        return fal_id

    def __call__(self, request: ProxyRequest) -> None:
        target = request.target
        op = target.operation
        if op is Operation.SUBMIT:
            request.response_filters.append(self._sign_submit)
            return
        if op not in _SCOPED:
            return
        caller = request.caller
        assert caller is not None and target.request_id and target.app_id
        signed = target.request_id
        fal_id = self.unwrap(signed, caller.id, target.app_id)
        if fal_id is None:
            raise ProxyError(404, "Request not found")
        try:
            request.target = target.with_request_id(fal_id)
        except TargetError:
            raise ProxyError(404, "Request not found") from None
        request.notes["request_ids"] = (fal_id, signed)
        request.response_headers.append((b"x-fal-request-id", signed.encode()))
        if op is not Operation.STATUS_STREAM:
            request.response_filters.append(self._restore_ids)

    def _sign_submit(self, request: ProxyRequest, status: int, body: bytes) -> bytes:
        caller, app = request.caller, request.target.app_id
        if not 200 <= status < 300 or caller is None or app is None:
            return body
        data = _json_object(body)
        fal_id = data.get("request_id") if data is not None else None
        if data is None or not isinstance(fal_id, str):
            return body
        signed = self.sign(fal_id, caller.id, app)
        request.notes["request_ids"] = (fal_id, signed)
        request.response_headers.append((b"x-fal-request-id", signed.encode()))
        return _rewrite(data, fal_id, signed, app, urls=True)

    def _restore_ids(self, request: ProxyRequest, status: int, body: bytes) -> bytes:
        """Status/result/cancel answers echo fal's id; show the caller the signed one."""
        fal_id, signed = request.notes["request_ids"]
        data = _json_object(body)
        if data is None or data.get("request_id") != fal_id:
            return body
        urls = request.target.operation is Operation.STATUS
        return _rewrite(data, fal_id, signed, request.target.app_id or "", urls=urls)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _rewrite(data: dict[str, Any], fal_id: str, signed: str, app: str, *, urls: bool) -> bytes:
    data["request_id"] = signed
    if urls:
        for key, tail in _URLS:
            if key in data:
                data[key] = f"{_QUEUE}/{app}/requests/{signed}{tail}"
    return json.dumps(data, separators=(",", ":")).encode()
