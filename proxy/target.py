"""Parse and validate the ``x-fal-target-url`` header sent by ``@fal-ai/client``.

This module is the proxy's gatekeeper: it decides whether a target URL is one of the
few fal.ai API calls the proxy relays, and it returns a :class:`Target` built only
from validated parts.  The proxy must forward :meth:`Target.upstream_path` to the
host in :attr:`Target.host` and never the raw header.

Everything not explicitly allowed is refused.  The parser is hand-written (no
``urllib.parse.urlsplit``, whose leniency is the classic source of parser
differentials) and uses only anchored, backtracking-free regular expressions.

Errors are :class:`TargetError` with an HTTP status (400 missing header, 403
disallowed or malformed target, 405 wrong method) and a developer-readable detail
that never echoes control characters or more than ~100 characters of input.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "MAX_TARGET_LENGTH",
    "Host",
    "Operation",
    "Target",
    "TargetError",
    "parse_target",
]

MAX_TARGET_LENGTH = 2048
MAX_SEGMENTS = 16
MAX_SEGMENT_LENGTH = 128
MAX_REQUEST_ID_LENGTH = 512
_SHOW_LIMIT = 100


class Operation(str, enum.Enum):  # noqa: UP042 - interface fixed as str+Enum
    RUN = "run"
    STREAM = "stream"
    SUBMIT = "submit"
    STATUS = "status"
    STATUS_STREAM = "status-stream"
    RESULT = "result"
    CANCEL = "cancel"
    STORAGE_INITIATE = "storage-initiate"
    STORAGE_INITIATE_MULTIPART = "storage-initiate-multipart"
    TOKEN = "token"


class Host(str, enum.Enum):  # noqa: UP042 - interface fixed as str+Enum
    RUN = "fal.run"
    QUEUE = "queue.fal.run"
    REST = "rest.fal.ai"


class TargetError(Exception):
    """A refused target. ``status`` is the HTTP status the proxy should answer."""

    status: int
    detail: str
    allow: tuple[str, ...] = ()

    def __init__(self, status: int, detail: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.allow = allow

    def __repr__(self) -> str:
        return f"TargetError({self.status}, {self.detail!r}, allow={self.allow!r})"


# --------------------------------------------------------------------------- tables

_HOSTS: dict[str, Host] = {h.value: h for h in Host}
_NAMESPACES = frozenset({"workflows", "comfy"})

_METHODS: dict[Operation, tuple[str, ...]] = {
    Operation.RUN: ("POST",),
    Operation.STREAM: ("POST",),
    Operation.SUBMIT: ("POST",),
    Operation.STATUS: ("GET",),
    Operation.STATUS_STREAM: ("GET",),
    Operation.RESULT: ("GET",),
    Operation.CANCEL: ("PUT",),
    Operation.STORAGE_INITIATE: ("POST",),
    Operation.STORAGE_INITIATE_MULTIPART: ("POST",),
    Operation.TOKEN: ("POST",),
}

# rest.fal.ai: the complete list of paths the proxy relays.
_REST_PATHS: dict[str, Operation] = {
    "storage/upload/initiate": Operation.STORAGE_INITIATE,
    "storage/upload/initiate-multipart": Operation.STORAGE_INITIATE_MULTIPART,
    "tokens/": Operation.TOKEN,
}

# queue.fal.run: what follows "{app_id}/requests/{request_id}".
_REQUEST_TAILS: dict[tuple[str, ...], Operation] = {
    (): Operation.RESULT,
    ("status",): Operation.STATUS,
    ("status", "stream"): Operation.STATUS_STREAM,
    ("cancel",): Operation.CANCEL,
}
_TAIL_OF: dict[Operation, str] = {
    Operation.RESULT: "",
    Operation.STATUS: "/status",
    Operation.STATUS_STREAM: "/status/stream",
    Operation.CANCEL: "/cancel",
}

_LOGS_VALUES = frozenset({"0", "1", "true", "false"})
_STORAGE_TYPE = "fal-cdn-v3"
_STORAGE_OPS = frozenset({Operation.STORAGE_INITIATE, Operation.STORAGE_INITIATE_MULTIPART})
_QUERY_ALLOWED: dict[Operation, frozenset[str]] = {
    Operation.SUBMIT: frozenset({"fal_webhook"}),
    Operation.STATUS: frozenset({"logs"}),
    Operation.STATUS_STREAM: frozenset({"logs"}),
    Operation.STORAGE_INITIATE: frozenset({"storage_type"}),
    Operation.STORAGE_INITIATE_MULTIPART: frozenset({"storage_type"}),
}
_NO_QUERY: frozenset[str] = frozenset()

# All patterns are anchored via fullmatch/search on a single character class, so they
# run in linear time with no backtracking.
_BAD_CHAR = re.compile(r"[^!-~]")  # anything outside printable ASCII 0x21-0x7E
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_QUERY_NAME = re.compile(r"[a-z_]+")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DECODED_BAD = re.compile(rb"[^ -~]")  # decoded query values: printable ASCII incl. space
_SIMPLE_METHOD = re.compile(r"[A-Z]{1,16}")


# --------------------------------------------------------------------------- helpers


def _show(value: str, limit: int = _SHOW_LIMIT) -> str:
    """Quote attacker-controlled text for a detail message: ASCII-escaped, truncated."""
    if len(value) > limit:
        return ascii(value[:limit]) + "..."
    return ascii(value)


def _forbid(detail: str) -> TargetError:
    return TargetError(403, detail)


def _is_dots(segment: str) -> bool:
    return not segment.strip(".")


def _check_request_id(request_id: object) -> str:
    if not isinstance(request_id, str) or not request_id:
        raise _forbid("request id must be a non-empty string")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise _forbid(
            f"request id is too long ({len(request_id)} > {MAX_REQUEST_ID_LENGTH} characters)"
        )
    if _SEGMENT.fullmatch(request_id) is None:
        raise _forbid(f"request id {_show(request_id)} contains disallowed characters")
    if _is_dots(request_id):
        raise _forbid(f"request id {_show(request_id)} is a dot segment")
    return request_id


def _split_path(path: str) -> list[str]:
    """Split and validate a path (without its leading slash) into segments.

    Segments may be up to MAX_REQUEST_ID_LENGTH long here; the tighter limit for
    everything except a request id is applied once the request id is located.
    """
    if not path:
        raise _forbid("target path is empty")
    if "%" in path:
        raise _forbid("percent-encoding is not allowed in the target path")
    segments = path.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise _forbid(f"target path has too many segments (more than {MAX_SEGMENTS})")
    for segment in segments:
        if not segment:
            raise _forbid("target path has an empty segment (double or trailing slash)")
        if len(segment) > MAX_REQUEST_ID_LENGTH:
            raise _forbid(f"target path segment is too long ({len(segment)} characters)")
        if _SEGMENT.fullmatch(segment) is None:
            raise _forbid(f"target path segment {_show(segment)} contains disallowed characters")
        if _is_dots(segment):
            raise _forbid(f"target path contains a dot segment {_show(segment)}")
    return segments


def _check_lengths(segments: list[str], request_id_index: int | None) -> None:
    for index, segment in enumerate(segments):
        if index != request_id_index and len(segment) > MAX_SEGMENT_LENGTH:
            raise _forbid(
                f"target path segment {_show(segment, 40)} is too long "
                f"({len(segment)} > {MAX_SEGMENT_LENGTH} characters)"
            )


def _app_id_length(segments: list[str]) -> int:
    """Number of segments of the app id: 2, or 3 after a namespace."""
    first = segments[0]
    if first in _NAMESPACES:
        return 3
    if first.lower() in _NAMESPACES:
        raise _forbid(f"namespace {_show(first)} must be lower case")
    return 2


def _endpoint(segments: list[str], what: str) -> tuple[str, str]:
    """Validate an endpoint id given as segments; return (endpoint_id, app_id)."""
    if not segments:
        raise _forbid(f"{what}: endpoint id is missing")
    app_len = _app_id_length(segments)
    if len(segments) < app_len:
        shape = "namespace/owner/alias" if app_len == 3 else "owner/alias"
        raise _forbid(f"{what}: endpoint id {_show('/'.join(segments))} must be {shape}[/path]")
    return "/".join(segments), "/".join(segments[:app_len])


def _decode_value(name: str, raw_value: str) -> str:
    """Strict form decoding: '+' is a space, '%XX' must be valid, result printable ASCII."""
    if _BAD_PERCENT.search(raw_value) is not None:
        raise _forbid(f"query parameter {_show(name, 40)} has an invalid percent escape")
    value = raw_value.replace("+", " ")
    if "%" not in value:
        return value
    decoded = unquote_to_bytes(value)
    if _DECODED_BAD.search(decoded) is not None:
        raise _forbid(
            f"query parameter {_show(name, 40)} decodes to a non-printable or non-ASCII value"
        )
    return decoded.decode("ascii")


def _parse_query(query: str | None, op: Operation) -> tuple[tuple[str, str], ...]:
    allowed = _QUERY_ALLOWED.get(op, _NO_QUERY)
    pairs: list[tuple[str, str]] = []
    if query:  # None (no '?') and "" (a bare trailing '?') both mean no parameters
        if ";" in query:
            raise _forbid("';' is not allowed in the target query string")
        seen: set[str] = set()
        for part in query.split("&"):
            if not part:
                raise _forbid("target query string has an empty parameter")
            name, sep, raw_value = part.partition("=")
            if not sep:
                raise _forbid(f"query parameter {_show(name, 40)} has no '=value'")
            if _QUERY_NAME.fullmatch(name) is None:
                raise _forbid(f"query parameter name {_show(name, 40)} is malformed")
            if name not in allowed:
                raise _forbid(f"query parameter {_show(name, 40)} is not allowed for {op.value}")
            if name in seen:
                raise _forbid(f"duplicate query parameter {_show(name, 40)}")
            seen.add(name)
            value = _decode_value(name, raw_value)
            _check_value(name, value)
            pairs.append((name, value))
    if op in _STORAGE_OPS and not pairs:
        raise _forbid(f"query parameter 'storage_type' is required for {op.value}")
    return tuple(pairs)


def _check_value(name: str, value: str) -> None:
    if name == "logs":
        if value not in _LOGS_VALUES:
            raise _forbid("query parameter 'logs' must be one of 0, 1, true, false")
    elif name == "storage_type":
        if value != _STORAGE_TYPE:
            raise _forbid(f"query parameter 'storage_type' must be '{_STORAGE_TYPE}'")
    elif name == "fal_webhook":
        if not value.startswith(("https://", "http://")):
            raise _forbid("query parameter 'fal_webhook' must be an http(s) URL")
    else:  # pragma: no cover - names are filtered against _QUERY_ALLOWED first
        raise _forbid(f"query parameter {_show(name, 40)} is not allowed")


# --------------------------------------------------------------------------- target


@dataclass(frozen=True, slots=True)
class Target:
    operation: Operation
    host: Host
    path: str
    query: tuple[tuple[str, str], ...]
    endpoint_id: str | None
    app_id: str | None
    request_id: str | None

    @property
    def streaming(self) -> bool:
        return self.operation in (Operation.STREAM, Operation.STATUS_STREAM)

    def upstream_path(self) -> str:
        """Path and query to send upstream, rebuilt only from validated parts."""
        if not self.query:
            return "/" + self.path
        encoded = "&".join(f"{name}={quote(value, safe='')}" for name, value in self.query)
        return f"/{self.path}?{encoded}"

    def with_request_id(self, request_id: str) -> Target:
        """The same request-scoped target for another request id.

        Raises ValueError when this target has no request id (a programming error) and
        TargetError(403) when ``request_id`` breaks the request-id rules.
        """
        if self.request_id is None or self.app_id is None:
            raise ValueError(f"{self.operation.value} target has no request id to replace")
        new_id = _check_request_id(request_id)
        path = f"{self.app_id}/requests/{new_id}{_TAIL_OF[self.operation]}"
        return dataclasses.replace(self, path=path, request_id=new_id)


# --------------------------------------------------------------------------- parsing


def parse_target(raw: str | None, method: str) -> Target:
    """Validate an ``x-fal-target-url`` value for an incoming request ``method``."""
    if raw is None or raw == "":
        raise TargetError(400, "missing x-fal-target-url header")
    if not isinstance(raw, str):
        raise TargetError(400, "x-fal-target-url header must be text")
    if len(raw) > MAX_TARGET_LENGTH:
        raise _forbid(f"target URL is too long ({len(raw)} > {MAX_TARGET_LENGTH} characters)")
    bad = _BAD_CHAR.search(raw)
    if bad is not None:
        raise _forbid(
            f"target URL contains a disallowed character {bad.group()!a} at position {bad.start()}"
        )
    if "\\" in raw:
        raise _forbid("target URL must not contain a backslash")
    if "#" in raw:
        raise _forbid("target URL must not contain a fragment ('#')")
    if raw[:8].lower() != "https://":
        raise _forbid("target scheme must be https")

    # authority: up to the first '/' or '?' ('#' and '\\' are already refused)
    rest = raw[8:]
    end = len(rest)
    for stop in ("/", "?"):
        found = rest.find(stop, 0, end)
        if found != -1:
            end = found
    authority, rest = rest[:end], rest[end:]
    if not authority:
        raise _forbid("target URL has no host")
    if "@" in authority:
        raise _forbid("target URL must not contain userinfo ('@')")
    if authority.startswith("["):
        raise _forbid(f"target host {_show(authority)} is not allowed (IP literal)")
    if ":" in authority:
        raise _forbid("target URL must not contain a port")
    host = _HOSTS.get(authority.lower())
    if host is None:
        raise _forbid(f"target host {_show(authority)} is not allowed")

    if not rest.startswith("/"):
        raise _forbid("target URL has no path")
    path, qmark, query_str = rest[1:].partition("?")
    query = query_str if qmark else None

    op, endpoint_id, app_id, request_id = _classify(host, path)
    pairs = _parse_query(query, op)

    allowed = _METHODS[op]
    verb = method.upper() if isinstance(method, str) else ""
    if verb not in allowed:
        shown = verb if _SIMPLE_METHOD.fullmatch(verb) else _show(verb, 20)
        raise TargetError(
            405, f"method {shown} not allowed for {op.value} (use {', '.join(allowed)})", allowed
        )
    return Target(
        operation=op,
        host=host,
        path=path,
        query=pairs,
        endpoint_id=endpoint_id,
        app_id=app_id,
        request_id=request_id,
    )


def _classify(host: Host, path: str) -> tuple[Operation, str | None, str | None, str | None]:
    """Return (operation, endpoint_id, app_id, request_id) for a validated path."""
    if host is Host.REST:
        if path == "tokens/":
            return Operation.TOKEN, None, None, None
        segments = _split_path(path)
        _check_lengths(segments, None)
        op = _REST_PATHS.get(path)
        if op is None:
            raise _forbid(f"target path {_show('/' + path)} is not allowed on rest.fal.ai")
        return op, None, None, None

    segments = _split_path(path)

    if host is Host.RUN:
        _check_lengths(segments, None)
        if any(s.lower() == "requests" for s in segments):
            # fal.run never serves queue-style paths; refusing them keeps request ids (and
            # their ownership checks) on queue.fal.run only.
            raise _forbid("fal.run paths must not contain a 'requests' segment")
        last = segments[-1]
        if last == "stream":
            endpoint_id, app_id = _endpoint(segments[:-1], "stream")
            if segments[-2].lower() == "stream":
                raise _forbid("stream: endpoint id must not end with 'stream'")
            return Operation.STREAM, endpoint_id, app_id, None
        if last.lower() == "stream":
            raise _forbid(f"reserved segment {_show(last)} must be lower case")
        endpoint_id, app_id = _endpoint(segments, "run")
        return Operation.RUN, endpoint_id, app_id, None

    # queue.fal.run
    app_len = _app_id_length(segments)
    if len(segments) > app_len and segments[app_len] == "requests":
        app_segments = segments[:app_len]
        if any(s.lower() == "requests" for s in app_segments):
            raise _forbid("app id must not contain a 'requests' segment")
        rest = segments[app_len + 1 :]
        if not rest:
            raise _forbid("queue request path is missing the request id")
        op = _REQUEST_TAILS.get(tuple(rest[1:]))
        if op is None:
            raise _forbid(
                f"queue request path {_show('/' + path)} is not a result, status, "
                "status/stream or cancel path"
            )
        request_id = _check_request_id(rest[0])
        _check_lengths(segments, app_len + 1)
        return op, None, "/".join(app_segments), request_id

    if any(s.lower() == "requests" for s in segments):
        raise _forbid(
            f"queue path {_show('/' + path)} has a 'requests' segment but is not "
            "{app_id}/requests/{request_id}[/status|/status/stream|/cancel] "
            "with app_id = owner/alias"
        )
    _check_lengths(segments, None)
    endpoint_id, app_id = _endpoint(segments, "submit")
    return Operation.SUBMIT, endpoint_id, app_id, None
