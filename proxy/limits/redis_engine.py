"""The Redis engine: all of one request stage's budget checks in one Lua script.

Why: one redis-py command costs 55-100 µs of CPU here, and through `limits`' strategies a
submit needed nine (tests, slot, hit, stats, then the charges, usage and slot rename) and a
status poll two. Here admission is one EVALSHA (tests, slot, hits and every window's state
for the headers, atomically) and settlement another (charges, usage, slot rename).

The scripts keep `limits`' own window algorithms, keys and units (its `sliding_window`,
`acquire_sliding_window`, `moving_window` and `acquire_moving_window` scripts, under
`<key_prefix>:limits:`), so counters are the ones its Redis storage reads and writes.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from .budgets import Budget, Window
from .engine import Admission, KeyCache, Step, moving_state, sliding_state
from .store import today

if TYPE_CHECKING:
    from .batching import BatchingRedis

__all__ = ["RedisEngine"]

# Shared by both scripts. Sliding windows: TTLs in ms; moving windows: client timestamps.
_WINDOWS = """
local now = tonumber(ARGV[1])
local function sliding(cur, prev, expiry)
  local ttl = tonumber(redis.call('pttl', cur))
  if ttl > 0 and ttl < expiry then  -- the current window ended: it becomes the previous one
    redis.call('rename', cur, prev)
    redis.call('set', cur, 0, 'PX', ttl + expiry)
  end
  local p = tonumber(redis.call('get', prev)) or 0
  local pt = tonumber(redis.call('pttl', prev))
  local c = tonumber(redis.call('get', cur)) or 0
  local ct = tonumber(redis.call('pttl', cur))
  if pt < 0 then pt = 0 end
  if ct < 0 then ct = 0 end
  return {p, pt, c, ct}
end
local function sliding_hit(cur, prev, limit, expiry, amount)
  local s = sliding(cur, prev, expiry)
  if amount > limit or math.floor(s[1] * s[2] / expiry) + s[3] + amount > limit then
    return false, s
  end
  if redis.call('exists', cur) == 1 then
    redis.call('incrby', cur, amount)
  else
    redis.call('set', cur, amount, 'PX', expiry * 2)
  end
  return true, sliding(cur, prev, expiry)
end
local function moving(key, limit, expiry)
  local low, high, found = 0, limit - 1, nil
  local oldest = now - expiry
  while low <= high do  -- entries are newest first: find the oldest one inside the window
    local mid = math.floor((low + high) / 2)
    local val = tonumber(redis.call('lindex', key, mid))
    if val and val >= oldest then
      found = mid
      low = mid + 1
    else
      high = mid - 1
    end
  end
  if found then
    return {found + 1, redis.call('lindex', key, found), 0, 0}
  end
  return {0, ARGV[1], 0, 0}
