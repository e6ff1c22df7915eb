"""The Redis job store: several proxy processes share one queue on a real redis-server.

Store level: claims are atomic across competing stores, a dead process's lease expires and its
job is re-queued (a live one's is not), cancels and results cross processes, results expire.
Process level: two real `flux-proxy serve` processes on one Redis with two workers run every
job exactly once, and a job submitted through one is followed and fetched through the other.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from proxy.backends.local.redis_store import RedisJobStore
from proxy.backends.local.store import Job
from proxy.backends.router import build_backend
from proxy.settings import ConfigError, settings_from_dict
from tests.fakes.fal_worker import FakeWorker
from tests.fakes.redis_server import RedisServer
from tests.js_client import run_flow
from tests.local_support import Queue, wait_until
from tests.support import TEST_SECRET, fal_id
from tests.test_local_durability import _free_port, serve


def _job(i: int) -> Job:
    return Job(id=f"job-{i}", app_id="fal-ai/flux", endpoint_id="fal-ai/flux/dev",
               input={"prompt": str(i)})


def _store(redis: RedisServer, prefix: str, **kw: float) -> RedisJobStore:
    return RedisJobStore(redis.url, prefix=prefix, **kw)  # type: ignore[arg-type]


async def test_every_job_is_claimed_exactly_once_by_competing_stores(
        redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    stores = [_store(redis_server, prefix) for _ in range(3)]
    for store in stores:
        await store.open()
    positions = [await stores[i % 3].enqueue(_job(i)) for i in range(60)]
    assert positions == list(range(60))  # every process sees one queue
    assert await stores[2].position("job-59") == 59
    claimed: list[str] = []

    async def dispatcher(store: RedisJobStore, name: str) -> None:
        while (job := await store.claim_next(name)) is not None:
            assert job.status == "IN_PROGRESS" and job.attempts == 1
            claimed.append(job.id)

    await asyncio.gather(*(dispatcher(s, f"d{i}{k}") for i, s in enumerate(stores)
                           for k in range(4)))
    assert sorted(claimed) == sorted(f"job-{i}" for i in range(60))
    assert await stores[1].depth() == 0
    for store in stores:
        await store.close()


async def test_a_dead_process_lease_expires_and_its_job_runs_again(
        redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    dead, alive = _store(redis_server, prefix, lease_seconds=1), _store(redis_server, prefix)
    await dead.open()
    await alive.open()
    for i in range(2):
        await alive.enqueue(_job(i))
    lost = await dead.claim_next("a")
    mine = await alive.claim_next("b")
    assert lost is not None and mine is not None
    await dead.close()  # stops renewing, as a killed process would
    assert await alive.recover() == 0  # leases still valid: nothing is stolen
    await alive.append_log(lost.id, {"message": "step 1/2"})
    await asyncio.sleep(1.1)
    assert await alive.renew() == []  # our own lease is renewed, never lost
    assert await alive.recover() == 1  # only the dead process's job goes back
    back = await alive.get(lost.id)
    assert back is not None and back.status == "IN_QUEUE"
    again = await alive.claim_next("b")
    assert again is not None and again.id == lost.id and again.attempts == 2
    assert await alive.finish(again.id, 200, b'{"ok":1}')
    assert (await alive.get(mine.id)).status == "IN_PROGRESS"  # type: ignore[union-attr]
    await alive.close()


async def test_a_stale_claim_cannot_finish_a_job_that_was_handed_on(
        redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    slow, other = _store(redis_server, prefix), _store(redis_server, prefix)
    await slow.open()
    await other.open()
    await other.enqueue(_job(1))
    assert await slow.claim_next("a") is not None
    await slow._db.zadd(f"{prefix}:running", {"job-1": 0})  # its lease lapsed (a long stall)
    assert await other.recover() == 1
    assert await other.claim_next("b") is not None
    assert not await slow.finish("job-1", 200, b"{}")  # the stale claim is refused
    assert await other.finish("job-1", 200, b'{"by":"b"}')
    done = await slow.get("job-1")
    assert done is not None and done.result == b'{"by":"b"}'
    await slow.close()
    await other.close()


async def test_cancel_status_logs_and_expiry_cross_processes(redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    a, b = _store(redis_server, prefix, result_ttl=1), _store(redis_server, prefix, result_ttl=1)
    await a.open()
    await b.open()
    for i in range(3):
        await a.enqueue(_job(i))
    running = await a.claim_next("w")
    assert running is not None
    await a.progress(running.id, 3, 10)
    await a.append_log(running.id, {"message": "step 3/10"})
    seen = await b.get(running.id, logs=True)
    assert seen is not None and seen.progress == {"step": 3, "total": 10}
    assert [e["message"] for e in seen.logs] == ["step 3/10"]
    assert await b.cancel("job-1") == "removed"
    assert await b.cancel(running.id) == "requested"
    assert (await a.get(running.id)).cancel_requested  # type: ignore[union-attr]
    assert await b.position("job-2") == 0
    assert await a.finish(running.id, 499, b'{"detail":"cancelled"}', error="cancelled",
                          error_type="client_cancelled")
    assert await b.cancel(running.id) == "completed"
    assert await b.cancel("nope") == "not_found"
    removed = await b.get("job-1")
    assert removed is not None and removed.result_status == 499
    assert removed.error_type == "client_cancelled"

    for _ in range(40):  # bounded: finished jobs carry a 1 s EXPIRE
        if await a.get(running.id) is None and await a.get("job-1") is None:
            break
        await asyncio.sleep(0.1)
    assert await a.get(running.id) is None and await a.get("job-1") is None
    assert await a.get("job-2") is not None  # queued jobs never expire
    await a.close()
    await b.close()


def test_redis_settings_keep_the_password_out_of_the_url() -> None:
    with pytest.raises(ConfigError, match=r"local\.redis_url"):
        settings_from_dict({"local": {"store": "redis", "redis_url": "redis://:pw@host/0"}})
    ok = settings_from_dict({"server": {"workers": 2}, "identity": {"secrets": [TEST_SECRET]},
                             "local": {"store": "redis", "redis_password": "s3cret-pass"}})
    assert "s3cret" not in repr(ok.local) and ok.local.redis_password == "s3cret-pass"
    build_backend(ok)  # several server workers are fine on the shared store...
    with pytest.raises(ConfigError, match=r"server\.workers"):  # ...not on one SQLite file
        build_backend(settings_from_dict({"server": {"workers": 2}, "local": {"mode": "local"},
                                          "identity": {"secrets": [TEST_SECRET]}}))


INPUT = {"prompt": "two harbours", "seed": 5, "image_size": "square_hd",
         "num_inference_steps": 4}


def test_two_proxy_processes_share_one_queue_and_run_each_job_once(
        tmp_path: Path, redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    with FakeWorker("gpu-a", step_seconds=0.01) as wa, FakeWorker("gpu-b", step_seconds=0.01) \
            as wb:
        config = tmp_path / "flux-proxy.toml"
        config.write_text(
            f'[local]\nmode = "local"\ndata_dir = "data"\nhealth_interval = 0.2\n'
            f'poll_interval = 0.05\nstore = "redis"\nredis_url = "{redis_server.url}"\n'
            f'redis_prefix = "{prefix}"\n'
            f'[[local.workers]]\nname = "a"\nkind = "http"\nurl = "{wa.url}"\n'
            f'[[local.workers]]\nname = "b"\nkind = "http"\nurl = "{wb.url}"\n'
            # One signing secret: an id signed by one process verifies on the other.
            f'[identity]\nresolvers = ["address"]\nsecrets = ["{TEST_SECRET}"]\n'
            '[limits]\nenabled = false\n')  # one test address sends every job
        ports = [_free_port(), _free_port()]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with serve(tmp_path / "a", ports[0], "--config", str(config)), \
                serve(tmp_path / "b", ports[1], "--config", str(config)):
            queues = [Queue(f"http://127.0.0.1:{p}/api/fal/proxy") for p in ports]
            jobs = [queues[i % 2].submit({**INPUT, "seed": i}).json()["request_id"]
                    for i in range(16)]
            for i, rid in enumerate(jobs):
                other = queues[(i + 1) % 2]  # followed through the process it was not sent to
                assert other.wait(rid, timeout=30)["status"] == "COMPLETED"
                result = other.result(rid)
                assert result.status_code == 200
                assert result.json()["seed"] == i
            # The real client: submitted through A, followed and fetched through B.
            out = run_flow("submit", f"http://127.0.0.1:{ports[0]}/api/fal/proxy", input=INPUT)
            assert out["ok"], out
            rid = out["requestId"]
            queues[1].wait(rid, timeout=30)
            polled = run_flow("result", f"http://127.0.0.1:{ports[1]}/api/fal/proxy",
                              request_id=rid)
            assert polled["ok"], polled
            assert polled["result"]["images"][0]["width"] == 1024
            jobs.append(rid)
        executed = wa.completed + wb.completed
        assert all(executed[fal_id(rid)] == 1 for rid in jobs)
        assert executed.total() == len(jobs)
        assert wa.completed and wb.completed  # both workers took jobs
        wait_until(lambda: not wa.running and not wb.running)
