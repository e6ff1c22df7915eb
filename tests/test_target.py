"""Tests for proxy.target: the x-fal-target-url gatekeeper."""

from __future__ import annotations

import random
import string

import pytest

from proxy.target import (
    MAX_TARGET_LENGTH,
    Host,
    Operation,
    Target,
    TargetError,
    parse_target,
)

Q = "https://queue.fal.run"
R = "https://fal.run"
REST = "https://rest.fal.ai"
RID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
WEBHOOK_RAW = "https%3A%2F%2Fexample.com%2Fhook%3Fa%3D1"


# --------------------------------------------------------------------------- positive


@pytest.mark.parametrize(
    ("raw", "method", "op", "host", "path", "endpoint_id", "app_id", "request_id", "upstream"),
    [
        (
            f"{R}/fal-ai/flux/dev",
            "POST",
            Operation.RUN,
            Host.RUN,
            "fal-ai/flux/dev",
            "fal-ai/flux/dev",
            "fal-ai/flux",
            None,
            "/fal-ai/flux/dev",
        ),
        (
            f"{R}/fal-ai/flux",
            "post",
            Operation.RUN,
            Host.RUN,
            "fal-ai/flux",
            "fal-ai/flux",
            "fal-ai/flux",
            None,
            "/fal-ai/flux",
        ),
        (
            f"{R}/fal-ai/flux/dev/stream",
            "POST",
            Operation.STREAM,
            Host.RUN,
            "fal-ai/flux/dev/stream",
            "fal-ai/flux/dev",
            "fal-ai/flux",
            None,
            "/fal-ai/flux/dev/stream",
        ),
        (
            f"{R}/workflows/me/wf/stream",
            "POST",
            Operation.STREAM,
            Host.RUN,
            "workflows/me/wf/stream",
            "workflows/me/wf",
            "workflows/me/wf",
            None,
            "/workflows/me/wf/stream",
        ),
        (
            f"{Q}/fal-ai/flux/dev",
            "POST",
            Operation.SUBMIT,
            Host.QUEUE,
            "fal-ai/flux/dev",
            "fal-ai/flux/dev",
            "fal-ai/flux",
            None,
            "/fal-ai/flux/dev",
        ),
        (
            f"{Q}/workflows/me/wf",
            "POST",
            Operation.SUBMIT,
            Host.QUEUE,
            "workflows/me/wf",
            "workflows/me/wf",
            "workflows/me/wf",
            None,
            "/workflows/me/wf",
        ),
        (
            f"{Q}/fal-ai/flux/requests/{RID}",
            "GET",
            Operation.RESULT,
            Host.QUEUE,
            f"fal-ai/flux/requests/{RID}",
            None,
            "fal-ai/flux",
            RID,
            f"/fal-ai/flux/requests/{RID}",
        ),
        (
            f"{Q}/fal-ai/flux/requests/{RID}/status?logs=1",
            "GET",
            Operation.STATUS,
            Host.QUEUE,
            f"fal-ai/flux/requests/{RID}/status",
            None,
            "fal-ai/flux",
            RID,
            f"/fal-ai/flux/requests/{RID}/status?logs=1",
        ),
        (
            f"{Q}/fal-ai/flux/requests/{RID}/status",
            "get",
            Operation.STATUS,
            Host.QUEUE,
            f"fal-ai/flux/requests/{RID}/status",
            None,
            "fal-ai/flux",
            RID,
            f"/fal-ai/flux/requests/{RID}/status",
        ),
        (
            f"{Q}/comfy/me/app/requests/x/status",
            "GET",
            Operation.STATUS,
            Host.QUEUE,
            "comfy/me/app/requests/x/status",
            None,
            "comfy/me/app",
            "x",
            "/comfy/me/app/requests/x/status",
        ),
        (
            f"{Q}/fal-ai/flux/requests/{RID}/status/stream?logs=0",
            "GET",
            Operation.STATUS_STREAM,
            Host.QUEUE,
            f"fal-ai/flux/requests/{RID}/status/stream",
            None,
            "fal-ai/flux",
            RID,
            f"/fal-ai/flux/requests/{RID}/status/stream?logs=0",
        ),
        (
            f"{Q}/fal-ai/flux/requests/{RID}/cancel",
            "PUT",
            Operation.CANCEL,
            Host.QUEUE,
            f"fal-ai/flux/requests/{RID}/cancel",
            None,
            "fal-ai/flux",
            RID,
            f"/fal-ai/flux/requests/{RID}/cancel",
        ),
        (
            f"{REST}/storage/upload/initiate?storage_type=fal-cdn-v3",
            "POST",
            Operation.STORAGE_INITIATE,
            Host.REST,
            "storage/upload/initiate",
            None,
            None,
            None,
            "/storage/upload/initiate?storage_type=fal-cdn-v3",
        ),
        (
            f"{REST}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
            "POST",
            Operation.STORAGE_INITIATE_MULTIPART,
            Host.REST,
            "storage/upload/initiate-multipart",
            None,
            None,
            None,
            "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
        ),
        (
            f"{REST}/tokens/",
            "POST",
            Operation.TOKEN,
            Host.REST,
            "tokens/",
            None,
            None,
            None,
            "/tokens/",
        ),
        (
            "HTTPS://QUEUE.FAL.RUN/fal-ai/flux/dev",
            "POST",
            Operation.SUBMIT,
            Host.QUEUE,
            "fal-ai/flux/dev",
            "fal-ai/flux/dev",
            "fal-ai/flux",
            None,
            "/fal-ai/flux/dev",
        ),
        (
            "hTtPs://Rest.Fal.Ai/tokens/",
            "POST",
            Operation.TOKEN,
            Host.REST,
            "tokens/",
            None,
            None,
            None,
            "/tokens/",
        ),
    ],
)
def test_valid_targets(
    raw: str,
    method: str,
    op: Operation,
    host: Host,
    path: str,
    endpoint_id: str | None,
    app_id: str | None,
    request_id: str | None,
    upstream: str,
) -> None:
    t = parse_target(raw, method)
    assert t.operation is op
    assert t.host is host
    assert t.path == path
    assert t.endpoint_id == endpoint_id
    assert t.app_id == app_id
    assert t.request_id == request_id
    assert t.upstream_path() == upstream
    assert t.streaming == (op in (Operation.STREAM, Operation.STATUS_STREAM))


