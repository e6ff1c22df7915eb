"""The proxy route over real HTTP, in front of the fake fal upstream."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.fal_upstream import FakeFal
from tests.support import FAKE_KEY, proxy_settings, proxy_url, running_proxy, signed_id
from tests.test_target import HOSTILE

FLUX = "https://queue.fal.run/fal-ai/flux/dev"


@pytest.fixture
def proxy(fake_fal: FakeFal) -> Iterator[str]:
    settings = proxy_settings(fake_fal)
    with running_proxy(settings) as server:
        yield proxy_url(server, settings)


def _post(url: str, target: str, body: bytes = b'{"prompt":"a cat"}', **headers: str
          ) -> httpx.Response:
    hdrs = {"x-fal-target-url": target, "content-type": "application/json", **headers}
    return httpx.post(url, content=body, headers=hdrs, timeout=10)


def test_key_injected_and_caller_credentials_never_forwarded(proxy: str, fake_fal: FakeFal
                                                             ) -> None:
    r = _post(proxy, FLUX, authorization="Bearer user-session", cookie="session=abc",
              **{"x-fal-queue-priority": "low", "x-fal-store-io": "0", "x-custom": "1",
                 "x-fal-runner-hint": "h1", "user-agent": "ua/1"})
    assert r.status_code == 200, r.text
    (rec,) = fake_fal.requests(host="queue.fal.run")
    assert rec.headers["authorization"] == f"Key {FAKE_KEY}"
    assert "cookie" not in rec.headers
    assert "x-fal-target-url" not in rec.headers
    assert "x-fal-store-io" not in rec.headers and "x-custom" not in rec.headers
    assert rec.headers["x-fal-queue-priority"] == "low"
    assert rec.headers["x-fal-runner-hint"] == "h1"
    assert rec.headers["user-agent"] == "ua/1"
    assert rec.path == "/fal-ai/flux/dev"


def test_body_is_byte_exact_and_status_headers_pass_back(proxy: str, fake_fal: FakeFal) -> None:
    body = b'{ "prompt" : "caf\xc3\xa9",\n "seed": 7 }'
    r = _post(proxy, "https://fal.run/fal-ai/flux/dev", body=body)
    assert r.status_code == 200
    (rec,) = fake_fal.requests(host="fal.run")
    assert rec.body == body
    assert r.json()["prompt"] == "café" and r.json()["seed"] == 7
    assert r.headers["x-fal-request-id"]
    assert "set-cookie" not in r.headers


def test_upstream_error_status_and_body_pass_through(proxy: str, fake_fal: FakeFal) -> None:
    r = _post(proxy, "https://fal.run/fal-ai/flux/dev", body=b'{"seed": 1}')
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_queue_status_202_then_200(proxy: str, fake_fal: FakeFal) -> None:
    rid = _post(proxy, FLUX).json()["request_id"]
    status_url = f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status?logs=1"
    first = httpx.get(proxy, headers={"x-fal-target-url": status_url})
    assert first.status_code == 202 and first.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = httpx.get(proxy, headers={"x-fal-target-url": status_url})
        if r.json()["status"] == "COMPLETED":
            break
        time.sleep(0.05)
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED"
    rec = fake_fal.requests(host="queue.fal.run", method="GET")[-1]
    assert rec.query == "logs=1"


def test_cancel_put_with_empty_body(proxy: str, fake_fal: FakeFal) -> None:
    rid = _post(proxy, FLUX).json()["request_id"]
    r = httpx.put(proxy, headers={
        "x-fal-target-url": f"https://queue.fal.run/fal-ai/flux/requests/{rid}/cancel",
        "content-type": "application/json"})
    assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
    rec = fake_fal.requests(method="PUT")[-1]
    assert rec.body == b""


def test_missing_target_header_is_400(proxy: str, fake_fal: FakeFal) -> None:
    r = httpx.post(proxy, content=b"{}")
    assert r.status_code == 400
    assert "x-fal-target-url" in r.json()["detail"]
    assert fake_fal.records == []


SENDABLE_HOSTILE = [
    (raw, method, status) for raw, method, status, _fragment in HOSTILE
    if raw and raw.isascii() and raw.isprintable() and raw == raw.strip()
    and method in ("GET", "POST", "PUT")
]


def test_hostile_targets_refused_upstream_untouched(proxy: str, fake_fal: FakeFal) -> None:
    """The whole hostile table from test_target, over real HTTP (one server, many requests)."""
    assert len(SENDABLE_HOSTILE) >= 50
    wrong = []
    with httpx.Client(timeout=10) as client:
        for raw, method, status in SENDABLE_HOSTILE:
            r = client.request(method, proxy, headers={"x-fal-target-url": raw}, content=b"{}")
            detail = r.json().get("detail")
            if r.status_code != status or not isinstance(detail, str) or not detail:
                wrong.append((raw, method, r.status_code, r.text))
    assert wrong == []
    assert fake_fal.records == []


def _raw_request(url: str, header_value: bytes) -> tuple[int, bytes]:
    """Send bytes httpx would refuse to send (NUL, high bytes) straight down a socket."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /api/fal/proxy HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
                     b"x-fal-target-url: " + header_value + b"\r\nconnection: close\r\n\r\n{}")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_malformed_header_bytes_never_crash(proxy: str, fake_fal: FakeFal) -> None:
    for raw in (b"\xff\xfe garbage", b"https://fal.run/\xc3\xa9/x", b"https://fal.run/a/b\xff",
                b"\x01\x02", b"%", b"https://fal.run/a/b\x7f"):
        status, body = _raw_request(proxy, raw)
        # uvicorn's parser refuses some bytes itself (400, plain text); what reaches us gets a
        # fal-shaped refusal. Never a 500, never a crash.
        assert status in (400, 403), (raw, status, body)
        if body.startswith(b"{"):
            assert "detail" in json.loads(body)
    assert httpx.get(proxy.rsplit("/api", 1)[0] + "/healthz").status_code == 200
    assert fake_fal.records == []


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_wrong_http_method_is_405(proxy: str, fake_fal: FakeFal, method: str) -> None:
    r = httpx.request(method, proxy, headers={"x-fal-target-url": FLUX})
    assert r.status_code == 405
    assert "GET" in r.headers["allow"]
    assert fake_fal.records == []


