"""Idempotency keys in Redis, shared by every worker and replica (gateway/idempotency.py has the
rules). Each operation is one Lua script, so two replicas can never both take a key, and Redis's
clock (``TIME``) is the only clock.

A key is a hash: the request's fingerprint, the owner holding it and until when (``lock``, in
Redis milliseconds), and once answered the answer (msgpack). It expires after ``ttl_s``; a replica
that dies holding a key leaves it locked until ``lock``, after which repeats find it ``lost``.

What is kept is bounded in total: every key has a member in one sorted set (scored by its expiry;
the member names its size) and one counter holds the sum. Each script first lets go of (a bounded
number of) expired members. All three live under one hash tag, so a Redis Cluster keeps them in one
slot, as a script needs.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Awaitable

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.idempotency import ENTRY_BYTES, Begin, Stored, StoreUnavailable, Terms, not_kept_note

_EXPIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function size_of(member) return tonumber(string.match(member, '|(%d+)$')) end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
for _, member in ipairs(gone) do
  redis.call('DECRBY', KEYS[3], size_of(member))
  redis.call('ZREM', KEYS[2], member)
end
"""

# KEYS: the key, the index, the byte counter. ARGV: fingerprint, owner, lock ms, ttl ms,
# take lost (1/0), max total bytes, the key's own bytes.
_BEGIN = _EXPIRE + """
local h = redis.call('HMGET', KEYS[1], 'fp', 'lock', 'answer', 'member')
if h[1] then
  if h[1] ~= ARGV[1] then return {'mismatch'} end
  if h[3] then return {'replay', h[3]} end
  if tonumber(h[2]) > now then return {'in_flight'} end
  if ARGV[5] ~= '1' then return {'lost'} end
  if redis.call('ZREM', KEYS[2], h[4]) == 1 then redis.call('DECRBY', KEYS[3], size_of(h[4])) end
end
local size = tonumber(ARGV[7])
if tonumber(redis.call('GET', KEYS[3]) or '0') + size > tonumber(ARGV[6]) then return {'full'} end
local member = ARGV[2] .. '|' .. size
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'lock', now + tonumber(ARGV[3]), 'member', member)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), member)
redis.call('INCRBY', KEYS[3], size)
return {'new'}
"""

# KEYS: as above. ARGV: owner, answer, its bytes, ttl ms, max total bytes, the note kept instead.
_FINISH = _EXPIRE + """
local h = redis.call('HMGET', KEYS[1], 'owner', 'member', 'answer')
if h[1] ~= ARGV[1] or h[3] then return 0 end
local answer, size = ARGV[2], tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[3]) or '0') + size > tonumber(ARGV[5]) then answer, size = ARGV[6], 0 end
local member = ARGV[1] .. '|' .. (size_of(h[2]) + size)
if redis.call('ZREM', KEYS[2], h[2]) == 1 then
  redis.call('INCRBY', KEYS[3], size)
else
  redis.call('INCRBY', KEYS[3], size_of(member))
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), member)
redis.call('HSET', KEYS[1], 'answer', answer, 'member', member)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: as above. ARGV: owner.
_ABANDON = """
local h = redis.call('HMGET', KEYS[1], 'owner', 'member', 'answer')
if h[1] ~= ARGV[1] or h[3] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('ZREM', KEYS[2], h[2]) == 1 then
  redis.call('DECRBY', KEYS[3], tonumber(string.match(h[2], '|(%d+)$')))
end
return 1
"""

#: A waiting repeat asks again this often (Redis has no cheap way to be told).
POLL_S = 0.1

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Stored).decode


class RedisStore:
    def __init__(self, client: aioredis.Redis, prefix: str, call_timeout_s: float) -> None:
        self._client = client
        self._base = f"{prefix}{{idempotency}}:"
        self._index = [self._base + "index", self._base + "bytes"]
        self._timeout_s = call_timeout_s
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._abandon = client.register_script(_ABANDON)

    def _keys(self, key: str) -> list[str]:
        return [self._base + key, *self._index]

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def begin(self, key: str, fingerprint: str, owner: str, terms: Terms) -> Begin:
        reply = await self._call(self._begin(keys=self._keys(key), args=[
            fingerprint, owner, math.ceil(terms.lock_s * 1000), math.ceil(terms.ttl_s * 1000),
            1 if terms.take_lost else 0, terms.max_total_bytes, ENTRY_BYTES + len(key)]))
        state = reply[0].decode()
        if state == "replay":
            return Begin(state=state, stored=_decode(reply[1]))
        return Begin(state=state)

    async def finish(self, key: str, owner: str, stored: Stored, terms: Terms) -> None:
        await self._call(self._finish(keys=self._keys(key), args=[
            owner, _encode(stored), len(stored.body), math.ceil(terms.ttl_s * 1000), terms.max_total_bytes,
            _encode(not_kept_note(stored))]))

    async def abandon(self, key: str, owner: str) -> None:
        await self._call(self._abandon(keys=self._keys(key), args=[owner]))

    async def wait(self, key: str, timeout_s: float) -> None:
        await asyncio.sleep(min(timeout_s, POLL_S))

    async def close(self) -> None:
        """The client is the limits backend's, closed with it."""
