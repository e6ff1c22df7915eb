"""The real `@fal-ai/client` 1.10.1 (Node) through the proxy to the fake fal upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.fal_upstream import FakeFal
from tests.js_client import run_flow
from tests.support import FAKE_KEY, fal_id, proxy_settings, proxy_url, running_proxy

INPUT = {"prompt": "a lighthouse at dusk", "seed": 5, "image_size": "square"}


@pytest.fixture
def proxy(fake_fal: FakeFal) -> Iterator[str]:
    settings = proxy_settings(fake_fal)
    with running_proxy(settings) as server:
        yield proxy_url(server, settings)


def _assert_key_injected(fake: FakeFal) -> None:
    fal_hosts = [r for r in fake.records if r.host != "direct"]
    assert fal_hosts, "nothing reached the upstream"
    assert all(r.headers.get("authorization") == f"Key {FAKE_KEY}" for r in fal_hosts)


@pytest.mark.parametrize("flow", ["subscribe-polling", "subscribe-streaming", "queue"])
def test_subscribe_and_queue_flows(proxy: str, fake_fal: FakeFal, flow: str) -> None:
    out = run_flow(flow, proxy, input=INPUT, logs=True)
    assert out["ok"], out
    assert out["result"] == fake_fal.flux_output(INPUT)
    assert fal_id(out["requestId"]) in fake_fal.jobs  # the client holds the signed id
    statuses = [u["status"] for u in out["updates"]]
    assert statuses[-1] == "COMPLETED"
    if flow != "queue":
        assert "IN_PROGRESS" in statuses
        logs = [entry["message"] for u in out["updates"] for entry in (u.get("logs") or [])]
        assert logs, "logs did not reach onQueueUpdate"
    _assert_key_injected(fake_fal)


def test_submit_then_cancel(proxy: str, fake_fal: FakeFal) -> None:
    fake_fal.queue_seconds = 2
    out = run_flow("submit-cancel", proxy, input=INPUT)
    assert out["ok"], out
    assert out["result"]["status"] == "COMPLETED"
    assert out["result"]["error_type"] == "client_cancelled"
    assert [r.method for r in fake_fal.requests(path_prefix="/fal-ai/flux/requests")
            if r.path.endswith("/cancel")] == ["PUT"]


def test_stream_status(proxy: str, fake_fal: FakeFal) -> None:
    out = run_flow("stream-status", proxy, input=INPUT, logs=True)
    assert out["ok"], out
    assert out["events"][-1]["status"] == "COMPLETED"
    assert out["result"]["status"] == "COMPLETED"


def test_stream_run(proxy: str, fake_fal: FakeFal) -> None:
    out = run_flow("stream", proxy, input=INPUT)
    assert out["ok"], out
    assert len(out["events"]) == fake_fal.stream_events + 1
    assert out["events"][-1] == out["result"] == fake_fal.flux_output(INPUT)
    assert out["requestId"]  # x-fal-request-id passed back


def test_sync_run(proxy: str, fake_fal: FakeFal) -> None:
    out = run_flow("run", proxy, input=INPUT)
    assert out["ok"], out
    assert out["result"] == fake_fal.flux_output(INPUT)
    assert out["requestId"]


def test_storage_upload(proxy: str, fake_fal: FakeFal) -> None:
    out = run_flow("upload", proxy)
    assert out["ok"], out
    assert out["result"]["text"] == "hello flux"
    (initiate,) = fake_fal.requests(host="rest.fal.ai")
    assert initiate.headers["authorization"] == f"Key {FAKE_KEY}"
    (put,) = fake_fal.requests(host="direct", method="PUT")
    assert "authorization" not in put.headers  # the presigned PUT never carries the key


def test_validation_error_reaches_client_as_validation_error(proxy: str, fake_fal: FakeFal
                                                             ) -> None:
    out = run_flow("run-validation", proxy)
    assert not out["ok"]
    assert out["error"]["name"] == "ValidationError"
    assert out["error"]["status"] == 422
    assert out["error"]["body"]["detail"][0]["loc"] == ["body", "prompt"]


def test_client_credentials_are_not_relayed(proxy: str, fake_fal: FakeFal) -> None:
    out = run_flow("run", proxy, input=INPUT, credentials="browser-held-key")
    assert out["ok"], out
    assert all("browser-held-key" not in r.headers.get("authorization", "")
               for r in fake_fal.records)
    _assert_key_injected(fake_fal)
