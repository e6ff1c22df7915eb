"""The proxy as fal's queue: the real @fal-ai/client against the demo and a fal-style worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.backends.local.sqlite_store import SqliteJobStore
from tests.fakes.fal_upstream import FakeFal
from tests.fakes.fal_worker import FakeWorker
from tests.fakes.server import ServerHandle
from tests.js_client import run_flow
from tests.local_support import Queue, local_settings, wait_until
from tests.support import FAKE_KEY, fal_id, proxy_url, running_proxy

INPUT = {"prompt": "a lighthouse at dusk", "seed": 5, "image_size": "square",
         "num_inference_steps": 6}


@pytest.fixture(scope="module", params=["demo", "http"])
def local_proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[str, FakeWorker | None]]:
    """One proxy per worker kind, shared by this module's flow tests."""
    worker = FakeWorker(step_seconds=0.05, capacity=2).start() if request.param == "http" else None
    workers = ([{"kind": "http", "url": worker.url, "concurrency": 2}] if worker
               else [{"kind": "demo", "step_seconds": 0.05, "concurrency": 2}])
    settings = local_settings(tmp_path_factory.mktemp("local"), workers)
    with running_proxy(settings) as server:
        yield proxy_url(server, settings), worker
    if worker:
        worker.stop()


def _check_output(out: dict[str, Any], inp: dict[str, Any] = INPUT) -> None:
    result = out["result"]
    assert result["seed"] == inp["seed"] and result["prompt"] == inp["prompt"]
    assert result["has_nsfw_concepts"] == [False]
    (image,) = result["images"]
    assert (image["width"], image["height"], image["content_type"]) == (512, 512, "image/jpeg")
    fetched = httpx.get(image["url"])  # served by the proxy, as a browser would load it
    assert fetched.status_code == 200 and fetched.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize("flow", ["subscribe-polling", "subscribe-streaming"])
def test_subscribe_shows_progress_and_returns_the_image(
        local_proxy: tuple[str, FakeWorker | None], flow: str) -> None:
    proxy, worker = local_proxy
    out = run_flow(flow, proxy, input=INPUT, logs=True)
    assert out["ok"], out
    _check_output(out)
    statuses = [u["status"] for u in out["updates"]]
    assert statuses[-1] == "COMPLETED" and "IN_PROGRESS" in statuses
    messages = [e["message"] for u in out["updates"] for e in (u.get("logs") or [])]
    assert "step 1/6" in messages and "step 6/6" in messages
    final_logs = [e["message"] for e in out["updates"][-1]["logs"]]
    assert final_logs.count("step 6/6") == 1  # streamed logs are not repeated
    assert out["updates"][-1]["metrics"]["inference_time"] > 0
    if worker is not None:
        assert worker.completed[fal_id(out["requestId"])] == 1


def test_queue_calls_stream_and_run(local_proxy: tuple[str, FakeWorker | None]) -> None:
    proxy, _ = local_proxy
    out = run_flow("queue", proxy, input=INPUT)
    assert out["ok"], out
    _check_output(out)
    assert out["events"][0]["status"] == "IN_QUEUE" and "queue_position" in out["events"][0]
    assert out["events"][0]["status_url"].startswith("https://queue.fal.run/fal-ai/flux/requests/")

    out = run_flow("stream", proxy, input=INPUT)
    assert out["ok"], out
    _check_output(out)
    steps = [e["progress"]["step"] for e in out["events"][:-1]]
    assert steps and steps == sorted(steps) and steps[-1] <= 6
    assert out["requestId"]

    out = run_flow("run", proxy, input={**INPUT, "sync_mode": True})
    assert out["ok"], out
    assert out["result"]["images"][0]["url"].startswith("data:image/jpeg;base64,")
    assert out["requestId"]


