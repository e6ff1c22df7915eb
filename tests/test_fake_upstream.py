"""Self-tests for the fake fal upstream, the server helper and the JS harness."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.fakes.fal_upstream import FakeFal
from tests.fakes.server import ServerHandle, run_server
from tests.js_client import run_flow

KEY = "test-fal-key"
AUTH = {"Authorization": f"Key {KEY}"}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def sse_events(text: str) -> list[dict]:
    return [
        json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")
    ]


# --------------------------------------------------------------------------- fake directly


def test_auth_required_and_records(fake_fal: FakeFal, client: httpx.Client) -> None:
    r = client.post(
        f"{fake_fal.run_base}/fal-ai/flux/dev?x=1",
        json={"prompt": "cat"},
        headers={"Authorization": "Key wrong", "X-Fal-Foo": "a"},
    )
    assert r.status_code == 401
    assert r.json() == {"detail": "Invalid API key"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-fal-request-id"]
    r = client.post(f"{fake_fal.queue_base}/fal-ai/flux/dev", json={"prompt": "cat"})
    assert r.status_code == 401

    (rec,) = fake_fal.requests(host="fal.run")
    assert (rec.method, rec.path, rec.query) == ("POST", "/fal-ai/flux/dev", "x=1")
    assert rec.headers["authorization"] == "Key wrong"
    assert rec.headers["x-fal-foo"] == "a"
    assert rec.json() == {"prompt": "cat"}
    assert len(fake_fal.requests(path_prefix="/fal-ai/")) == 2
    fake_fal.clear()
    assert fake_fal.records == []


def test_run_output_and_validation(fake_fal: FakeFal, client: httpx.Client) -> None:
    inp = {
        "prompt": "cat",
        "image_size": "portrait_16_9",
        "output_format": "png",
        "num_images": 2,
        "seed": 7,
    }
    r = client.post(f"{fake_fal.run_base}/fal-ai/flux/dev", json=inp, headers=AUTH)
    assert r.status_code == 200
    out = r.json()
    assert out == fake_fal.flux_output(inp)
    assert [(i["width"], i["height"], i["content_type"]) for i in out["images"]] == [
        (576, 1024, "image/png")
    ] * 2
    assert out["seed"] == 7 and out["has_nsfw_concepts"] == [False, False]
    assert out["images"][0]["url"].startswith(f"{fake_fal.base_url}/files/gen/")
    assert client.get(out["images"][0]["url"]).headers["content-type"] == "image/png"

    r = client.post(f"{fake_fal.run_base}/fal-ai/flux/dev", json={"x": 1}, headers=AUTH)
    assert r.status_code == 422
    assert r.json() == {
        "detail": [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
    }
    r = client.post(f"{fake_fal.run_base}/fal-ai/flux/dev", content=b"nope", headers=AUTH)
    assert r.status_code == 422
    r = client.post(f"{fake_fal.run_base}/fal-ai/fake/error500", json={"prompt": "a"}, headers=AUTH)
    assert (r.status_code, r.json()) == (500, {"detail": "boom"})
    r = client.post(
        f"{fake_fal.run_base}/fal-ai/fake/timeout-user", json={"prompt": "a"}, headers=AUTH
    )
    assert r.status_code == 504 and r.headers["x-fal-request-timeout-type"] == "user"
    assert client.get(f"{fake_fal.base_url}/nope").status_code == 404


def test_queue_progression_and_result(fake_fal: FakeFal, client: httpx.Client) -> None:
    r = client.post(
        f"{fake_fal.queue_base}/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fx.y%2Fh",
        json={"prompt": "dog"},
        headers=AUTH,
    )
    assert r.status_code == 200
    sub = r.json()
    rid = sub["request_id"]
    base = f"{fake_fal.queue_base}/fal-ai/flux/requests/{rid}"
    assert sub == {
        "status": "IN_QUEUE",
        "request_id": rid,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "queue_position": 0,
    }
    assert fake_fal.jobs[rid].webhook == "https://x.y/h"

    r = client.get(f"{base}/status?logs=1", headers=AUTH)
    assert (r.status_code, r.json()["status"], r.json()["queue_position"]) == (202, "IN_QUEUE", 0)
    assert client.get(base, headers=AUTH).status_code == 400  # still in progress
    seen: list[str] = []
    while True:
        r = client.get(f"{base}/status?logs=true", headers=AUTH)
        st = r.json()
        seen.append(st["status"])
        if st["status"] == "IN_PROGRESS":
            assert r.status_code == 202 and isinstance(st["logs"], list)
            off = client.get(f"{base}/status?logs=false", headers=AUTH).json()
            assert "logs" in off and off["logs"] is None
        if st["status"] == "COMPLETED":
            assert r.status_code == 200
            assert [lg["message"] for lg in st["logs"]] == [f"step {i}/4" for i in (1, 2, 3, 4)]
            assert st["metrics"]["inference_time"] > 0
            break
        time.sleep(0.05)
    assert "IN_PROGRESS" in seen
    r = client.get(base, headers=AUTH)
    assert r.status_code == 200 and r.headers["x-fal-request-id"] == rid
    assert r.json() == fake_fal.flux_output({"prompt": "dog"})

    # the id belongs to fal-ai/flux only; unknown ids are 404
    assert (
        client.get(
            f"{fake_fal.queue_base}/fal-ai/other/requests/{rid}/status", headers=AUTH
        ).status_code
        == 404
    )
    r = client.get(f"{fake_fal.queue_base}/fal-ai/flux/requests/nope", headers=AUTH)
    assert (r.status_code, r.json()) == (404, {"detail": "Request not found"})


def test_queued_validation_error(fake_fal: FakeFal, client: httpx.Client) -> None:
    fake_fal.queue_seconds = fake_fal.run_seconds = 0
    rid = client.post(
        f"{fake_fal.queue_base}/fal-ai/flux/dev", json={"seed": 1}, headers=AUTH
    ).json()["request_id"]
    st = client.get(f"{fake_fal.queue_base}/fal-ai/flux/requests/{rid}/status", headers=AUTH).json()
    assert st["status"] == "COMPLETED" and st["error"]
    r = client.get(f"{fake_fal.queue_base}/fal-ai/flux/requests/{rid}", headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_status_stream_closes_after_completed(fake_fal: FakeFal, client: httpx.Client) -> None:
    fake_fal.keepalive_seconds = 0.1
    rid = client.post(
        f"{fake_fal.queue_base}/fal-ai/flux/dev", json={"prompt": "x"}, headers=AUTH
    ).json()["request_id"]
    r = client.get(
        f"{fake_fal.queue_base}/fal-ai/flux/requests/{rid}/status/stream?logs=1", headers=AUTH
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0]["status"] == "IN_QUEUE"
    assert events[-1]["status"] == "COMPLETED"
    assert sum(e["status"] == "COMPLETED" for e in events) == 1
    # logs are incremental per event: concatenated they are the 4 steps, once each
    all_logs = [lg["message"] for e in events for lg in (e.get("logs") or [])]
    assert all_logs == [f"step {i}/4" for i in (1, 2, 3, 4)]
    assert ": ping" in r.text
    # The fake's counters settle just after the last byte reaches the client.
    assert fake_fal.wait_for(lambda: fake_fal.streams_open == 0, timeout=3)
    assert fake_fal.stream_disconnects == 0


def test_cancel_outcomes(fake_fal: FakeFal, client: httpx.Client) -> None:
    fake_fal.queue_seconds = 1.0
    rid = client.post(
        f"{fake_fal.queue_base}/fal-ai/flux/dev", json={"prompt": "x"}, headers=AUTH
    ).json()["request_id"]
    base = f"{fake_fal.queue_base}/fal-ai/flux/requests/{rid}"
    r = client.put(f"{base}/cancel", headers=AUTH)
    assert (r.status_code, r.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    st = client.get(f"{base}/status", headers=AUTH).json()
    assert st["status"] == "COMPLETED" and st["error_type"] == "client_cancelled"
    assert client.get(base, headers=AUTH).status_code == 400
    r = client.put(f"{base}/cancel", headers=AUTH, json={})
    assert (r.status_code, r.json()) == (400, {"status": "ALREADY_COMPLETED"})
    r = client.put(f"{fake_fal.queue_base}/fal-ai/flux/requests/nope/cancel", headers=AUTH)
    assert (r.status_code, r.json()) == (404, {"status": "NOT_FOUND"})


def test_run_stream_and_disconnect(fake_fal: FakeFal, client: httpx.Client) -> None:
    url = f"{fake_fal.run_base}/fal-ai/flux/dev/stream"
    r = client.post(url, json={"prompt": "x"}, headers=AUTH)
    events = sse_events(r.text)
    assert [e.get("partial") for e in events[:-1]] == [0, 1, 2]
    assert events[-1] == fake_fal.flux_output({"prompt": "x"})
    assert fake_fal.stream_disconnects == 0

    fake_fal.stream_events, fake_fal.stream_delay = 1000, 0.05
    with client.stream("POST", url, json={"prompt": "x"}, headers=AUTH) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                break
    # leaving the block closes the connection -> the fake sees http.disconnect
    assert fake_fal.wait_for(lambda: fake_fal.stream_disconnects == 1, timeout=5)
    assert fake_fal.wait_for(lambda: fake_fal.streams_open == 0, timeout=5)


def test_slow_endpoint_disconnect(fake_fal: FakeFal) -> None:
    fake_fal.slow_seconds = 0.3
    with httpx.Client(timeout=5) as c:
        r = c.post(f"{fake_fal.run_base}/fal-ai/fake/slow", json={"prompt": "x"}, headers=AUTH)
        assert r.status_code == 200
    fake_fal.slow_seconds = 5
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.2) as c:
        c.post(f"{fake_fal.run_base}/fal-ai/fake/slow", json={"prompt": "x"}, headers=AUTH)
    fake_fal.wait_for(lambda: fake_fal.slow_disconnects == 1, timeout=3)


def test_upload_initiate_put_get(fake_fal: FakeFal, client: httpx.Client) -> None:
    r = client.post(
        f"{fake_fal.rest_base}/storage/upload/initiate?storage_type=fal-cdn-v3",
        json={"content_type": "text/plain", "file_name": "a b.txt"},
        headers=AUTH,
    )
    assert r.status_code == 200
    up = r.json()
    assert up["upload_url"].startswith(f"{fake_fal.base_url}/_upload/")
    pre = client.options(
        up["upload_url"], headers={"Origin": "http://x", "Access-Control-Request-Method": "PUT"}
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"
    r = client.put(up["upload_url"], content=b"hi", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    r = client.get(up["file_url"])
    assert (r.status_code, r.content, r.headers["content-type"]) == (200, b"hi", "text/plain")
    token = up["upload_url"].split("/_upload/")[1].split("?")[0]
    assert fake_fal.uploads[token] == ("text/plain", b"hi")

    mp = client.post(
        f"{fake_fal.rest_base}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
        json={"content_type": "application/octet-stream", "file_name": "b.bin"},
        headers=AUTH,
    ).json()
    u = urlsplit(mp["upload_url"])
    root = f"{u.scheme}://{u.netloc}{u.path}"
    parts = [
        client.put(f"{root}/{n}?{u.query}", content=c).json() for n, c in ((1, b"ab"), (2, b"cd"))
    ]
    assert parts[0]["partNumber"] == 1 and parts[0]["etag"].startswith('"')
    assert client.post(f"{root}/complete?{u.query}", json={"parts": parts}).json() == {}
    assert client.get(mp["file_url"]).content == b"abcd"

    r = client.post(f"{fake_fal.rest_base}/tokens/", json={"allowed_apps": ["flux"]}, headers=AUTH)
    assert (r.status_code, r.json()) == (201, "fake.jwt.token")


def test_server_handle_lifespan_failure() -> None:
    async def bad_app(scope, receive, send):  # type: ignore[no-untyped-def]
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "nope"})

    with pytest.raises(RuntimeError):
        ServerHandle(bad_app).start()

    async def ok_app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with run_server(ok_app) as srv:
        assert httpx.get(srv.url).status_code == 204
        port = srv.port
    with socket.socket() as s:  # port is free again after stop
        assert s.connect_ex(("127.0.0.1", port)) != 0


# --------------------------------------------------------------------------- real JS client


def make_passthrough_proxy(fake: FakeFal) -> Starlette:
    """A throwaway x-fal-target-url proxy: maps real fal hosts onto the fake, injects the key."""
    client = httpx.AsyncClient(timeout=30)
    forward = ("content-type", "accept", "user-agent")

    async def proxy(request: Request) -> StreamingResponse | JSONResponse:
        target = request.headers.get("x-fal-target-url")
        if not target:
            return JSONResponse("Invalid request", status_code=400)
        t = urlsplit(target)
        base = fake.host_map.get(t.hostname or "")
        if base is None:
            return JSONResponse("Invalid request", status_code=400)
        url = base + t.path + (f"?{t.query}" if t.query else "")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k in forward or (k.startswith("x-fal-") and k != "x-fal-target-url")
        }
        headers["authorization"] = f"Key {fake.key}"
        up = client.build_request(
            request.method, url, headers=headers, content=await request.body()
        )
        resp = await client.send(up, stream=True)
        keep = {
            k: v
            for k, v in resp.headers.items()
            if k in ("content-type", "x-fal-request-id", "x-fal-request-timeout-type")
        }
        return StreamingResponse(
            resp.aiter_raw(),
            status_code=resp.status_code,
            headers=keep,
            background=BackgroundTask(resp.aclose),
        )

    return Starlette(routes=[Route("/api/fal/proxy", proxy, methods=["GET", "POST", "PUT"])])


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_real_js_client_through_passthrough_proxy(fake_fal: FakeFal) -> None:
    fake_fal.run_seconds = 0.6  # wide enough to see IN_PROGRESS polls on a loaded machine
    with run_server(make_passthrough_proxy(fake_fal)) as proxy:
        purl = f"{proxy.url}/api/fal/proxy"
        inp = {"prompt": "a red fox", "image_size": "square_hd", "seed": 42}

        out = run_flow("subscribe-polling", purl, input=inp, logs=True)
        assert out["ok"], out
        assert out["result"] == fake_fal.flux_output(inp)
        assert out["requestId"] in fake_fal.jobs
        statuses = [u["status"] for u in out["updates"]]
        assert statuses[-1] == "COMPLETED" and "IN_PROGRESS" in statuses
        assert out["updates"][-1]["logs"]
        sub = fake_fal.requests(host="queue.fal.run", method="POST")[-1]
        assert sub.path == "/fal-ai/flux/dev" and sub.json() == inp
        assert sub.headers["x-fal-queue-priority"] == "normal"
        assert sub.headers["authorization"] == f"Key {KEY}"
        polls = fake_fal.requests(host="queue.fal.run", method="GET")
        assert polls and all(p.path.startswith("/fal-ai/flux/requests/") for p in polls)
        assert "logs=1" in polls[0].query

        out = run_flow("stream", purl, input=inp)
        assert out["ok"], out
        assert out["result"] == fake_fal.flux_output(inp)
        assert [e.get("partial") for e in out["events"][:-1]] == [0, 1, 2]
        assert out["events"][-1] == out["result"]
        assert out["requestId"]

        out = run_flow("upload", purl)
        assert out["ok"], out
        assert out["result"]["text"] == "hello flux"
        assert out["result"]["url"].startswith(f"{fake_fal.base_url}/files/")
        init = fake_fal.requests(host="rest.fal.ai")[-1]
        assert init.query == "storage_type=fal-cdn-v3"
        assert init.json()["content_type"] == "text/plain"
        put = fake_fal.requests(host="direct", method="PUT")[-1]
        assert "authorization" not in put.headers and put.body == b"hello flux"

        out = run_flow("run-validation", purl)
        assert not out["ok"]
        assert out["error"]["name"] == "ValidationError"
        assert out["error"]["status"] == 422
        assert out["error"]["body"]["detail"][0]["loc"] == ["body", "prompt"]
