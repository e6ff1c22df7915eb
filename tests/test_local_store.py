"""The SQLite job store: claims are atomic across connections, results expire on time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from proxy.backends.local.sqlite_store import SqliteJobStore
from proxy.backends.local.store import Job


def _job(i: int) -> Job:
    return Job(id=f"job-{i}", app_id="fal-ai/flux", endpoint_id="fal-ai/flux/dev",
               input={"prompt": str(i)})


async def test_every_job_is_claimed_exactly_once_by_competing_stores(tmp_path: Path) -> None:
    stores = [SqliteJobStore(tmp_path / "jobs.sqlite3") for _ in range(2)]
    for store in stores:
        await store.open()
    positions = [await stores[0].enqueue(_job(i)) for i in range(40)]
    assert positions == list(range(40))
    claimed: list[str] = []

    async def dispatcher(store: SqliteJobStore, name: str) -> None:
        while (job := await store.claim_next(name)) is not None:
            claimed.append(job.id)

    await asyncio.gather(*(dispatcher(s, f"d{i}{k}") for i, s in enumerate(stores)
                           for k in range(3)))
    assert sorted(claimed) == sorted(f"job-{i}" for i in range(40))
    assert await stores[1].depth() == 0
    for store in stores:
        await store.close()


async def test_finished_jobs_expire_after_the_ttl_and_queued_ones_never(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    for i in range(3):
        await store.enqueue(_job(i))
    job = await store.claim_next("w")
    assert job is not None
    await store.append_log(job.id, {"message": "step 1/1"})
    assert await store.finish(job.id, 200, b"{}")
    assert not await store.finish(job.id, 500, b"{}")  # a finished job stays finished
    assert await store.cancel("job-1") == "removed"
    assert await store.purge_expired(time.time() - 60) == 0  # still within the TTL
    assert await store.purge_expired(time.time() + 1) == 2
    assert await store.get(job.id) is None and await store.get("job-1") is None
    assert (await store.get("job-2")) is not None  # queued jobs are never purged
    await store.close()


def test_unsafe_local_setups_refuse_to_start(tmp_path: Path) -> None:
    import pytest

    from proxy.app import create_app
    from proxy.settings import ConfigError, settings_from_dict

    local = {"mode": "local", "data_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"server\.workers"):  # SQLite: one process only
        create_app(settings_from_dict({"local": local, "server": {"workers": 2}}))
    with pytest.raises(ConfigError, match="needs a fal key"):
        create_app(settings_from_dict(
            {"local": {**local, "routes": [{"pattern": "*", "backend": "hosted"}]}}))


async def test_purge_drops_upload_reservations_that_were_never_used(tmp_path: Path) -> None:
    from proxy.backends.local.files import FileStore

    files = FileStore(tmp_path, "/fal-local", 1024, 4096, ("text/plain",))
    fresh = await files.initiate({"content_type": "text/plain", "file_name": "a.txt"},
                                 owner="ip:127.0.0.1", base="http://127.0.0.1:1")
    stale = tmp_path / "pending" / f"{'s' * 24}.json"
    stale.write_text('{"expires": 1, "content_type": "text/plain"}')
    files.purge(older_than=0)
    assert not stale.exists()
    remaining = list((tmp_path / "pending").glob("*.json"))
    assert len(remaining) == 1 and remaining[0].stem in fresh["upload_url"]