def test_wrong_method_for_operation_is_405_with_allow(proxy: str, fake_fal: FakeFal) -> None:
    r = httpx.get(proxy, headers={"x-fal-target-url": FLUX})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "submit" in r.json()["detail"]
    assert fake_fal.records == []


def test_body_over_cap_is_413(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, server={"max_body_bytes": 2048})
    with running_proxy(settings) as server:
        url = proxy_url(server)
        big = b'{"prompt":"' + b"x" * 4096 + b'"}'
        r = _post(url, FLUX, body=big)
        assert r.status_code == 413 and "2048" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no content-length: counted while reading
            for _ in range(8):
                yield b"x" * 512

        r = httpx.post(url, content=chunks(), headers={"x-fal-target-url": FLUX})
        assert r.status_code == 413
        assert _post(url, FLUX, body=b'{"prompt":"ok"}').status_code == 200
    assert len(fake_fal.records) == 1


def test_temporary_tokens_refused_by_default(proxy: str, fake_fal: FakeFal) -> None:
    r = _post(proxy, "https://rest.fal.ai/tokens/", body=b'{"allowed_apps":["flux"]}')
    assert r.status_code == 403 and "token" in r.json()["detail"]
    assert fake_fal.records == []


def test_storage_initiate_forwarded(proxy: str, fake_fal: FakeFal) -> None:
    r = _post(proxy, "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
              body=b'{"content_type":"text/plain","file_name":"a.txt"}')
    assert r.status_code == 200 and r.json()["upload_url"].startswith(fake_fal.base_url)
    (rec,) = fake_fal.requests(host="rest.fal.ai")
    assert rec.path == "/storage/upload/initiate" and rec.query == "storage_type=fal-cdn-v3"


def test_webhook_query_reencoded_exactly(proxy: str, fake_fal: FakeFal) -> None:
    hook = "https%3A%2F%2Fexample.com%2Fhook%3Fa%3D1"
    assert _post(proxy, f"{FLUX}?fal_webhook={hook}").status_code == 200
    (rec,) = fake_fal.requests(host="queue.fal.run")
    assert rec.query == f"fal_webhook={hook}"


