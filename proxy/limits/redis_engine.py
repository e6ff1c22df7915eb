"""The Redis engine: all of one request stage's budget checks in one Lua script.

Why: one redis-py command costs 55-100 µs of CPU here, and through `limits`' strategies a
submit needed nine (tests, slot, hit, stats, then the charges, usage and slot rename) and a
status poll two. Here admission is one EVALSHA (every window checked, the slot, then every
window hit and its state for the headers, atomically) and settlement another (refunds,
usage, slot rename).

The calls of one event-loop turn go out as one EVALSHA per 16 (`_Lane`), on a connection of
their own that speaks RESP directly (`resp.RedisLink`), and the admission script returns each
window's state ready-made (`_STATES`) and the RateLimit header's numbers, which are all Python
reads of an admitted request's reply (the states are parsed only for a refund). Callers hand
over keys packed once per caller, so a request costs a few string joins. (Through redis-py,
with the states computed in Python, Redis limits cost ~40 µs more proxy CPU per submit than
memory limits; what is left is mostly the wait itself: tests/bench/instructions.py.)

The scripts keep `limits`' own window algorithms, keys and units (its `sliding_window`,
`acquire_sliding_window`, `moving_window` and `acquire_moving_window` scripts, under
`<key_prefix>:limits:`), so counters are the ones its Redis storage reads and writes. They
read each key once per check: time stands still inside a script, so what `limits` reads again
after a hit is computed. (tests/bench/redis_cpu.py measures what the scripts cost redis-server.)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import NoScriptError, ResponseError

from .batching import fail_all
from .budgets import Budget, Window
from .engine import Admission, Refund, Step
from .resp import RedisLink, bulk, pack
from .store import today

__all__ = ["RedisEngine"]

# Shared by both scripts. Sliding windows: TTLs in ms; moving windows: client timestamps.
_WINDOWS = """
local now, now_text = 0, ''  -- the request's client clock, set per request by the driver
-- The client sends its clock in whole microseconds (formatting a float's shortest repr costs
-- Python ~8k instructions, an integer ~1k); moving-window entries keep `limits`' layout,
-- seconds as text, the same text for the same clock (a refund's LREM finds them by it).
local function clock_of(us)
  local seconds = tonumber(us) / 1e6
  return seconds, string.format('%.6f', seconds)
end
local clock_us = nil  -- the server's clock, read once per call (TIME costs ~1 µs each)
local function server_us()
  if not clock_us then
    local t = redis.call('TIME')
    clock_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return clock_us
end
local function server_ms()
  return math.floor(server_us() / 1000)
end
-- A slot's numbers as text, made once per call (the clock is): the clock, a new slot's score
-- and its key's TTL. (A number handed to redis.call is printed with %.17g each time.)
local slot_texts = nil
local function slot_numbers(expiry_text)
  if not slot_texts or slot_texts[4] ~= expiry_text then
    local expiry, clock = tonumber(expiry_text), server_us() / 1e6
    slot_texts = {string.format('%.17g', clock), string.format('%.17g', clock + expiry),
                  string.format('%d', math.ceil(expiry) + 1), expiry_text}
  end
  return slot_texts
end
-- `limits`' sliding-window counter: one key pair's state, the current count rolled over to the
-- previous one when its fixed window ended. Time stands still inside a script (Redis >= 7
-- reads every TTL at the script's start), so each key is read once: 4 calls, where reading
-- the state again after the hit, as `limits` does, made 11 more per window.
local function sliding(cur, prev, expiry)
  local ct = tonumber(redis.call('pttl', cur))
  local c
  if ct > 0 and ct < expiry then  -- the current window ended: it becomes the previous one
    redis.call('rename', cur, prev)
    redis.call('set', cur, 0, 'PX', ct + expiry)
    ct, c = ct + expiry, 0
  end
  local p = tonumber(redis.call('get', prev)) or 0
  local pt = tonumber(redis.call('pttl', prev))
  c = c or tonumber(redis.call('get', cur)) or 0
  local fresh = ct == -2  -- no current count yet
  if pt < 0 then pt = 0 end
  if ct < 0 then ct = 0 end
  return {p, pt, c, ct, fresh}
end
-- Adds `amount` (also as text) to the current count of the window `sliding` read as `s`
-- (checked to have room), and updates `s` to what reading it again would give.
local function sliding_take(cur, s, expiry, amount, amount_text)
  if s[5] then
    redis.call('set', cur, amount_text, 'PX', expiry * 2)
    s[3], s[4], s[5] = amount, expiry * 2, false
  else
    redis.call('incrby', cur, amount_text)
    s[3] = s[3] + amount
  end
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
  return {0, now_text, 0, 0}
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
    entries[i] = now_text
  end
  for i = 1, #entries, 5000 do
    redis.call('lpush', key, unpack(entries, i, math.min(i + 4999, #entries)))
  end
  redis.call('ltrim', key, 0, limit - 1)
  redis.call('expire', key, expiry)
  return true, moving(key, limit, expiry)
end
"""

# Both scripts take several requests at once (those issued in one event-loop turn): ARGV is
# the number of requests, then for each "key_count arg_count" and its arguments; KEYS are
# their keys in order (few, packed arguments: redis-py's packing costs CPU per argument).
# Requests are evaluated one after the other, each as if alone; their replies come back
# joined by newlines.
_MANY = """
local replies = {}
local k, a = 1, 2
for r = 1, tonumber(ARGV[1]) do
  local nk, na = string.match(ARGV[a], '^(%d+) (%d+)$')
  nk, na = tonumber(nk), tonumber(na)
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j - 1] end
  for j = 1, na do args[j] = ARGV[a + j] end
  k, a = k + nk, a + 1 + na
  replies[r] = one(keys, args)
end
return table.concat(replies, '\\n')
"""

# Each window's state for the headers, as engine.sliding_state and moving_state compute it
# (the same double arithmetic: Python's float % is C's fmod for positive numbers), so Python
# only wraps two numbers per window (~1.5 µs less each). tests/test_limits_resp.py checks
# that both agree. Moving windows read the request's clock (`now`, from _WINDOWS).
_STATES = """
local function next_turn(ttl, period)  -- engine.next_turn (fmod: Python's % for positives)
  local left = math.fmod(ttl, period)
  if left == 0 and ttl > 0 then return period end
  return left
end
local function sliding_state(s, limit, expiry)  -- engine.sliding_state; s: sliding()'s
  local prev, prev_ttl, cur, cur_ttl = s[1], s[2] / 1000, s[3], s[4] / 1000
  local remaining = math.max(0, limit - math.floor(prev * prev_ttl / expiry + cur))
  if prev == 0 and cur == 0 then return remaining, 0 end
  local reset = math.huge
  if prev ~= 0 then reset = next_turn(prev_ttl, expiry / prev) end
  if cur ~= 0 then reset = math.min(reset, next_turn(cur_ttl, expiry)) end
  return remaining, math.max(0, reset)
end
local function moving_state(s, limit, expiry)  -- engine.moving_state; s: moving()'s
  local reset = math.min(expiry, math.max(0, tonumber(s[2]) + expiry - now))
  return math.max(0, limit - s[1]), reset
end
-- A window's numbers in the RateLimit header (budgets.HeaderPlan), as the memory engine's:
-- what remains in the budget's own units (`limits` counts hundredths of cost units) and
-- whole seconds to reset.
local function header_numbers(remaining, reset, scale)
  return string.format('%d %d', math.floor(remaining / scale), math.ceil(reset))
end
"""

# One admission. KEYS: each window's keys (sliding: current, previous; moving: one), then
#       the slot key (only when a slot is wanted).
# ARGV: one string, "now member slot_limit slot_expiry windows" (now: the client clock in
#       whole microseconds; member '' for no slot;
#       windows: "kind limit expiry amount scale;" each, kind s: sliding, m: moving; expiry
#       in s; scale: the budget's units per counted unit, 0 for a budget not shown in
#       the headers).
# Every window is checked first, then the slot taken, then every window hit: all or nothing.
# Returns "code in_flight wait" and, per window looked at, " remaining reset turn" (_STATES,
# after the hit; the reset printed exactly; turn: for a sliding window, when the fixed window
# that took the hit began, in the server's ms, which a refund compares): code 0 admitted,
# 1 refused by the last window listed (its state before), 2 no concurrency slot. Admitted,
# "|" and each shown window's two header numbers follow (what Python reads on every request; the
# states only for a refund).
_ADMIT = _WINDOWS + _STATES + """
local function one(KEYS, ARGV)  -- one request's admission (KEYS, ARGV: its own slices)
local now_us, member, slot_limit, slot_expiry, spec
now_us, member, slot_limit, slot_expiry, spec =
  string.match(ARGV[1], '^(%d+) (%S*) (%d+) (%S+) (.*)$')
now, now_text = clock_of(now_us)
slot_limit = tonumber(slot_limit)
local out = {0, 0, '0'}
local windows = {}
local k = 1
for kind, limit, expiry, amount_text, scale in
    string.gmatch(spec, '(%a) (%d+) (%d+) (%d+) (%d+);') do
  local amount
  limit, expiry, amount = tonumber(limit), tonumber(expiry), tonumber(amount_text)
  local ok, s, remaining, reset
  if kind == 's' then
    s = sliding(KEYS[k], KEYS[k + 1], expiry * 1000)
    ok = limit - math.floor(s[1] * s[2] / (expiry * 1000) + s[3]) >= amount
  else
    s = moving(KEYS[k], limit, expiry)
    ok = limit - s[1] >= amount
  end
  windows[#windows + 1] = {kind, k, limit, expiry, amount, s, amount_text, tonumber(scale)}
  k = k + (kind == 's' and 2 or 1)
  if not ok then
    if kind == 's' then
      remaining, reset = sliding_state(s, limit, expiry)
    else
      remaining, reset = moving_state(s, limit, expiry)
    end
    for _ = 1, #windows - 1 do  -- the windows before it had room: their states are unused
      out[#out + 1] = '0 0 0'
    end
    out[#out + 1] = string.format('%d', remaining)
    out[#out + 1] = string.format('%.17g', reset)
    out[#out + 1] = '0'
    out[1] = 1
    return table.concat(out, ' ')
  end
end
if member ~= '' then
  local slot_key, texts = KEYS[#KEYS], slot_numbers(slot_expiry)
  redis.call('ZREMRANGEBYSCORE', slot_key, '-inf', texts[1])
  local n = redis.call('ZCARD', slot_key)
  if slot_limit > 0 and n >= slot_limit then
    local first = redis.call('ZRANGE', slot_key, 0, 0, 'WITHSCORES')
    return '2 ' .. n .. ' ' .. tostring(tonumber(first[2]) - server_us() / 1e6)
  end
  redis.call('ZADD', slot_key, texts[2], member)
  redis.call('EXPIRE', slot_key, texts[3])
  out[2] = 1
end
local numbers = {}
for _, w in ipairs(windows) do
  local kind, at, limit, expiry, amount, s = w[1], w[2], w[3], w[4], w[5], w[6]
  local remaining, reset, turn
  if kind == 's' then
    sliding_take(KEYS[at], s, expiry * 1000, amount, w[7])
    remaining, reset = sliding_state(s, limit, expiry)
    turn = server_ms() - (2 * expiry * 1000 - s[4])
  else
    local _, after = moving_hit(KEYS[at], limit, expiry, amount)
    remaining, reset = moving_state(after, limit, expiry)
    turn = 0
  end
  out[#out + 1] = string.format('%d', remaining)
  out[#out + 1] = string.format('%.17g', reset)
  out[#out + 1] = string.format('%d', turn)
  if w[8] > 0 then  -- (scale 0: a budget not shown in the headers)
    numbers[#numbers + 1] = header_numbers(remaining, reset, w[8])
  end
end
return table.concat(out, ' ') .. '|' .. table.concat(numbers, ' ')
end
""" + _MANY

# One settlement. KEYS: each refunded window's keys, then the usage hash, the day's caller
#       set, the slot key.
# ARGV: "at usage? images cost usage_ttl slot_op slot_expiry windows" (at: the clock of
#       the admission whose hits are refunded, as it was sent; usage? 1/0; slot op '',
#       r: rename or d: delete; windows: "kind expiry amount turn;" each), then the caller,
#       the old and the new member.
# A refund takes a hit back from the count that holds it now. Sliding: `limits`' keys turn
# by TTL, each on a grid of its own; the admission reported when the fixed window that took
# the hit began (turn), and if the current one began then, the current count holds it, if
# one window later, the previous count, else nobody (half a window of slack against clock
# rounding). Moving: `amount` of the entries stamped with the admission's clock.
_SETTLE = _WINDOWS + """
local function unhit(key, amount)
  local left = tonumber(redis.call('get', key)) or 0
  if left > 0 then redis.call('decrby', key, math.min(left, amount)) end
end
local function one(KEYS, ARGV)  -- one request's settlement
local at_us, usage, images, cost, ttl, op, slot_expiry, spec
at_us, usage, images, cost, ttl, op, slot_expiry, spec =
  string.match(ARGV[1], '^(%d+) (%d) (%d+) (%S+) (%d+) (%a?) (%S+) (.*)$')
local _, at_text = clock_of(at_us)
local k = 1
for kind, expiry, amount, turn in string.gmatch(spec, '(%a) (%d+) (%d+) (%-?%d+);') do
  expiry, amount, turn = tonumber(expiry) * 1000, tonumber(amount), tonumber(turn)
  if kind == 's' then
    local s = sliding(KEYS[k], KEYS[k + 1], expiry)
    if s[4] > 0 then  -- no current count: the hit's window is gone
      local apart = server_ms() - (2 * expiry - s[4]) - turn  -- current window's start - turn
      if math.abs(apart) < expiry / 2 then
        unhit(KEYS[k], amount)
      elseif math.abs(apart - expiry) < expiry / 2 then
        unhit(KEYS[k + 1], amount)
      end
    end
    k = k + 2
  else
    redis.call('lrem', KEYS[k], amount, at_text)
    k = k + 1
  end
end
local n = #KEYS
if usage == '1' then
  -- each key's lifetime starts with the day's first entry in it (expiring it again on every
  -- request cost two calls more)
  if redis.call('HINCRBY', KEYS[n - 2], 'requests', 1) == 1 then
    redis.call('EXPIRE', KEYS[n - 2], ttl)
  end
  redis.call('HINCRBY', KEYS[n - 2], 'images', images)
  redis.call('HINCRBYFLOAT', KEYS[n - 2], 'cost', cost)
  if redis.call('SADD', KEYS[n - 1], ARGV[2]) == 1 then
    redis.call('EXPIRE', KEYS[n - 1], ttl)
  end
end
if op == 'd' then
  redis.call('ZREM', KEYS[n], ARGV[3])
elseif op == 'r' and redis.call('ZREM', KEYS[n], ARGV[3]) == 1 then
  local texts = slot_numbers(slot_expiry)
  redis.call('ZADD', KEYS[n], texts[2], ARGV[4])
  redis.call('EXPIRE', KEYS[n], texts[3])
end
return 1
end
""" + _MANY


# keys, how many, args, how many, the caller's future (None: nobody waits), what its reply
# becomes
_Request = tuple[bytes, int, bytes, int, "asyncio.Future[Any] | None", "Callable[[bytes], Any]"]
_Packed = tuple[bytes, int, str, list[tuple[Budget, int]]]  # see RedisEngine._pack
_T = TypeVar("_T")
_LOG = logging.getLogger("flux_proxy.limits")


class _Lane:
    """One script's calls issued in the same event-loop turn, sent as one EVALSHA at the
    turn's end, or as soon as `early` of them wait.

    Under load many requests are checked in the same turn: one script call for all of them
    costs one write, one reply and one parse instead of one each. Waiting for the turn's end
    to send even the first of them, though, leaves redis-server idle while this process works
    through the rest of the turn, and then this process idle while the script runs: sent in
    groups of `early`, the two overlap (`guards_bench.sh`: +10-25% req/s with Redis limits).
    Callers hand over their keys and arguments already packed (RESP), so a call is one join;
    each caller still gets its own reply, read by the caller's `parse` (or the call's error);
    each request is evaluated exactly as if alone, in arrival order, so nothing about the
    limits changes. A server that does not know the script (first use, restart, SCRIPT
    FLUSH) gets it loaded and the call sent again, once.
    """

    def __init__(self, link: RedisLink, source: str, most: int = 128, early: int = 16
                 ) -> None:
        self._link = link
        self._load = pack("SCRIPT", "LOAD", source)
        sha = hashlib.sha1(source.encode()).hexdigest().encode()
        self._head = b"$7\r\nEVALSHA\r\n" + bulk(sha)
        self._most = most  # requests per call at most, to bound one script's run time
        self._early = early  # waiting callers that go out at once (see above)
        self._pending: list[_Request] = []

    def __call__(self, keys: bytes, key_count: int, args: bytes, arg_count: int,
                 parse: Callable[[bytes], _T]) -> asyncio.Future[_T]:
        """Queue one request (`args` starts with its "key_count arg_count" header, counted in
        `arg_count`); the future gets `parse(its reply)`. (A future, not a coroutine: the
        caller awaits it directly, one await layer less per request.)"""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        if not self._pending:
            self._link.at_turn_end(loop, self._flush)
        self._pending.append((keys, key_count, args, arg_count, future, parse))
        if len(self._pending) >= self._early:
            self._flush()  # (the turn-end flush then finds these gone)
        return future

    def send(self, keys: bytes, key_count: int, args: bytes, arg_count: int) -> None:
        """Queue one request nobody waits for: no future; a failure is logged."""
        if not self._pending:
            self._link.at_turn_end(asyncio.get_running_loop(), self._flush)
        self._pending.append((keys, key_count, args, arg_count, None, _ignore))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        most = self._most
        for start in range(0, len(pending), most):
            batch = pending[start: start + most] if len(pending) > most else pending
            key_count = sum(request[1] for request in batch)
            arg_count = 1 + sum(request[3] for request in batch)
            key_text = b"%d" % key_count
            count_text = b"%d" % len(batch)
            command = b"".join((
                b"*%d\r\n" % (3 + key_count + arg_count), self._head, bulk(key_text),
                *[request[0] for request in batch], bulk(count_text),
                *[request[2] for request in batch]))
            self._link.send(command, functools.partial(self._replied, batch, command, False))

    def _replied(self, batch: list[_Request], command: bytes, retried: bool, reply: Any) -> None:
        if isinstance(reply, NoScriptError) and not retried:
            self._link.send(self._load, _ignore)  # its error, if any, comes again below
            self._link.send(command, functools.partial(self._replied, batch, command, True))
            return
        replies: list[Any] = reply.split(b"\n") if isinstance(reply, bytes) else []
        if not isinstance(reply, BaseException) and len(replies) != len(batch):
            reply = ResponseError(f"unexpected script reply: {reply!r:.100}")  # (not ours)
        if isinstance(reply, BaseException):  # every caller gets the error
            waiting = [request[4] for request in batch if request[4] is not None]
            fail_all(waiting, reply)
            if len(waiting) < len(batch):
                _LOG.warning("limits store unavailable while settling requests: %s", reply)
            return
        for request, answer in zip(batch, replies, strict=True):
            future = request[4]
            if future is None or future.done():  # nobody waits, or cancelled
                continue
            try:
                future.set_result(request[5](answer))
            except Exception as exc:  # a reply it cannot read: that caller's error
                future.set_exception(exc)


def _ignore(reply: Any) -> None:
    return None


_FIVE_BULKS = b"$%d\r\n%b\r\n" * 5


def _bulk_pair(first: bytes, second: bytes) -> bytes:
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(first), first, len(second), second)


class KeyCache:
    """`limits`' storage key of each window of a budget for a caller, built once (bounded)."""

    def __init__(self, size: int = 65536) -> None:
        self._keys: dict[tuple[int, str], tuple[str, ...]] = {}
        self._size = size

    def __call__(self, budget: Budget, caller: str) -> tuple[str, ...]:
        cache_key = (id(budget), caller)  # budgets live as long as the guard
        keys = self._keys.get(cache_key)
        if keys is None:
            if len(self._keys) >= self._size:
                self._keys.clear()
            ids = budget.key(caller)
            keys = self._keys[cache_key] = tuple(item.key_for(*ids) for item in budget.items)
        return keys


class RedisEngine:
    """One script call per request stage (see module docstring)."""

    def __init__(self, link: RedisLink, prefix: str, *, sliding: bool, cost_sliding: bool,
                 slot_expiry: float, usage_retention_days: int) -> None:
        self._admit = _Lane(link, _ADMIT)
        self._settle = _Lane(link, _SETTLE)
        self._limits_prefix = f"{prefix}:limits:"
        self._slots = f"{prefix}:inflight:"
        self._usage = f"{prefix}:usage:"
        self._usage_ttl = f"{usage_retention_days * 86400 + 86400}"
        self._slot_expiry = f"{slot_expiry!r}"
        self._sliding_for = {False: sliding, True: cost_sliding}  # by "is a cost budget"
        self._keys = KeyCache()
        # Per caller, built once: packed window keys and specs, the slot key, settle's keys.
        self._slot_keys: dict[str, bytes] = {}
        self._settle_keys: dict[tuple[str, str], bytes] = {}
        self._packed: dict[tuple[str, tuple[Step, ...]], _Packed] = {}
        self._costs: dict[float, str] = {}  # a cost's text: few distinct values, repr is dear

    def _cost_text(self, cost: float) -> str:
        text = self._costs.get(cost)
        if text is None:
            if len(self._costs) >= 4096:
                self._costs.clear()
            text = self._costs[cost] = repr(cost)
        return text

    def _redis_keys(self, key: str, sliding: bool) -> list[bytes]:
        if sliding:  # limits' layout: "{key}" and "{key}/-1", one cluster slot
            current = f"{self._limits_prefix}{{{key}}}"
            return [current.encode(), f"{current}/-1".encode()]
        return [f"{self._limits_prefix}{key}".encode()]

    def _slot_key(self, caller: str) -> bytes:
        found = self._slot_keys.get(caller)
        if found is None:
            if len(self._slot_keys) >= 65536:
                self._slot_keys.clear()
            found = self._slot_keys[caller] = bulk((self._slots + caller).encode())
        return found

    def admit(self, caller: str, hits: tuple[Step, ...], slot: tuple[str, int] | None
              ) -> asyncio.Future[Admission]:
        now = time.time()
        packed = self._packed.get((caller, hits))
        if packed is None:
            packed = self._pack(caller, hits)
        keys, key_count, spec, order = packed
        member, limit = slot if slot is not None else ("", 0)
        if slot is not None:
            keys += self._slot_key(caller)
            key_count += 1
        args = _bulk_pair(b"%d 1" % key_count,
                          f"{int(now * 1e6)} {member} {limit} {self._slot_expiry} {spec}".encode())
        return self._admit(keys, key_count, args, 2,
                           functools.partial(_admission, order, member or None, now))

    def _pack(self, caller: str, hits: tuple[Step, ...]) -> _Packed:
        """A request's window keys (packed), how many, their spec ("kind limit expiry
        amount;" each) and whose they are: built once per caller and steps (a poll's are
        always the same; a submit's vary with its cost), bounded."""
        keys: list[bytes] = []
        spec: list[str] = []
        order: list[tuple[Budget, int]] = []
        for budget, amount in hits:
            sliding = self._sliding_for[budget.scale > 1]
            kind = "s" if sliding else "m"
            for index, (item, key) in enumerate(zip(budget.items, self._keys(budget, caller),
                                                    strict=True)):
                keys += self._redis_keys(key, sliding)
                scale = budget.scale if budget.shown else 0
                spec.append(f"{kind} {item.amount} {item.get_expiry()} {amount} {scale};")
                order.append((budget, index))
        if len(self._packed) >= 65536:
            self._packed.clear()
        found = self._packed[(caller, hits)] = (b"".join(map(bulk, keys)), len(keys),
                                                "".join(spec), order)
        return found

    def settle(self, caller: str, refunds: list[Refund], at: float,
               usage: tuple[int, float] | None,
               slot: tuple[str | int, str | None] | None) -> asyncio.Future[None]:
        return self._settle(*self._settlement(caller, refunds, at, usage, slot), _ignore)

    def settle_later(self, caller: str, refunds: list[Refund], at: float,
                     usage: tuple[int, float] | None,
                     slot: tuple[str | int, str | None] | None) -> None:
        self._settle.send(*self._settlement(caller, refunds, at, usage, slot))

    def _settlement(self, caller: str, refunds: list[Refund], at: float,
                    usage: tuple[int, float] | None,
                    slot: tuple[str | int, str | None] | None) -> tuple[bytes, int, bytes, int]:
        """The settle script's keys and arguments (see _SETTLE), packed."""
        day = today()
        old, new = slot if slot is not None else ("", None)
        op = "" if slot is None else ("d" if new is None else "r")
        images, cost = usage if usage is not None else (0, 0.0)
        keys: list[bytes] = []
        key_count = 3
        spec: list[str] = []
        for window, amount in refunds:  # rare (the upstream refused): nothing cached
            budget = window.budget
            sliding = self._sliding_for[budget.scale > 1]
            window_keys = self._redis_keys(self._keys(budget, caller)[window.index], sliding)
            keys += map(bulk, window_keys)
            key_count += len(window_keys)
            spec.append(f"{'s' if sliding else 'm'} {window.item.get_expiry()} {amount} "
                        f"{window.turn};")
        tail = self._settle_keys.get((caller, day))
        if tail is None:
            if len(self._settle_keys) >= 65536:
                self._settle_keys.clear()
            tail = self._settle_keys[(caller, day)] = b"".join(map(bulk, (
                f"{self._usage}{day}:{caller}".encode(), f"{self._usage}{day}".encode(),
                (self._slots + caller).encode())))
        keys.append(tail)
        head = b"%d 4" % key_count
        line = (f"{int(at * 1e6)} {1 if usage else 0} {images} {self._cost_text(cost)} "
                f"{self._usage_ttl} {op} {self._slot_expiry} {''.join(spec)}").encode()
        who, becomes = caller.encode(), (new or "").encode()
        was = old.encode() if type(old) is str else str(old).encode()  # (the guard's: str)
        args = _FIVE_BULKS % (len(head), head, len(line), line, len(who), who, len(was), was,
                              len(becomes), becomes)  # (one format: each call costs ~1k)
        return b"".join(keys), key_count, args, 5


def _admission(order: list[tuple[Budget, int]], member: str | None, now: float, reply: bytes
               ) -> Admission:
    """The admission script's reply (see _ADMIT) for the windows in `order`."""
    if reply[:2] == b"0 ":  # admitted: the headers' numbers read now, the states if needed
        head, _, numbers = reply.partition(b"|")
        return Admission(tuple(map(int, numbers.split())), now, (order, head), _states,
                         member if head[2:3] == b"1" else None)
    fields = reply.split()
    if fields[0] == b"2":
        return Admission.no_slot(int(fields[1]), float(fields[2]))
    # refused by the last window it reports
    return Admission.refusal(_states((order, reply))[-1], now)


def _states(raw: tuple[list[tuple[Budget, int]], bytes]) -> list[Window]:
    """The window states of an admission's reply: " remaining reset turn" each, after a
    "code in_flight wait" head (a refusal stops the script early: fewer than `order`)."""
    order, reply = raw
    fields = reply.split()
    return [Window(budget, budget.items[index], int(fields[at]), float(fields[at + 1]),
                   index, int(fields[at + 2]))
            for at, (budget, index) in zip(range(3, len(fields), 3), order, strict=False)]