def test_webhook_decoded_and_round_trips() -> None:
    t = parse_target(f"{Q}/fal-ai/flux/dev?fal_webhook={WEBHOOK_RAW}", "POST")
    assert t.operation is Operation.SUBMIT
    assert t.query == (("fal_webhook", "https://example.com/hook?a=1"),)
    assert t.upstream_path() == f"/fal-ai/flux/dev?fal_webhook={WEBHOOK_RAW}"
    again = parse_target(f"https://{t.host.value}{t.upstream_path()}", "POST")
    assert again == t


def test_webhook_plus_is_space_and_reencoded() -> None:
    # URLSearchParams (the client) and fal's server both use form encoding: '+' is a space.
    t = parse_target(f"{Q}/fal-ai/flux/dev?fal_webhook=http://h/a+b%2Bc", "POST")
    assert t.query == (("fal_webhook", "http://h/a b+c"),)
    assert t.upstream_path() == "/fal-ai/flux/dev?fal_webhook=http%3A%2F%2Fh%2Fa%20b%2Bc"


@pytest.mark.parametrize("value", ["0", "1", "true", "false"])
@pytest.mark.parametrize("tail", ["status", "status/stream"])
def test_logs_values(value: str, tail: str) -> None:
    t = parse_target(f"{Q}/fal-ai/flux/requests/{RID}/{tail}?logs={value}", "GET")
    assert t.query == (("logs", value),)
    assert t.upstream_path().endswith(f"?logs={value}")


def test_bare_question_mark_means_no_query() -> None:
    t = parse_target(f"{Q}/fal-ai/flux/requests/{RID}?", "GET")
    assert t.query == ()
    assert t.upstream_path() == f"/fal-ai/flux/requests/{RID}"


def test_request_id_may_be_long_signed_token() -> None:
    rid = "eyJhbGciOiJIUzI1NiJ9." + "A" * 400 + ".sig_-~"
    t = parse_target(f"{Q}/fal-ai/flux/requests/{rid}/status", "GET")
    assert t.request_id == rid