# --- upstream failures ---------------------------------------------------------------------


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Swallower:
    """Accepts a connection, reads the request, then hangs up without answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    if conn.recv(65536):
                        self.received += 1
                except OSError:
                    pass


def test_unreachable_upstream_is_502_for_status(fake_fal: FakeFal) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}"
    settings = proxy_settings(None, upstream={"queue": dead, "connect_timeout": 1.0})
    with running_proxy(settings) as server:
        r = httpx.get(proxy_url(server), headers={
            "x-fal-target-url":
            f"https://queue.fal.run/fal-ai/flux/requests/{signed_id('abc')}/status"})
    assert r.status_code == 502
    assert r.json()["detail"] and r.json()["error_type"] == "upstream_unreachable"


def test_submit_with_unknown_outcome_is_not_retryable() -> None:
    swallower = _Swallower()
    settings = proxy_settings(None, upstream={"queue": f"http://127.0.0.1:{swallower.port}"})
    with running_proxy(settings) as server:
        r = _post(proxy_url(server), FLUX)
    assert swallower.received == 1  # the submit did reach the upstream
    assert r.status_code not in (429, 502, 503, 504)
    assert r.status_code == 500
    assert "outcome is unknown" in r.json()["detail"]
    assert r.json()["error_type"] == "upstream_outcome_unknown"


def test_timeouts(fake_fal: FakeFal) -> None:
    fake_fal.slow_seconds = 3
    settings = proxy_settings(fake_fal, upstream={"first_byte_timeout": 0.5})
    with running_proxy(settings) as server:
        url = proxy_url(server)
        run = _post(url, "https://fal.run/fal-ai/fake/slow")
        assert run.status_code == 500 and "outcome is unknown" in run.json()["detail"]
        submit = _post(url, "https://queue.fal.run/fal-ai/fake/slow")
        assert submit.status_code == 500


def test_timeout_on_idempotent_call_is_504(fake_fal: FakeFal) -> None:
    swallower_port = _Hanging().port
    settings = proxy_settings(None, upstream={"queue": f"http://127.0.0.1:{swallower_port}",
                                               "first_byte_timeout": 0.5})
    with running_proxy(settings) as server:
        r = httpx.get(proxy_url(server), headers={
            "x-fal-target-url": f"https://queue.fal.run/fal-ai/flux/requests/{signed_id('abc')}"})
    assert r.status_code == 504 and r.json()["error_type"] == "upstream_timeout"


class _Hanging(_Swallower):
    """Reads the request and never answers (until the test process ends)."""

    def _serve(self) -> None:
        self.conns = []
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)


# --- streaming ------------------------------------------------------------------------------


async def test_stream_events_arrive_unbuffered(proxy: str, fake_fal: FakeFal) -> None:
    fake_fal.stream_events = 4
    fake_fal.stream_delay = 0.3
    arrivals: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        t0 = time.monotonic()
        async with client.stream("POST", proxy, content=b'{"prompt":"x"}', headers={
            "x-fal-target-url": "https://fal.run/fal-ai/flux/dev/stream",
            "accept": "application/json, text/event-stream"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 5  # 4 partial events + the final output
    # The upstream needs >= 1.2 s to finish; the first event must not wait for that.
    assert arrivals[0] < arrivals[-1] - 0.8
    assert all(b - a > 0.15 for a, b in itertools.pairwise(arrivals))


async def test_client_disconnect_closes_upstream_stream(proxy: str, fake_fal: FakeFal) -> None:
    fake_fal.stream_events = 200
    fake_fal.stream_delay = 0.05
    headers = {"x-fal-target-url": "https://fal.run/fal-ai/flux/dev/stream"}
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
        "POST", proxy, content=b'{"prompt":"x"}', headers=headers
    ) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break  # leave after the first event
    assert await fake_fal.wait_for_async(lambda: fake_fal.stream_disconnects == 1, timeout=5)
    assert await fake_fal.wait_for_async(lambda: fake_fal.streams_open == 0, timeout=5)


async def test_status_stream_passes_through(proxy: str, fake_fal: FakeFal) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(proxy, content=b'{"prompt":"x"}',
                              headers={"x-fal-target-url": FLUX})
        rid = r.json()["request_id"]
        events = []
        async with client.stream("GET", proxy, headers={"x-fal-target-url":
                f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status/stream?logs=1"}) as s:
            async for line in s.aiter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
    assert events[-1]["status"] == "COMPLETED"
    assert {e["status"] for e in events} >= {"IN_PROGRESS", "COMPLETED"}


# --- access log -------------------------------------------------------------------------------


def test_access_log_line_has_no_secrets(fake_fal: FakeFal, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    settings = proxy_settings(fake_fal)
    with caplog.at_level(logging.INFO, logger="flux_proxy.access"), \
            running_proxy(settings) as server:
        _post(proxy_url(server), FLUX, authorization="Bearer user-secret-token")
        httpx.post(proxy_url(server), content=b"{}")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "flux_proxy.access"]
    assert len(lines) == 2
    ok, refused = lines
    assert ok["op"] == "submit" and ok["endpoint"] == "fal-ai/flux/dev" and ok["status"] == 200
    assert ok["upstream_ms"] is not None and ok["ms"] >= ok["upstream_ms"]
    assert refused["status"] == 400 and refused["op"] is None
    text = caplog.text
    assert FAKE_KEY not in text and "user-secret-token" not in text


def test_hosted_mode_without_key_refuses_to_start() -> None:
    from proxy.app import create_app
    from proxy.settings import ConfigError, settings_from_dict

    # explicit hosted mode; with mode "auto" (the default) no key means the local demo
    with pytest.raises(ConfigError, match="FAL_KEY"):
        create_app(settings_from_dict({"local": {"mode": "hosted"}}))


def test_event_loop_fixture_sanity() -> None:
    # The streaming tests above run inside pytest-asyncio's loop while the servers run in
    # their own threads; this guards against an accidental shared loop.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


@pytest.mark.parametrize("target", [
    "https://fal.run/fal-ai/fake/slow",  # sync run
    "https://fal.run/fal-ai/fake/slow/stream",  # streamed run, before its first byte
])
def test_a_run_whose_caller_leaves_drops_the_upstream_request(
    fake_fal: FakeFal, target: str
) -> None:
    fake_fal.slow_seconds = 5
    with running_proxy(proxy_settings(fake_fal)) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(proxy_url(server), content=b'{"prompt":"x"}', timeout=0.5,
                       headers={"x-fal-target-url": target})
        assert fake_fal.wait_for(lambda: fake_fal.slow_disconnects == 1, timeout=3)