def test_deterministic_demo_image_honours_format_and_count(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, [{"kind": "demo", "step_seconds": 0}])
    inp = {**INPUT, "output_format": "png", "num_images": 2}
    with running_proxy(settings) as server:
        proxy = proxy_url(server, settings)
        first = run_flow("run", proxy, input=inp)
        second = run_flow("run", proxy, input=inp)
    assert first["ok"] and second["ok"], (first, second)
    images = first["result"]["images"]
    assert [i["content_type"] for i in images] == ["image/png", "image/png"]
    assert first["result"]["has_nsfw_concepts"] == [False, False]
    with running_proxy(settings) as server:  # images outlive the process that made them
        a = [httpx.get(i["url"].replace(i["url"].split("/fal-local")[0], server.url)).content
             for i in images]
        b = [httpx.get(i["url"].replace(i["url"].split("/fal-local")[0], server.url)).content
             for i in second["result"]["images"]]
    assert a == b and a[0] != a[1] and a[0][:4] == b"\x89PNG"


def test_invalid_input_is_refused_and_nothing_is_queued(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    with running_proxy(settings) as server:
        proxy = proxy_url(server, settings)
        out = run_flow("run-validation", proxy)
        assert not out["ok"]
        assert out["error"]["name"] == "ValidationError" and out["error"]["status"] == 422
        assert out["error"]["body"]["detail"][0]["loc"] == ["body", "prompt"]
        queue = Queue(proxy)
        bad = queue.submit({"prompt": "x", "num_inference_steps": 500})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]
        assert queue.status("00000000-0000-0000-0000-000000000000").status_code == 404
        assert queue.result("nope").json() == {"detail": "Request not found"}
    import sqlite3
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)


def test_cancel_queued_running_and_finished(tmp_path: Path) -> None:
    with FakeWorker(step_seconds=0.1) as worker:
        settings = local_settings(tmp_path, [{"kind": "http", "url": worker.url}])
        with running_proxy(settings) as server:
            proxy = proxy_url(server, settings)
            queue = Queue(proxy)
            long = {**INPUT, "num_inference_steps": 50}  # 5 s: cancelled long before
            running = queue.submit(long).json()["request_id"]
            queue.wait(running, "IN_PROGRESS")
            # the real client: submit (queued behind `running`), cancel, poll to COMPLETED
            out = run_flow("submit-cancel", proxy, input=INPUT)
            assert out["ok"], out
            assert out["result"]["status"] == "COMPLETED"
            assert out["result"]["error_type"] == "client_cancelled"
            assert worker.started[fal_id(out["requestId"])] == 0  # removed before it ran
            out = run_flow("cancel", proxy, request_id=running)
            assert out["ok"], out
            final = queue.wait(running)
            assert final["error_type"] == "client_cancelled"
            assert fal_id(running) in worker.cancelled and worker.completed[fal_id(running)] == 0
            cancelled = queue.result(running)
            assert cancelled.status_code == 499
            assert "cancel" in cancelled.json()["detail"]
            again = queue.cancel(running)
            assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
            missing = queue.cancel("00000000-0000-0000-0000-000000000000")
            # An id the proxy never signed: ownership answers before the queue is asked.
            assert (missing.status_code, missing.json()) == (404, {"detail": "Request not found"})


def test_status_stream_keepalives_then_closes_after_completed(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, [{"kind": "demo", "step_seconds": 0.05}],
                              keepalive_seconds=0.1, poll_interval=0.05)
    with running_proxy(settings) as server:
        proxy = proxy_url(server, settings)
        queue = Queue(proxy)
        # hold the worker so the streamed job waits in the queue: only keepalives meanwhile
        first = queue.submit({**INPUT, "num_inference_steps": 12}).json()["request_id"]
        rid = queue.submit(INPUT).json()["request_id"]
        target = f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status/stream?logs=1"
        with httpx.stream("GET", proxy, headers={"x-fal-target-url": target},
                          timeout=20) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in resp.iter_lines() if line]
        assert queue.wait(first)["status"] == "COMPLETED"
    events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert ": ping" in lines
    assert events[0]["status"] == "IN_QUEUE" and events[0]["queue_position"] == 0
    assert events[-1]["status"] == "COMPLETED"
    streamed = [entry["message"] for e in events for entry in (e.get("logs") or [])]
    assert streamed.count("step 6/6") == 1  # each log line is sent once
    assert sum(e["status"] == "COMPLETED" for e in events) == 1
    assert any(e.get("progress") for e in events if e["status"] == "IN_PROGRESS")