@pytest.mark.parametrize(
    ("tail", "method", "op"),
    [
        ("", "GET", Operation.RESULT),
        ("/status?logs=1", "GET", Operation.STATUS),
        ("/status/stream?logs=true", "GET", Operation.STATUS_STREAM),
        ("/cancel", "PUT", Operation.CANCEL),
    ],
)
@pytest.mark.parametrize("app", ["fal-ai/flux", "comfy/me/app"])
def test_with_request_id(tail: str, method: str, op: Operation, app: str) -> None:
    t = parse_target(f"{Q}/{app}/requests/signed.id-1{tail}", method)
    assert t.operation is op
    u = t.with_request_id(RID)
    assert u.operation is op
    assert u.request_id == RID
    assert u.app_id == app
    assert u.query == t.query
    plain_tail = tail.split("?")[0]
    assert u.path == f"{app}/requests/{RID}{plain_tail}"
    assert u.upstream_path() == f"/{app}/requests/{RID}{tail}"
    assert parse_target(f"{Q}{u.upstream_path()}", method) == u


@pytest.mark.parametrize("bad_id", ["", "..", ".", "a/b", "a%2Fb", "a b", "x" * 513, "é"])
def test_with_request_id_validates(bad_id: str) -> None:
    t = parse_target(f"{Q}/fal-ai/flux/requests/{RID}/status", "GET")
    with pytest.raises(TargetError) as ei:
        t.with_request_id(bad_id)
    assert ei.value.status == 403


def test_with_request_id_on_non_request_target() -> None:
    t = parse_target(f"{Q}/fal-ai/flux/dev", "POST")
    with pytest.raises(ValueError):
        t.with_request_id(RID)


def test_target_is_frozen() -> None:
    t = parse_target(f"{R}/fal-ai/flux/dev", "POST")
    assert isinstance(t, Target)
    with pytest.raises(AttributeError):
        t.path = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- hostile

