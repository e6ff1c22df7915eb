"""Only the caller who submitted a request may read, stream, fetch or cancel it."""

from __future__ import annotations

import time

import httpx

from proxy.identity import issue_token
from proxy.identity.tokens import SALT_REQUEST_ID, serializer
from proxy.policy.ownership import binding
from tests.fakes.fal_upstream import FakeFal
from tests.js_client import run_flow
from tests.support import TEST_SECRET, fal_id, proxy_settings, proxy_url, running_proxy

QUEUE = "https://queue.fal.run"
INPUT = {"prompt": "a paper boat", "seed": 9}
NOT_FOUND = {"detail": "Request not found"}


def _expired(fal_request_id: str, caller: str, app: str) -> str:
    """Correctly signed for the right caller, three days ago (the ttl is one day)."""
    s = serializer([TEST_SECRET], SALT_REQUEST_ID)
    signer = s.make_signer()
    signer.get_timestamp = lambda: int(time.time()) - 3 * 86400  # type: ignore[method-assign]
    return signer.sign(s.dump_payload([fal_request_id, binding(caller, app)])).decode()


def _call(client: httpx.Client, url: str, op: str, rid: str, token: str,
          app: str = "fal-ai/flux") -> httpx.Response:
    base = f"{QUEUE}/{app}/requests/{rid}"
    method, target = {
        "status": ("GET", f"{base}/status?logs=1"),
        "stream": ("GET", f"{base}/status/stream"),
        "result": ("GET", base),
        "cancel": ("PUT", f"{base}/cancel"),
    }[op]
    return client.request(method, url, headers={
        "x-fal-target-url": target, "authorization": f"Bearer {token}"})


def test_cross_user_table(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, identity={"resolvers": ["bearer"]},
                              policy={"allow": ["fal-ai/flux/dev", "fal-ai/flux-lora"]})
    alice = issue_token("alice", 3600, settings)
    bob = issue_token("bob", 3600, settings)
    with running_proxy(settings) as server, httpx.Client(timeout=10) as client:
        url = proxy_url(server)
        sub = client.post(url, content=b'{"prompt":"a"}', headers={
            "x-fal-target-url": f"{QUEUE}/fal-ai/flux/dev", "authorization": f"Bearer {alice}",
            "content-type": "application/json"})
        assert sub.status_code == 200
        body = sub.json()
        rid = body["request_id"]
        real = fal_id(rid)
        assert real in fake_fal.jobs and rid != real
        # The submit answer only ever shows the signed id (body, URLs, header).
        assert sub.headers["x-fal-request-id"] == rid
        assert body["status_url"] == f"{QUEUE}/fal-ai/flux/requests/{rid}/status"
        assert body["response_url"] == f"{QUEUE}/fal-ai/flux/requests/{rid}"
        assert body["cancel_url"] == f"{QUEUE}/fal-ai/flux/requests/{rid}/cancel"
        assert real not in sub.text

        tampered = rid[:-3] + ("AAA" if not rid.endswith("AAA") else "BBB")
        cases = {
            "bob with alice's id": (rid, bob, "fal-ai/flux"),
            "tampered id": (tampered, alice, "fal-ai/flux"),
            "expired id": (_expired(real, "user:alice", "fal-ai/flux"), alice, "fal-ai/flux"),
            "fal's bare id": (real, alice, "fal-ai/flux"),
            "alice's id on another app": (rid, alice, "fal-ai/flux-lora"),
            "garbage": ("x" * 40, alice, "fal-ai/flux"),
        }
        fake_fal.clear()
        wrong = []
        for name, (request_id, token, app) in cases.items():
            for op in ("status", "stream", "result", "cancel"):
                r = _call(client, url, op, request_id, token, app)
                if r.status_code != 404 or r.json() != NOT_FOUND:
                    wrong.append((name, op, r.status_code, r.text))
        assert wrong == []
        assert fake_fal.records == []  # not one of them reached fal

        # The owner can: status echoes the signed id, result carries it in the header.
        fake_fal.wait_for(lambda: fake_fal.jobs[real].state(time.monotonic()) == "COMPLETED")
        status = _call(client, url, "status", rid, alice)
        assert status.status_code == 200 and status.json()["request_id"] == rid
        assert status.json()["status_url"].endswith(f"/requests/{rid}/status")
        assert status.headers["x-fal-request-id"] == rid and real not in status.text
        result = _call(client, url, "result", rid, alice)
        assert result.status_code == 200 and result.headers["x-fal-request-id"] == rid
        assert result.json()["prompt"] == "a"
        assert [r.path for r in fake_fal.records] == [
            f"/fal-ai/flux/requests/{real}/status", f"/fal-ai/flux/requests/{real}"]


def test_real_client_ownership(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, identity={"resolvers": ["bearer"]})
    alice = issue_token("alice", 3600, settings)
    bob = issue_token("bob", 3600, settings)
    fake_fal.queue_seconds = 5.0  # still queued when bob tries to cancel it
    with running_proxy(settings) as server:
        url = proxy_url(server)
        sub = run_flow("submit", url, input=INPUT, credentials=alice)
        assert sub["ok"], sub
        rid = sub["requestId"]
        fake_fal.clear()
        for flow in ("result", "cancel"):
            out = run_flow(flow, url, request_id=rid, credentials=bob)
            assert not out["ok"] and out["error"]["status"] == 404, (flow, out)
            assert out["error"]["body"] == NOT_FOUND
        assert fake_fal.records == []
        assert fake_fal.jobs[fal_id(rid)].cancelled_at is None
        # The owner cancels for real, with the id the client was given.
        mine = run_flow("cancel", url, request_id=rid, credentials=alice)
        assert mine["ok"], mine
        assert fake_fal.jobs[fal_id(rid)].cancelled_at is not None


def test_ownership_can_be_turned_off_for_single_tenant_set_ups(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, policy={"ownership": False})
    with running_proxy(settings) as server:
        url = proxy_url(server, settings)
        submitted = httpx.post(url, content=b'{"prompt":"x"}', headers={
            "x-fal-target-url": "https://queue.fal.run/fal-ai/flux/dev"}).json()
        rid = submitted["request_id"]
        assert rid in fake_fal.jobs  # fal's own id, unsigned
        status = httpx.get(url, headers={
            "x-fal-target-url": f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status"})
        assert status.status_code in (200, 202)