def test_upload_works_without_a_fal_account(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, upload_max_bytes=1024, upload_quota_bytes=4096)
    with running_proxy(settings) as server:
        proxy = proxy_url(server, settings)
        out = run_flow("upload", proxy)
        assert out["ok"], out
        assert out["result"]["status"] == 200 and out["result"]["text"] == "hello flux"
        assert out["result"]["url"].startswith(f"{server.url}/fal-local/files/")

        initiate = "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3"
        queue = Queue(proxy)
        refused = queue.call("POST", initiate, {"content_type": "text/html", "file_name": "x"})
        assert refused.status_code == 415
        grant = queue.call("POST", initiate, {"content_type": "image/png", "file_name": "a.png"})
        upload, file_url = grant.json()["upload_url"], grant.json()["file_url"]
        assert httpx.put(upload, content=b"x" * 2000,
                         headers={"content-type": "image/png"}).status_code == 413
        assert httpx.put(upload, content=b"png", headers={"content-type": "text/plain"}
                         ).status_code == 415
        assert httpx.get(file_url).status_code == 404  # nothing stored by refused PUTs
        assert httpx.put(upload, content=b"png", headers={"content-type": "image/png"}
                         ).status_code == 200
        assert httpx.get(file_url).content == b"png"
        assert httpx.put(upload, content=b"again", headers={"content-type": "image/png"}
                         ).status_code == 404  # an upload URL works once


def test_uploaded_files_reach_workers_as_data(tmp_path: Path) -> None:
    with FakeWorker() as worker:
        settings = local_settings(tmp_path, [{"kind": "http", "url": worker.url}])
        with running_proxy(settings) as server:
            queue = Queue(proxy_url(server, settings))
            grant = queue.call(
                "POST", "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
                {"content_type": "image/png", "file_name": "ref.png"}).json()
            httpx.put(grant["upload_url"], content=b"\x89PNG-ref",
                      headers={"content-type": "image/png"}).raise_for_status()
            rid = queue.submit({**INPUT, "image_url": grant["file_url"]}).json()["request_id"]
            queue.wait(rid)
    assert worker.inputs[fal_id(rid)]["image_url"] == "data:image/png;base64,iVBORy1yZWY="


