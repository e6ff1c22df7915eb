"""The shared job store: jobs in Redis, so several proxy processes serve one queue.

Layout under `prefix`: a hash per job (`job:{id}`), its log lines (`logs:{id}`), the queue as a
sorted set by arrival (`queue`, so a position is one ZRANK), and the claimed jobs as a sorted
set scored by lease deadline (`running`). Every state change is one Lua script, so it is atomic
across processes: `claim_next` moves the oldest queued job to `running` with a fresh lease and
a claim token, and only that claim may `finish` it.

While this process runs a job it renews the job's lease every `lease_seconds / 3`. A process
that dies stops renewing; any live process re-queues jobs whose lease ran out (`recover()`,
also run in the background), and never touches jobs whose owner is still alive. Finished jobs
and their logs expire after `result_ttl` seconds (Redis EXPIRE), so `purge_expired` is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Hashable
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from ...limits.batching import BatchingRedis
from .store import CancelOutcome, Job, LogEntry

__all__ = ["RedisJobStore"]

log = logging.getLogger("flux_proxy.local")

_ENQUEUE = """
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], seq, ARGV[1])
return redis.call('ZRANK', KEYS[2], ARGV[1])
"""

# KEYS: queue, running. ARGV: job key prefix, worker, now, lease deadline (ms), claim token
_CLAIM = """
for _ = 1, 16 do
  local ids = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #ids == 0 then return false end
  local id = ids[1]
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'status') == 'IN_QUEUE' then
    redis.call('ZADD', KEYS[2], ARGV[4], id)
    redis.call('HSET', key, 'status', 'IN_PROGRESS', 'worker', ARGV[2], 'started', ARGV[3],
               'claim', ARGV[5])
    redis.call('HINCRBY', key, 'attempts', 1)
    return redis.call('HGETALL', key)
  end
end
return false
"""

# KEYS: job, queue, running. ARGV: id
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_PROGRESS' then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE', 'worker', '', 'started', '', 'claim', '',
           'attempts', math.max(attempts - 1, 0))
redis.call('HDEL', KEYS[1], 'progress')
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'seq'), ARGV[1])
return 1
"""

# KEYS: job, running, queue, logs. ARGV: id, claim token ('' = any), ttl (s), fields...
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'COMPLETED' then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'claim') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'COMPLETED', unpack(ARGV, 4))
redis.call('HDEL', KEYS[1], 'progress')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[3])
return 1
"""

# KEYS: job, queue, logs. ARGV: id, now, result body, ttl
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'not_found' end
if status == 'COMPLETED' then return 'completed' end
if status == 'IN_QUEUE' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'COMPLETED', 'finished', ARGV[2], 'result_status', 499,
             'result', ARGV[3], 'error', 'cancelled before it started',
             'error_type', 'client_cancelled', 'cancel_requested', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  return 'removed'
end
redis.call('HSET', KEYS[1], 'cancel_requested', 1)
return 'requested'
"""

# KEYS: running, queue. ARGV: job key prefix, now (ms)
_RECOVER = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local n = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'status') == 'IN_PROGRESS' then
    redis.call('HSET', key, 'status', 'IN_QUEUE', 'worker', '', 'started', '', 'claim', '')
    redis.call('HDEL', key, 'progress')
    redis.call('ZADD', KEYS[2], redis.call('HGET', key, 'seq'), id)
    n = n + 1
  end