end
local function moving_hit(key, limit, expiry, amount)
  if amount > limit then
    return false, moving(key, limit, expiry)
  end
  local entry = redis.call('lindex', key, limit - amount)
  if entry and tonumber(entry) >= now - expiry then
    return false, moving(key, limit, expiry)
  end
  local entries = {}
  for i = 1, amount do
    entries[i] = ARGV[1]
  end
  for i = 1, #entries, 5000 do
    redis.call('lpush', key, unpack(entries, i, math.min(i + 4999, #entries)))
  end
  redis.call('ltrim', key, 0, limit - 1)
  redis.call('expire', key, expiry)
  return true, moving(key, limit, expiry)
end
"""

# KEYS: each window's keys (sliding: current, previous; moving: one), then the slot key
#       (only when a slot is wanted).
# ARGV: now, slot member ('' for none), slot limit, slot expiry, then the windows as one
#       string of "op kind limit expiry amount;" (op t: test, h: hit; kind s: sliding,
#       m: moving; expiry in s). One string each way: redis-py packs and parses less.
# The slot is taken before the first hit. Returns "code in_flight wait" and, per window
# looked at, " a b c d" (its state): code 0 admitted, 1 refused by the last window listed,
# 2 no concurrency slot.
_ADMIT = _WINDOWS + """
local member = ARGV[2]
local want_slot = member ~= ''
local slot_key = want_slot and KEYS[#KEYS] or nil
local out = {0, 0, '0'}
local function take_slot()
  want_slot = false
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  redis.call('ZREMRANGEBYSCORE', slot_key, '-inf', clock)
  local n = redis.call('ZCARD', slot_key)
  local limit = tonumber(ARGV[3])
  if limit > 0 and n >= limit then
    local first = redis.call('ZRANGE', slot_key, 0, 0, 'WITHSCORES')
    return '2 ' .. n .. ' ' .. tostring(tonumber(first[2]) - clock)
  end
  redis.call('ZADD', slot_key, clock + tonumber(ARGV[4]), member)
  redis.call('EXPIRE', slot_key, math.ceil(tonumber(ARGV[4])) + 1)
  out[2] = 1
  return nil
end
local k = 1
for op, kind, limit, expiry, amount in string.gmatch(ARGV[5], '(%a) (%a) (%d+) (%d+) (%d+);') do
  limit, expiry, amount = tonumber(limit), tonumber(expiry), tonumber(amount)
  if op == 'h' and want_slot then
    local refused = take_slot()
    if refused then return refused end
  end
  local ok, s
  if kind == 's' then
    if op == 'h' then
      ok, s = sliding_hit(KEYS[k], KEYS[k + 1], limit, expiry * 1000, amount)
    else
      s = sliding(KEYS[k], KEYS[k + 1], expiry * 1000)
      ok = limit - math.floor(s[1] * s[2] / (expiry * 1000) + s[3]) >= amount
    end
    k = k + 2
  else
    if op == 'h' then
      ok, s = moving_hit(KEYS[k], limit, expiry, amount)
    else
      s = moving(KEYS[k], limit, expiry)
      ok = limit - s[1] >= amount
    end
    k = k + 1
  end
  for j = 1, 4 do out[#out + 1] = s[j] end
  if not ok then
    if out[2] == 1 then redis.call('ZREM', slot_key, member) end
    out[1] = 1
    out[2] = 0
    return table.concat(out, ' ')
  end
end
if want_slot then
  local refused = take_slot()
  if refused then return refused end
end
return table.concat(out, ' ')
"""

# KEYS: each window's keys, then the usage hash, the day's caller set, the slot key.
# ARGV: now, usage? (1/0), images, cost, usage TTL, caller, slot op ('' | r: rename |
#       d: delete), old member, new member, slot expiry, then the windows as one string of
#       "kind limit expiry amount;". Charges may be refused (concurrent overshoot): ignored.
_SETTLE = _WINDOWS + """
local k = 1
for kind, limit, expiry, amount in string.gmatch(ARGV[11], '(%a) (%d+) (%d+) (%d+);') do
  limit, expiry, amount = tonumber(limit), tonumber(expiry), tonumber(amount)
  if kind == 's' then
    sliding_hit(KEYS[k], KEYS[k + 1], limit, expiry * 1000, amount)
    k = k + 2
  else
    moving_hit(KEYS[k], limit, expiry, amount)
    k = k + 1
  end
end
local n = #KEYS
if ARGV[2] == '1' then
  local ttl = tonumber(ARGV[5])
  redis.call('HINCRBY', KEYS[n - 2], 'requests', 1)
  redis.call('HINCRBY', KEYS[n - 2], 'images', ARGV[3])
  redis.call('HINCRBYFLOAT', KEYS[n - 2], 'cost', ARGV[4])
  redis.call('EXPIRE', KEYS[n - 2], ttl)
  redis.call('SADD', KEYS[n - 1], ARGV[6])
  redis.call('EXPIRE', KEYS[n - 1], ttl)
end
if ARGV[7] == 'd' then
  redis.call('ZREM', KEYS[n], ARGV[8])
elseif ARGV[7] == 'r' and redis.call('ZREM', KEYS[n], ARGV[8]) == 1 then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  redis.call('ZADD', KEYS[n], clock + tonumber(ARGV[10]), ARGV[9])
  redis.call('EXPIRE', KEYS[n], math.ceil(tonumber(ARGV[10])) + 1)
end
return 1
"""


class _Script:
    """EVALSHA straight through the client (redis-py's Script adds a layer of wrappers per
    call); loads the script when the server does not know it (first use, restart)."""

    def __init__(self, redis: BatchingRedis, source: str) -> None:
        self._redis = redis
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[bytes | str], *args: Any) -> Any:
        try:
            return await self._redis.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(self._source)
            return await self._redis.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)


class RedisEngine:
    """One script call per request stage (see module docstring)."""

    def __init__(self, redis: BatchingRedis, prefix: str, *, sliding: bool, cost_sliding: bool,
                 slot_expiry: float, usage_retention_days: int) -> None:
        self._admit = _Script(redis, _ADMIT)
        self._settle = _Script(redis, _SETTLE)
        self._limits_prefix = f"{prefix}:limits:"
        self._slots = f"{prefix}:inflight:"
        self._usage = f"{prefix}:usage:"
        self._usage_ttl = usage_retention_days * 86400 + 86400
        self._slot_expiry = slot_expiry
        self._sliding_for = {False: sliding, True: cost_sliding}  # by "is a cost budget"
        self._keys = KeyCache()
        self._store_keys: dict[tuple[int, str], tuple[list[bytes], list[str]]] = {}

    def _windows(self, budget: Budget, caller: str) -> tuple[list[bytes], list[str]]:
        """Redis keys (encoded) and each window's "kind limit expiry", built once per caller."""
        cache_key = (id(budget), caller)
        found = self._store_keys.get(cache_key)
        if found is not None:
            return found
        if len(self._store_keys) >= 65536:
            self._store_keys.clear()
        sliding = self._sliding_for[budget.scale > 1]
        keys: list[bytes] = []
        specs: list[str] = []
        for item, key in zip(budget.items, self._keys(budget, caller), strict=True):
            if sliding:  # limits' layout: "{key}" and "{key}/-1", one cluster slot
                current = f"{self._limits_prefix}{{{key}}}"
                keys += [current.encode(), f"{current}/-1".encode()]
            else:
                keys.append(f"{self._limits_prefix}{key}".encode())
            specs.append(f"{'s' if sliding else 'm'} {item.amount} {item.get_expiry()}")
        found = self._store_keys[cache_key] = (keys, specs)
        return found

    async def admit(self, caller: str, tests: list[Step], slot: tuple[str, int] | None,
                    hits: list[Step]) -> Admission:
        now = time.time()
        keys: list[bytes | str] = []
        spec: list[str] = []
        order: list[tuple[Budget, int]] = []
        for op, steps in (("t ", tests), ("h ", hits)):
            for step in steps:
                budget_keys, specs = self._windows(step.budget, caller)
                keys += budget_keys
                tail = f" {step.amount};"
                for index, window in enumerate(specs):
                    spec += (op, window, tail)
                    order.append((step.budget, index))
        member, limit = slot if slot is not None else ("", 0)
        if slot is not None:
            keys.append(self._slots + caller)
        reply: Any = await self._admit(
            keys, repr(now), member, limit, self._slot_expiry, "".join(spec))
        fields = reply.split()
        code = int(fields[0])
        if code == 2:
            return Admission(slot_refused=(int(fields[1]), float(fields[2])))
        windows = [self._state(budget, index, fields, 3 + 4 * n, now)
                   for n, (budget, index) in enumerate(order[: (len(fields) - 3) // 4])]
        out = Admission(windows, slot=member if slot is not None and fields[1] == b"1" else None)
        if code == 1:
            out.refused = windows.pop()
        return out

    def _state(self, budget: Budget, index: int, fields: list[bytes], at: int, now: float
               ) -> Window:
        a, b, c, d = fields[at: at + 4]
        if self._sliding_for[budget.scale > 1]:
            return sliding_state(budget, index, int(a), int(b) / 1000, int(c), int(d) / 1000)
        return moving_state(budget, index, float(b), int(a), now)

    async def settle(self, caller: str, consume: list[Step], usage: tuple[int, float] | None,
                     slot: tuple[str, str | None] | None) -> None:
        day = today()
        old, new = slot if slot is not None else ("", None)
        op = "" if slot is None else ("d" if new is None else "r")
        images, cost = usage if usage is not None else (0, 0.0)
        keys: list[bytes | str] = []
        spec: list[str] = []
        for step in consume:
            budget_keys, specs = self._windows(step.budget, caller)
            keys += budget_keys
            spec += (f"{window} {step.amount};" for window in specs)
        keys += [f"{self._usage}{day}:{caller}", f"{self._usage}{day}", self._slots + caller]
        await self._settle(
            keys, repr(time.time()), 1 if usage else 0, images, repr(cost), self._usage_ttl,
            caller, op, old, new or "", self._slot_expiry, "".join(spec))