@pytest.fixture
def hook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({}, status_code=500 if len(received) == 1 else 200)

    with ServerHandle(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as srv:
        yield f"{srv.url}/hook", received


def test_webhook_is_delivered_with_retries_and_policy_applies(
        tmp_path: Path, hook_receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = hook_receiver
    settings = local_settings(tmp_path, [{"kind": "demo", "step_seconds": 0}],
                              webhook_hosts=["127.0.0.1"], webhook_backoff=0.05)
    # The input policy lets both webhooks through; the local backend's host list then decides.
    policy = dataclasses.replace(settings.policy.inputs["*"], webhook_prefixes=(
        url.rsplit("/", 1)[0] + "/", "http://localhost:1/"))
    settings = dataclasses.replace(settings, policy=dataclasses.replace(
        settings.policy, inputs={"*": policy}))
    with running_proxy(settings) as server:
        queue = Queue(proxy_url(server, settings))
        rid = queue.submit(INPUT, f"?fal_webhook={url}").json()["request_id"]
        queue.wait(rid)
        wait_until(lambda: len(received) >= 2)
        refused = queue.submit(INPUT, "?fal_webhook=http://localhost:1/x")
        assert refused.status_code == 400 and "not allowed" in refused.json()["detail"]
    assert len(received) == 2  # the first delivery got a 500 and was retried
    # Webhooks carry the queue's own id (as fal's do), not the caller-bound signed id.
    assert received[1]["request_id"] == fal_id(rid) and received[1]["status"] == "OK"
    assert received[1]["payload"]["seed"] == INPUT["seed"]


def test_overflow_goes_to_hosted_fal_when_the_local_queue_is_full(
        tmp_path: Path, fake_fal: FakeFal) -> None:
    settings = local_settings(
        tmp_path, [{"kind": "demo", "step_seconds": 0.1}], overflow_depth=1,
        fal={"fal": {"key": FAKE_KEY}, "upstream": {
            "run": fake_fal.run_base, "queue": fake_fal.queue_base, "rest": fake_fal.rest_base}})
    with running_proxy(settings) as server:
        proxy = proxy_url(server, settings)
        queue = Queue(proxy)
        long = {**INPUT, "num_inference_steps": 50}  # 5 s each: the queue stays 1 deep
        running = queue.submit(long).json()["request_id"]
        queue.wait(running, "IN_PROGRESS")
        waiting = queue.submit(long).json()["request_id"]
        assert not fake_fal.jobs
        out = run_flow("subscribe-polling", proxy, input=INPUT)
        assert out["ok"], out
        assert fal_id(out["requestId"]) in fake_fal.jobs  # went to hosted fal
        assert out["result"] == fake_fal.flux_output(INPUT)
        # local jobs still answer through the same route
        assert queue.status(running).json()["status"] == "IN_PROGRESS"
        assert queue.status(waiting).json()["queue_position"] == 0
        for rid in (waiting, running):
            assert queue.cancel(rid).status_code == 202
            assert queue.wait(rid)["error_type"] == "client_cancelled"
    assert all(r.headers.get("authorization") == f"Key {FAKE_KEY}"
               for r in fake_fal.records if r.host != "direct")


def test_upload_to_an_unknown_url_is_refused_before_the_body_is_read(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    with running_proxy(settings) as server:
        r = httpx.put(f"{server.url}/fal-local/upload/{'x' * 24}", content=b"a" * 1_000_000,
                      headers={"content-type": "text/plain"})
    assert r.status_code == 404 and "unknown or expired" in r.json()["detail"]


def test_a_sync_run_whose_caller_leaves_is_cancelled(tmp_path: Path) -> None:
    with FakeWorker(step_seconds=0.1) as worker:
        settings = local_settings(tmp_path, [{"kind": "http", "url": worker.url}])
        with running_proxy(settings) as server:
            with pytest.raises(httpx.ReadTimeout):  # the caller gives up mid-run
                httpx.post(proxy_url(server, settings), timeout=0.8, json={
                    **INPUT, "num_inference_steps": 50},
                    headers={"x-fal-target-url": "https://fal.run/fal-ai/flux/dev"})
            wait_until(lambda: len(worker.cancelled) == 1)
    assert sum(worker.completed.values()) == 0


def test_status_stream_sees_a_change_made_by_another_process(tmp_path: Path) -> None:
    # No worker can take the job (nothing listens there): it waits until the change below.
    settings = local_settings(tmp_path, [{"kind": "http", "url": "http://127.0.0.1:9"}],
                              keepalive_seconds=30, poll_interval=0.05)
    with running_proxy(settings) as server:
        proxy = proxy_url(server, settings)
        rid = Queue(proxy).submit(INPUT).json()["request_id"]
        target = f"https://queue.fal.run/fal-ai/flux/requests/{rid}/status/stream"
        with httpx.stream("GET", proxy, headers={"x-fal-target-url": target},
                          timeout=20) as resp:
            lines = resp.iter_lines()
            assert json.loads(next(line for line in lines if line)[5:])["status"] == "IN_QUEUE"
            # Another process finishes the job: no in-process notice reaches the stream.
            asyncio.run(_finish_elsewhere(tmp_path / "jobs.sqlite3", fal_id(rid)))
            rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert [event["status"] for event in rest] == ["COMPLETED"]


async def _finish_elsewhere(path: Path, job_id: str) -> None:
    store = SqliteJobStore(path)
    await store.open()
    try:
        assert await store.finish(job_id, 200, b'{"images":[]}')
    finally:
        await store.close()