LONG_SEG = "a" * 129
HOSTILE: list[tuple[str | None, str, int, str]] = [
    # (raw, method, status, detail fragment or "")
    # queue-style paths on fal.run (request ids live on queue.fal.run only)
    ("https://fal.run/fal-ai/flux/requests/abc/status", "POST", 403, "'requests' segment"),
    ("https://fal.run/fal-ai/flux/requests/abc/stream", "POST", 403, "'requests' segment"),
    # missing / empty
    (None, "POST", 400, "missing x-fal-target-url header"),
    ("", "POST", 400, "missing"),
    # schemes
    ("http://fal.run/fal-ai/flux/dev", "POST", 403, "scheme must be https"),
    ("HTTP://fal.run/fal-ai/flux/dev", "POST", 403, "scheme must be https"),
    ("//fal.run/fal-ai/flux/dev", "POST", 403, "scheme"),
    ("fal.run/fal-ai/flux/dev", "POST", 403, "scheme"),
    ("ftp://fal.run/fal-ai/flux/dev", "POST", 403, "scheme"),
    ("ws://fal.run/fal-ai/flux/dev", "POST", 403, "scheme"),
    ("wss://fal.run/fal-ai/flux/dev", "POST", 403, "scheme"),
    ("file:///etc/passwd", "POST", 403, "scheme"),
    ("javascript:alert(1)", "POST", 403, "scheme"),
    ("https:/fal.run/fal-ai/flux/dev", "POST", 403, "scheme"),
    ("https:fal.run/fal-ai/flux/dev", "POST", 403, "scheme"),
    ("https:///fal.run/fal-ai/flux/dev", "POST", 403, "no host"),
    # suffix / prefix / lookalike hosts
    ("https://fal.run.example.com/fal-ai/flux/dev", "POST", 403, "'fal.run.example.com'"),
    ("https://queue.fal.run.evil.com/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://evilfal.run/fal-ai/flux/dev", "POST", 403, "'evilfal.run' is not allowed"),
    ("https://example.com/fal.run/fal-ai/flux", "POST", 403, "'example.com'"),
    ("https://example.com?fal.run/fal-ai/flux", "POST", 403, "'example.com'"),
    ("https://fal.run%2eexample.com/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://fal%2erun/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://fal.run./fal-ai/flux/dev", "POST", 403, "'fal.run.'"),
    ("https://queue.fal.run./fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://.fal.run/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://fal.ai/fal-ai/flux/dev", "POST", 403, "'fal.ai'"),
    ("https://queue.fal.ai/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://api.fal.run/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://fal.dev/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://falrun.com/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://v3.fal.media/files/upload", "POST", 403, "not allowed"),
    ("https://evil.com/fal-ai/flux/dev", "POST", 403, "target host 'evil.com' is not allowed"),
    ("https://localhost/fal-ai/flux/dev", "POST", 403, "not allowed"),
    # userinfo
    ("https://fal.run@evil.com/x", "POST", 403, "userinfo"),
    ("https://evil.com@fal.run/x", "POST", 403, "userinfo"),
    ("https://user:pw@fal.run/a/b", "POST", 403, "userinfo"),
    ("https://@fal.run/a/b", "POST", 403, "userinfo"),
    # IP literals
    ("https://127.0.0.1/a/b", "POST", 403, "not allowed"),
    ("https://[::1]/a/b", "POST", 403, "IP literal"),
    ("https://[::ffff:127.0.0.1]:443/a/b", "POST", 403, "not allowed"),
    ("https://2130706433/a/b", "POST", 403, "not allowed"),
    ("https://0x7f.1/a/b", "POST", 403, "not allowed"),
    ("https://0177.0.0.1/a/b", "POST", 403, "not allowed"),
    ("https://169.254.169.254/latest/meta-data", "POST", 403, "not allowed"),
    # ports
    ("https://fal.run:443/fal-ai/flux/dev", "POST", 403, "port"),
    ("https://fal.run:8080/fal-ai/flux/dev", "POST", 403, "port"),
    ("https://fal.run:/fal-ai/flux/dev", "POST", 403, "port"),
    ("https://queue.fal.run:443@evil.com/a/b", "POST", 403, "userinfo"),
    # no path / empty path
    ("https://fal.run", "POST", 403, "no path"),
    ("https://fal.run?x=1", "POST", 403, "no path"),
    ("https://fal.run/", "POST", 403, "empty"),
    # encoded traversal / dot segments
    ("https://fal.run/fal-ai/%2e%2e/x", "POST", 403, "percent-encoding"),
    ("https://fal.run/fal-ai/..%2fx", "POST", 403, "percent-encoding"),
    ("https://fal.run/fal-ai/%252e%252e/x", "POST", 403, "percent-encoding"),
    ("https://fal.run/fal-ai/flux%2fdev", "POST", 403, "percent-encoding"),
    ("https://fal.run/fal-ai/flux%5cdev", "POST", 403, "percent-encoding"),
    ("https://fal.run/fal-ai/flux%00dev", "POST", 403, "percent-encoding"),
    ("https://fal.run/fal-ai/flux/../../admin", "POST", 403, "dot segment"),
    ("https://fal.run/fal-ai/./flux/dev", "POST", 403, "dot segment"),
    ("https://fal.run/fal-ai/.../flux", "POST", 403, "dot segment"),
    ("https://rest.fal.ai/storage/upload/../../admin", "POST", 403, "dot segment"),
    ("https://rest.fal.ai/tokens/../admin", "POST", 403, "dot segment"),
    # backslashes
    ("https://fal.run\\@evil.com/x", "POST", 403, "backslash"),
    ("https://fal.run/fal-ai\\flux", "POST", 403, "backslash"),
    ("https:\\\\fal.run/fal-ai/flux", "POST", 403, "backslash"),
    # header injection, whitespace, control characters
    ("https://fal.run/fal-ai/flux/dev\r\nX-Evil: 1", "POST", 403, "disallowed character"),
    ("https://fal.run/fal-ai/flux/dev\nx", "POST", 403, "'\\n'"),
    ("https://fal.run/fal-ai/flux%0d%0aX-Evil:1", "POST", 403, "percent-encoding"),
    ("https://fal.run/fal-ai/flux/dev\x00", "POST", 403, "'\\x00'"),
    ("https://fal.run/fal-ai/flux/\tdev", "POST", 403, "disallowed character"),
    ("https://fal.run/fal-ai/flux dev", "POST", 403, "disallowed character"),
    (" https://fal.run/fal-ai/flux/dev", "POST", 403, "position 0"),
    ("https://fal.run/fal-ai/flux/dev\x7f", "POST", 403, "disallowed character"),
    # non-ASCII
    ("https://f\u0430l.run/fal-ai/flux/dev", "POST", 403, "'\\u0430'"),
    ("https://\uff46al.run/fal-ai/flux/dev", "POST", 403, "disallowed character"),
    ("https://fal.run/fal-ai/flux/d\u00e9v", "POST", 403, "disallowed character"),
    ("https://fal.run\u3002evil.com/fal-ai/flux", "POST", 403, "disallowed character"),
    # empty segments / trailing slashes
    ("https://fal.run//fal-ai/flux/dev", "POST", 403, "empty segment"),
    ("https://fal.run/fal-ai//flux/dev", "POST", 403, "empty segment"),
    ("https://fal.run/fal-ai/flux/dev/", "POST", 403, "empty segment"),
    ("https://queue.fal.run/fal-ai/flux/requests/x/status/", "GET", 403, "empty segment"),
    ("https://rest.fal.ai/storage/upload/initiate/?storage_type=fal-cdn-v3", "POST", 403, ""),
    # overlong target / segments / too many segments
    ("https://fal.run/" + "a/" * 1100 + "b", "POST", 403, "too long"),
    ("https://fal.run/fal-ai/" + LONG_SEG, "POST", 403, "too long"),
    ("https://queue.fal.run/" + LONG_SEG + "/flux/requests/x", "GET", 403, "too long"),
    ("https://queue.fal.run/fal-ai/flux/requests/" + "x" * 513, "GET", 403, "too long"),
    ("https://fal.run/" + "/".join(["a"] * 17), "POST", 403, "too many segments"),
    # disallowed path characters
    ("https://fal.run/fal-ai/flux;x=1/dev", "POST", 403, "disallowed characters"),
    ("https://fal.run/fal-ai/fl@ux/dev", "POST", 403, "disallowed characters"),
    ("https://fal.run/fal-ai/flux/dev$", "POST", 403, "disallowed characters"),
    # fragments
    ("https://fal.run/fal-ai/flux/dev#x", "POST", 403, "fragment"),
    ("https://evil.com#@fal.run/fal-ai/flux/dev", "POST", 403, "fragment"),
    # too-short endpoint ids
    ("https://fal.run/flux", "POST", 403, "owner/alias"),
    ("https://queue.fal.run/flux", "POST", 403, "owner/alias"),
    ("https://queue.fal.run/workflows/x", "POST", 403, "namespace/owner/alias"),
    ("https://fal.run/fal-ai/stream", "POST", 403, "owner/alias"),
    ("https://fal.run/stream", "POST", 403, "endpoint id"),
    ("https://fal.run/fal-ai/flux/stream/stream", "POST", 403, "stream"),
    ("https://fal.run/fal-ai/flux/STREAM", "POST", 403, "lower case"),
    ("https://queue.fal.run/Workflows/me/wf", "POST", 403, "lower case"),
    # rest.fal.ai: only three paths
    (
        "https://rest.fal.ai/storage/upload/complete-multipart?storage_type=fal-cdn-v3",
        "POST",
        403,
        "not allowed on rest.fal.ai",
    ),
    (
        "https://rest.fal.ai/storage/auth/token?storage_type=fal-cdn-v3",
        "POST",
        403,
        "not allowed on rest.fal.ai",
    ),
    ("https://rest.fal.ai/tokens", "POST", 403, "not allowed on rest.fal.ai"),
    ("https://rest.fal.ai/tokens//", "POST", 403, "empty segment"),
    ("https://rest.fal.ai/admin/keys", "POST", 403, "not allowed"),
    ("https://rest.fal.ai/fal-ai/flux/dev", "POST", 403, "not allowed"),
    ("https://rest.fal.ai/Storage/upload/initiate?storage_type=fal-cdn-v3", "POST", 403, ""),
    # query parameters
    (f"{Q}/fal-ai/flux/requests/{RID}/status?logs=2", "GET", 403, "'logs' must be one of"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?logs=TRUE", "GET", 403, "'logs'"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?logs=1&logs=0", "GET", 403, "duplicate"),
    (
        f"{Q}/fal-ai/flux/requests/{RID}/status?x=1",
        "GET",
        403,
        "query parameter 'x' is not allowed for status",
    ),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?logs=1;x=2", "GET", 403, "';'"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?logs=1&", "GET", 403, "empty parameter"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?&", "GET", 403, "empty parameter"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?a", "GET", 403, "no '=value'"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?=1", "GET", 403, "malformed"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?LOGS=1", "GET", 403, "malformed"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?lo%67s=1", "GET", 403, "malformed"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?logs=%zz", "GET", 403, "invalid percent"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status?logs=1%", "GET", 403, "invalid percent"),
    (f"{Q}/fal-ai/flux/requests/{RID}?logs=1", "GET", 403, "not allowed for result"),
    (f"{Q}/fal-ai/flux/requests/{RID}/cancel?logs=1", "PUT", 403, "not allowed for cancel"),
    (f"{Q}/fal-ai/flux/dev?logs=1", "POST", 403, "not allowed for submit"),
    (f"{Q}/fal-ai/flux/dev?fal_webhook=javascript:alert(1)", "POST", 403, "http(s) URL"),
    (f"{Q}/fal-ai/flux/dev?fal_webhook=", "POST", 403, "http(s) URL"),
    (f"{Q}/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fa%0d%0aX", "POST", 403, "non-printable"),
    (f"{Q}/fal-ai/flux/dev?fal_webhook=https%3A%2F%2F%C3%A9", "POST", 403, "non-ASCII"),
    (f"{Q}/fal-ai/flux/dev?fal_webhook=https://a&fal_webhook=https://b", "POST", 403, "duplicate"),
    (f"{R}/fal-ai/flux/dev?fal_webhook=https://a", "POST", 403, "not allowed for run"),
    (f"{R}/fal-ai/flux/dev/stream?fal_jwt_token=x", "POST", 403, "not allowed for stream"),
    (f"{REST}/storage/upload/initiate?storage_type=gcs", "POST", 403, "must be 'fal-cdn-v3'"),
    (f"{REST}/storage/upload/initiate", "POST", 403, "'storage_type' is required"),
    (f"{REST}/storage/upload/initiate-multipart", "POST", 403, "required"),
    (f"{REST}/storage/upload/initiate?", "POST", 403, "required"),
    (f"{REST}/storage/upload/initiate?storage_type=fal-cdn-v3&x=1", "POST", 403, "'x'"),
    (f"{REST}/tokens/?x=1", "POST", 403, "not allowed for token"),
    # wrong methods (405 with allow)
    (f"{Q}/fal-ai/flux/dev", "GET", 405, "method GET not allowed for submit"),
    (f"{R}/fal-ai/flux/dev", "GET", 405, "not allowed for run"),
    (f"{R}/fal-ai/flux/dev", "DELETE", 405, "DELETE"),
    (f"{R}/fal-ai/flux/dev/stream", "PUT", 405, "not allowed for stream"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status", "POST", 405, "not allowed for status"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status", "HEAD", 405, "HEAD"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status/stream", "OPTIONS", 405, "status-stream"),
    (f"{Q}/fal-ai/flux/requests/{RID}", "PUT", 405, "not allowed for result"),
    (f"{Q}/fal-ai/flux/requests/{RID}/cancel", "GET", 405, "not allowed for cancel"),
    (f"{Q}/fal-ai/flux/requests/{RID}/cancel", "PATCH", 405, "PATCH"),
    (f"{Q}/fal-ai/flux/requests/{RID}/cancel", "DELETE", 405, ""),
    (f"{REST}/tokens/", "GET", 405, "not allowed for token"),
    (f"{REST}/storage/upload/initiate?storage_type=fal-cdn-v3", "PUT", 405, ""),
    (f"{R}/fal-ai/flux/dev", "PO\r\nST", 405, "'PO\\r\\nST'"),
    (f"{R}/fal-ai/flux/dev", "", 405, ""),
    # ill-shaped queue request paths
    (f"{Q}/fal-ai/flux/dev/requests/{RID}/status", "GET", 403, "'requests' segment"),
    (f"{Q}/fal-ai/flux/dev/requests/{RID}", "GET", 403, "'requests' segment"),
    (f"{Q}/fal-ai/requests/{RID}/status", "GET", 403, "'requests' segment"),
    (f"{Q}/requests/{RID}/status", "GET", 403, "'requests' segment"),
    (f"{Q}/requests/x/requests/{RID}", "GET", 403, "'requests'"),
    (f"{Q}/fal-ai/flux/requests", "GET", 403, "missing the request id"),
    (f"{Q}/fal-ai/flux/requests/{RID}/statu", "GET", 403, "not a result, status"),
    (f"{Q}/fal-ai/flux/requests/{RID}/status/stream/x", "GET", 403, "not a result"),
    (f"{Q}/fal-ai/flux/requests/{RID}/logs", "GET", 403, "not a result"),
    (f"{Q}/fal-ai/flux/requests/{RID}/Status", "GET", 403, "not a result"),
    (f"{Q}/fal-ai/flux/requests/{RID}/stream", "GET", 403, "not a result"),
    (f"{Q}/fal-ai/flux/Requests/{RID}/status", "GET", 403, "'requests' segment"),
    (f"{Q}/workflows/me/requests/{RID}/status", "GET", 403, "'requests'"),
    (f"{Q}/workflows/me/wf/x/requests/{RID}/status", "GET", 403, "'requests' segment"),
    (f"{Q}/fal-ai/flux/requests/../status", "GET", 403, "dot segment"),
    (f"{Q}/fal-ai/flux/requests/%2e%2e/status", "GET", 403, "percent-encoding"),
    (f"{Q}/fal-ai/flux/requests/a%2Fb/status", "GET", 403, "percent-encoding"),
]


@pytest.mark.parametrize(
    ("raw", "method", "status", "fragment"),
    HOSTILE,
    ids=[f"{i}-{(r or '')[:50]!a}" for i, (r, *_rest) in enumerate(HOSTILE)],
)
def test_hostile_targets(raw: str | None, method: str, status: int, fragment: str) -> None:
    with pytest.raises(TargetError) as ei:
        parse_target(raw, method)
    err = ei.value
    assert err.status == status, err.detail
    assert fragment in err.detail
    # never echo control characters or much attacker input
    assert all(0x20 <= ord(c) < 0x7F for c in err.detail)
    assert len(err.detail) < 400
    if status == 405:
        assert err.allow
        assert method.upper() not in err.allow
    else:
        assert err.allow == ()


def test_hostile_table_size() -> None:
    assert len(HOSTILE) >= 60


def test_405_allow_values() -> None:
    cases = {
        f"{Q}/fal-ai/flux/requests/{RID}/cancel": ("PUT",),
        f"{Q}/fal-ai/flux/requests/{RID}": ("GET",),
        f"{Q}/fal-ai/flux/dev": ("POST",),
    }
    for raw, allow in cases.items():
        with pytest.raises(TargetError) as ei:
            parse_target(raw, "DELETE")
        assert ei.value.status == 405
        assert ei.value.allow == allow


def test_length_boundary() -> None:
    base = f"{Q}/fal-ai/flux/dev?fal_webhook=https://example.com/"
    raw = base + "a" * (MAX_TARGET_LENGTH - len(base))
    assert len(raw) == MAX_TARGET_LENGTH
    assert parse_target(raw, "POST").operation is Operation.SUBMIT
    with pytest.raises(TargetError) as ei:
        parse_target(raw + "a", "POST")
    assert ei.value.status == 403
    assert "too long" in ei.value.detail


def test_detail_truncates_long_host() -> None:
    host = "e" * 1500 + ".com"
    with pytest.raises(TargetError) as ei:
        parse_target(f"https://{host}/a/b", "POST")
    assert ei.value.status == 403
    assert "e" * 101 not in ei.value.detail


def test_non_string_inputs() -> None:
    with pytest.raises(TargetError):
        parse_target(b"https://fal.run/a/b", "POST")  # type: ignore[arg-type]
    with pytest.raises(TargetError) as ei:
        parse_target(f"{R}/fal-ai/flux/dev", None)  # type: ignore[arg-type]
    assert ei.value.status == 405


# --------------------------------------------------------------------------- fuzz

_FRAGMENTS = [
    "https://",
    "HTTPS://",
    "http://",
    "fal.run",
    "queue.fal.run",
    "rest.fal.ai",
    "/",
    "//",
    "fal-ai",
    "flux",
    "dev",
    "stream",
    "requests",
    RID,
    "status",
    "cancel",
    "workflows",
    "comfy",
    "tokens/",
    "storage/upload/initiate",
    "?",
    "&",
    "=",
    ";",
    "#",
    "@",
    ":",
    ":443",
    "%",
    "%2e",
    "%2F",
    "%zz",
    "+",
    "..",
    ".",
    "\\",
    "\r\n",
    "\x00",
    " ",
    "\u0430",
    "\ud800",
    "logs=1",
    "logs=true",
    "fal_webhook=",
    WEBHOOK_RAW,
    "storage_type=fal-cdn-v3",
    "[::1]",
]
_METHODS = ["GET", "POST", "PUT", "get", "post", "GET", "POST", "DELETE", "HEAD", "", "P\u00d6ST"]


_SCHEMES = ["https://", "https://", "HTTPS://", "http://", "https:/", ""]
_HOSTS = ["fal.run", "queue.fal.run", "rest.fal.ai", "QUEUE.fal.run", "fal.run.", "evil.com"]
_SEGMENTS = [
    "fal-ai",
    "flux",
    "dev",
    "stream",
    "requests",
    RID,
    "status",
    "cancel",
    "workflows",
    "comfy",
    "me",
    "wf",
    "storage",
    "upload",
    "initiate",
    "initiate-multipart",
    "tokens",
    "Requests",
    "STREAM",
    "..",
    ".",
    "",
    "a~b_c.d",
    "x" * 130,
]
_QUERIES = [
    "",
    "?",
    "?logs=1",
    "?logs=false",
    "?logs=2",
    f"?fal_webhook={WEBHOOK_RAW}",
    "?fal_webhook=http://h/a+b",
    "?storage_type=fal-cdn-v3",
    "?storage_type=gcs",
    "?&",
    "?a",
    "?logs=1&logs=0",
]


_TEMPLATES = [
    ("fal.run", "fal-ai/flux/dev"),
    ("fal.run", "fal-ai/flux/dev/stream"),
    ("fal.run", "workflows/me/wf/stream"),
    ("queue.fal.run", "fal-ai/flux/dev"),
    ("queue.fal.run", f"fal-ai/flux/requests/{RID}"),
    ("queue.fal.run", f"fal-ai/flux/requests/{RID}/status"),
    ("queue.fal.run", f"comfy/me/app/requests/{RID}/status/stream"),
    ("queue.fal.run", f"fal-ai/flux/requests/{RID}/cancel"),
    ("rest.fal.ai", "storage/upload/initiate"),
    ("rest.fal.ai", "tokens/"),
]


def _structured_target(rng: random.Random) -> str:
    host, path = rng.choice(_TEMPLATES)
    segments = path.split("/")
    if rng.random() < 0.3:
        segments[rng.randrange(len(segments))] = rng.choice(_SEGMENTS)
    scheme = rng.choice(_SCHEMES) if rng.random() < 0.2 else "https://"
    if rng.random() < 0.2:
        host = rng.choice(_HOSTS)
    query = rng.choice(_QUERIES) if rng.random() < 0.5 else ""
    return scheme + host + "/" + "/".join(segments) + query


def _random_target(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        return "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 12)))
    if kind < 0.45:
        alphabet = string.printable + "\u0430\uff46\u00e9\u2028\ufeff"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
    if kind < 0.75:
        return _structured_target(rng)
    if kind < 0.85:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 60))).decode("latin-1")
    # mutate a valid target
    base = rng.choice(
        [
            f"{Q}/fal-ai/flux/requests/{RID}/status?logs=1",
            f"{Q}/fal-ai/flux/dev?fal_webhook={WEBHOOK_RAW}",
            f"{R}/fal-ai/flux/dev/stream",
            f"{REST}/storage/upload/initiate?storage_type=fal-cdn-v3",
        ]
    )
    chars = list(base)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.4 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op < 0.8:
            chars.insert(pos, rng.choice(_FRAGMENTS))
        elif chars:
            chars[min(pos, len(chars) - 1)] = chr(rng.randrange(0x110000))
    return "".join(chars)


def test_fuzz_only_target_error() -> None:
    rng = random.Random(20240501)
    accepted = 0
    for _ in range(4000):
        raw = _random_target(rng)
        method = rng.choice(_METHODS)
        try:
            t = parse_target(raw, method)
        except TargetError as e:
            assert e.status in (400, 403, 405)
            assert all(0x20 <= ord(c) < 0x7F for c in e.detail)
            continue
        accepted += 1
        # anything accepted must re-parse identically from the rebuilt URL
        upstream = t.upstream_path()
        assert all(0x21 <= ord(c) < 0x7F for c in upstream)
        assert parse_target(f"https://{t.host.value}{upstream}", method) == t
    assert accepted > 50
