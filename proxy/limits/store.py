"""Where budgets live: `limits`' async storage for windows, plus our own slot and usage counters.

`memory://` keeps everything in this process; `redis://` shares it between processes and
hosts (one connection pool serves both `limits` and our counters). Every call is async, and a
Redis call that fails or takes longer than `redis_timeout` raises one of `STORE_ERRORS`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .batching import BatchingRedis
from .settings import LimitsSettings

__all__ = ["STORE_ERRORS", "Backing", "DayUsage", "Slots", "Usage", "open_backing", "today"]

STORE_ERRORS: tuple[type[BaseException], ...] = (
    StorageError, RedisError, OSError, asyncio.TimeoutError,
)


def today(now: float | None = None) -> str:
    """The accounting day (UTC) as YYYY-MM-DD."""
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


@dataclass(slots=True)
class DayUsage:
    """One caller's usage on one day."""

    day: str
    caller: str
    requests: int = 0
    images: int = 0
    cost: float = 0.0


class Slots(Protocol):
    """In-flight slots per caller, each with a safety expiry so a lost release self-heals."""

    async def acquire(self, caller: str, member: str, limit: int) -> tuple[bool, int, float]:
        """(acquired, in flight now, seconds until the oldest slot expires)."""
        ...

    async def rename(self, caller: str, old: str, new: str) -> None: ...

    async def release(self, caller: str, member: str) -> bool: ...


class Usage(Protocol):
    """Per caller and day: requests, images and cost units."""

    async def record(self, caller: str, images: int, cost: float) -> None: ...

    async def read(self, days: list[str], caller: str | None = None) -> list[DayUsage]: ...


class _MemorySlots:
    def __init__(self, expiry: float) -> None:
        self._expiry = expiry
        self._slots: dict[str, dict[str, float]] = defaultdict(dict)

    def _live(self, caller: str) -> dict[str, float]:
        # Every slot gets the same lifetime and renames re-insert, so insertion order is
        # expiry order: drop from the front until the first live one.
        slots = self._slots[caller]
        now = time.monotonic()
        while slots:
            member, until = next(iter(slots.items()))
            if until > now:
                break
            del slots[member]
        return slots

    async def acquire(self, caller: str, member: str, limit: int) -> tuple[bool, int, float]:
        slots = self._live(caller)
        now = time.monotonic()
        if limit and len(slots) >= limit:
            return False, len(slots), next(iter(slots.values())) - now
        slots[member] = now + self._expiry
        return True, len(slots), self._expiry

    async def rename(self, caller: str, old: str, new: str) -> None:
        slots = self._live(caller)
        if slots.pop(old, None) is not None:
            slots[new] = time.monotonic() + self._expiry

    async def release(self, caller: str, member: str) -> bool:
        slots = self._slots.get(caller)
        if not slots or slots.pop(member, None) is None:
            return False
        if not slots:
            del self._slots[caller]
        return True


class _MemoryUsage:
    def __init__(self) -> None:
        self._days: dict[tuple[str, str], DayUsage] = {}

    async def record(self, caller: str, images: int, cost: float) -> None:
        day = today()
        entry = self._days.get((day, caller))
        if entry is None:
            entry = self._days[(day, caller)] = DayUsage(day, caller)
        entry.requests += 1
        entry.images += images
        entry.cost += cost

    async def read(self, days: list[str], caller: str | None = None) -> list[DayUsage]:
        return [u for (day, who), u in sorted(self._days.items())
                if day in days and (caller is None or who == caller)]


# Server time, so several hosts agree on expiries whatever their clocks say.
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


@dataclass(slots=True)
class Backing:
    """The storage behind every budget: a `limits` strategy, slots and usage."""

    kind: str  # "memory" | "redis"
    limiter: RateLimiter  # submit and polling windows
    cost_limiter: RateLimiter  # cost and global windows (weighted hits)
    slots: Slots
    usage: Usage
    storage: Storage
    redis: Redis | None = None
    timeout: float = 0.5

    async def ping(self) -> bool:
        """True when the store answers (always, in memory)."""
        if self.redis is None:
            return True
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), self.timeout))
        except STORE_ERRORS:
            return False

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)


def _strategy(name: str, storage: Storage) -> RateLimiter:
    if name == "sliding-window":
        return SlidingWindowCounterRateLimiter(storage)
    return MovingWindowRateLimiter(storage)


def open_backing(settings: LimitsSettings) -> Backing:
    """Build the store for `settings.storage`. Connects lazily, on first use."""
    prefix = settings.key_prefix
    if not settings.uses_redis:
        storage: Storage = MemoryStorage()
        return Backing("memory", _strategy(settings.strategy, storage),
                       _strategy(settings.cost_strategy, storage),
                       _MemorySlots(settings.concurrency_expiry), _MemoryUsage(), storage)
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(NoBackoff(), 0),  # fail fast; the next request tries again
        "max_connections": 256,
    }
    if settings.redis_password:
        options["password"] = str(settings.redis_password)
    pool = ConnectionPool.from_url(settings.storage, **options)
    redis = BatchingRedis(pool)
    shared: dict[str, Any] = {"connection_pool": pool}  # one pool for limits and our counters
    storage = RedisStorage(
        "async+" + settings.storage, implementation="redispy", wrap_exceptions=True,
        key_prefix=f"{prefix}:limits", **shared,
    )
    _batch_limits_commands(storage, redis)
    return Backing(
        "redis", _strategy(settings.strategy, storage),
        _strategy(settings.cost_strategy, storage),
        _RedisSlots(redis, prefix, settings.concurrency_expiry),
        _RedisUsage(redis, prefix, settings.usage_retention_days),
        storage, redis, settings.redis_timeout,
    )


def _batch_limits_commands(storage: RedisStorage, redis: Redis) -> None:
    """Let `limits` send through the batching client too (limits 5.x's redis-py bridge)."""
    bridge: Any = getattr(storage, "bridge", None)
    if bridge is None or not hasattr(bridge, "register_scripts"):
        return  # another limits layout: it keeps its own client, which is only slower
    bridge.storage = redis
    bridge.connection_getter = lambda _readonly: redis
    bridge.register_scripts()


def recent_days(count: int, now: float | None = None) -> list[str]:
    """The last `count` accounting days, newest first."""
    start = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return [(start - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(count)]
