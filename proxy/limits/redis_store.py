"""The Redis side of the limits store: loaded only when `limits.storage` is `redis://`."""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .batching import BatchingRedis
from .redis_engine import RedisEngine
from .resp import RedisLink
from .settings import LimitsSettings
from .store import STORE_ERRORS, Backing, DayUsage, today

__all__ = ["open_redis_backing"]

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[1])
if limit > 0 and n >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, n, tostring(tonumber(first[2]) - now)}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return {1, n + 1, ARGV[2]}
"""
_RENAME = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
end
return 1
"""


class _RedisSlots:
    def __init__(self, redis: Redis, prefix: str, expiry: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:inflight:"
        self._expiry = expiry
        self._acquire = redis.register_script(_ACQUIRE)
        self._rename = redis.register_script(_RENAME)

    async def acquire(self, caller: str, member: str, limit: int) -> tuple[bool, int, float]:
        ok, n, wait = await self._acquire(
            keys=[self._prefix + caller], args=[limit, self._expiry, member]
        )
        return bool(ok), int(n), float(wait)

    async def rename(self, caller: str, old: str, new: str) -> None:
        await self._rename(keys=[self._prefix + caller], args=[old, new, self._expiry])

    async def release(self, caller: str, member: str) -> bool:
        return bool(await self._redis.zrem(self._prefix + caller, member))


class _RedisUsage:
    def __init__(self, redis: Redis, prefix: str, retention_days: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:usage:"
        self._ttl = retention_days * 86400 + 86400

    async def record(self, caller: str, images: int, cost: float) -> None:
        day = today()
        key = f"{self._prefix}{day}:{caller}"
        members = f"{self._prefix}{day}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(key, "requests", 1)
        pipe.hincrby(key, "images", images)
        pipe.hincrbyfloat(key, "cost", cost)
        pipe.expire(key, self._ttl)
        pipe.sadd(members, caller)
        pipe.expire(members, self._ttl)
        await pipe.execute()

    async def read(self, days: list[str], caller: str | None = None) -> list[DayUsage]:
        out: list[DayUsage] = []
        for day in days:
            members: Any = await self._redis.smembers(f"{self._prefix}{day}")  # type: ignore[misc]
            callers = [caller] if caller is not None else sorted(m.decode() for m in members)
            for who in callers:
                raw: Any = await self._redis.hgetall(  # type: ignore[misc]
                    f"{self._prefix}{day}:{who}")
                if raw:
                    out.append(DayUsage(day, who, int(raw.get(b"requests", 0)),
                                        int(raw.get(b"images", 0)),
                                        round(float(raw.get(b"cost", 0)), 4)))
        return out


def open_redis_backing(settings: LimitsSettings) -> Backing:
    """Build the Redis-backed store. Connects lazily, on first use."""
    prefix = settings.key_prefix
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(NoBackoff(), 0),  # fail fast; the next request tries again
        "max_connections": 256,
    }
    if settings.redis_password:
        options["password"] = str(settings.redis_password)
    pool = ConnectionPool.from_url(settings.storage, **options)
    link = RedisLink(pool, settings.redis_timeout)  # the hot path's own connection
    redis = _LimitsRedis(pool, link)
    slots = _RedisSlots(redis, prefix, settings.concurrency_expiry)
    usage = _RedisUsage(redis, prefix, settings.usage_retention_days)
    engine = RedisEngine(link, prefix, sliding=settings.strategy == "sliding-window",
                         cost_sliding=settings.cost_strategy == "sliding-window",
                         slot_expiry=settings.concurrency_expiry,
                         usage_retention_days=settings.usage_retention_days)
    return Backing("redis", slots, usage, engine, redis, settings.redis_timeout,
                   (*STORE_ERRORS, RedisError))


class _LimitsRedis(BatchingRedis):
    """The batching client, which also closes the engine's link (`Backing.aclose`)."""

    def __init__(self, connection_pool: ConnectionPool, link: RedisLink) -> None:
        super().__init__(connection_pool)
        self._link = link

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self._link.close()
        await super().aclose(close_connection_pool)