end
return n
"""

# KEYS: running. ARGV: deadline (ms), ids... Returns the ids whose lease was already gone.
_RENEW = """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# KEYS: job, target. ARGV: 'log' entry | 'progress' value. Never recreates an expired job.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == 'progress' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[2])
else
  redis.call('RPUSH', KEYS[2], ARGV[2])
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
end
return 1
"""


def _text(value: bytes | None) -> str:
    return value.decode() if value else ""


def _number(value: bytes | None) -> float | None:
    return float(value) if value else None


def _to_job(fields: dict[bytes, bytes]) -> Job:
    progress = fields.get(b"progress")
    metrics = fields.get(b"metrics")
    status = fields.get(b"result_status")
    error = fields.get(b"error")
    error_type = fields.get(b"error_type")
    return Job(
        id=_text(fields.get(b"id")), app_id=_text(fields.get(b"app_id")),
        endpoint_id=_text(fields.get(b"endpoint_id")),
        input=json.loads(fields.get(b"input") or b"{}"), owner=_text(fields.get(b"owner")),
        public_base=_text(fields.get(b"public_base")), webhook=_text(fields.get(b"webhook")),
        status=_text(fields.get(b"status")) or "IN_QUEUE",  # type: ignore[arg-type]
        created=_number(fields.get(b"created")) or 0.0,
        started=_number(fields.get(b"started")), finished=_number(fields.get(b"finished")),
        worker=_text(fields.get(b"worker")), attempts=int(fields.get(b"attempts") or 0),
        cancel_requested=fields.get(b"cancel_requested") == b"1",
        progress=json.loads(progress) if progress else None,
        result_status=int(status) if status else None, result=fields.get(b"result"),
        error=error.decode() if error is not None else None,
        error_type=error_type.decode() if error_type is not None else None,
        metrics=json.loads(metrics) if metrics else {},
    )


class RedisJobStore:
    """`JobStore` on Redis at `url`; see the module docstring."""

    def __init__(self, url: str, *, password: str = "", prefix: str = "flux-proxy:jobs",
                 result_ttl: float = 3600.0, lease_seconds: float = 30.0) -> None:
        self.url = url
        self._password = password
        self.prefix = prefix
        self.result_ttl = max(1, int(result_ttl))
        self.lease_seconds = lease_seconds
        self._redis: Redis | None = None
        self._held: dict[str, str] = {}  # job id -> claim token, for jobs running here
        self._heartbeat: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}

    # --- keys and plumbing --------------------------------------------------------------------

    def _key(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}:{kind}:{job_id}" if job_id else f"{self.prefix}:{kind}"

    @property
    def _db(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("job store is closed")
        return self._redis

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    def _deadline(self) -> int:
        return int((time.time() + self.lease_seconds) * 1000)

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._redis is not None:
            return
        # Commands issued in one loop turn (many status polls at once) share one round trip.
        redis = BatchingRedis(ConnectionPool.from_url(
            self.url, password=self._password or None, socket_timeout=10,
            socket_connect_timeout=5))
        await redis.ping()
        self._redis = redis
        self._scripts = {name: redis.register_script(source) for name, source in (
            ("enqueue", _ENQUEUE), ("claim", _CLAIM), ("requeue", _REQUEUE),
            ("finish", _FINISH), ("cancel", _CANCEL), ("recover", _RECOVER),
            ("renew", _RENEW), ("touch", _TOUCH))}
        self._heartbeat = asyncio.ensure_future(self._beat())

    async def close(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()
            await redis.connection_pool.disconnect()

    async def _beat(self) -> None:
        """Renew our leases; re-queue jobs whose process stopped renewing theirs."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
                recovered = await self.recover()
                if recovered:
                    log.info("re-queued %d job(s) whose proxy process stopped", recovered)
            except (RedisError, OSError):
                log.warning("renewing job leases in Redis failed", exc_info=True)

    async def renew(self) -> list[str]:
        """Extend the lease of every job running here; return those whose lease had lapsed."""
        if not self._held:
            return []
        lost = await self._call("renew", [self._key("running")],
                                [self._deadline(), *self._held])
        names = [_text(x) for x in lost]
        for job_id in names:
            log.warning("job %s lost its lease (this process stalled); it may run again", job_id)
        return names

    # --- the JobStore protocol ----------------------------------------------------------------

    async def enqueue(self, job: Job) -> int:
        fields: list[Any] = [
            "id", job.id, "app_id", job.app_id, "endpoint_id", job.endpoint_id,
            "input", json.dumps(job.input), "owner", job.owner, "public_base", job.public_base,
            "webhook", job.webhook, "status", "IN_QUEUE", "created", job.created or time.time(),
            "attempts", 0, "cancel_requested", 0,
        ]
        rank = await self._call("enqueue", [self._key("job", job.id), self._key("queue"),
                                            self._key("seq")], [job.id, *fields])
        return int(rank)

    async def claim_next(self, worker: str) -> Job | None:
        token = uuid.uuid4().hex
        flat = await self._call(
            "claim", [self._key("queue"), self._key("running")],
            [self._key("job", "x")[:-1], worker, time.time(), self._deadline(), token])
        if not flat:
            return None
        job = _to_job(dict(zip(flat[::2], flat[1::2], strict=True)))
        self._held[job.id] = token
        return job

    async def requeue(self, job_id: str) -> None:
        self._held.pop(job_id, None)
        await self._call("requeue", [self._key("job", job_id), self._key("queue"),
                                     self._key("running")], [job_id])

    async def progress(self, job_id: str, step: int, total: int) -> None:
        value = json.dumps({"step": step, "total": total})
        await self._call("touch", [self._key("job", job_id), ""], ["progress", value])

    async def append_log(self, job_id: str, entry: LogEntry) -> None:
        await self._call("touch", [self._key("job", job_id), self._key("logs", job_id)],
                         ["log", json.dumps(entry)])

    async def finish(
        self, job_id: str, result_status: int, result: bytes, *, error: str | None = None,
        error_type: str | None = None, metrics: dict[str, float] | None = None,
    ) -> bool:
        token = self._held.pop(job_id, "")
        fields: list[Any] = ["finished", time.time(), "result_status", result_status,
                             "result", result, "metrics", json.dumps(metrics or {})]
        if error is not None:
            fields += ["error", error]
        if error_type is not None:
            fields += ["error_type", error_type]
        done = await self._call(
            "finish", [self._key("job", job_id), self._key("running"), self._key("queue"),
                       self._key("logs", job_id)],
            [job_id, token, self.result_ttl, *fields])
        return bool(done)

    async def cancel(self, job_id: str) -> CancelOutcome:
        body = json.dumps({"detail": "the request was cancelled before it started"})
        outcome = await self._call(
            "cancel", [self._key("job", job_id), self._key("queue"), self._key("logs", job_id)],
            [job_id, time.time(), body, self.result_ttl])
        return _text(outcome)  # type: ignore[return-value]

    async def get(self, job_id: str, *, logs: bool = False) -> Job | None:
        if not logs:  # the hot path (status polls): one round trip, no pipeline
            fields: Any = await self._db.hgetall(self._key("job", job_id))  # type: ignore[misc]
            return _to_job(fields) if fields else None
        async with self._db.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key("job", job_id))
            if logs:
                pipe.lrange(self._key("logs", job_id), 0, -1)
            replies = await pipe.execute()
        if not replies[0]:
            return None
        job = _to_job(replies[0])
        if logs:
            job.logs = [json.loads(line) for line in replies[1]]
        return job

    async def position(self, job_id: str) -> int:
        rank: Any = await self._db.zrank(self._key("queue"), job_id)
        return int(rank) if rank is not None else 0

    async def fingerprints(self, job_ids: list[str]) -> dict[str, Hashable]:
        async with self._db.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self._key("job", job_id), ["status", "progress"])
                pipe.zrank(self._key("queue"), job_id)
                pipe.llen(self._key("logs", job_id))
            replies: list[Any] = await pipe.execute()
        out: dict[str, Hashable] = {}
        for i, job_id in enumerate(job_ids):
            (status, progress), rank, logs = replies[3 * i: 3 * i + 3]
            if status is not None:
                out[job_id] = (status, rank, progress, logs)
        return out

    async def depth(self) -> int:
        return int(await self._db.zcard(self._key("queue")))

    async def recover(self) -> int:
        """Re-queue jobs whose lease expired; jobs a live process is renewing stay put."""
        n = await self._call("recover", [self._key("running"), self._key("queue")],
                             [self._key("job", "x")[:-1], int(time.time() * 1000)])
        return int(n)

    async def purge_expired(self, older_than: float) -> int:
        return 0  # finished jobs carry a Redis EXPIRE
