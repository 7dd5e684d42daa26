"""Limit counters in Redis, shared by every replica: one Lua script checks and counts a request
in all its windows at once, so two replicas can never both take the last slot.

Every key expires by itself: minute windows after 60 s, concurrency slots (a sorted set scored by
lease expiry) after the slot lease, spend after its day or month. Redis's clock (``TIME``) is the
only clock, so replicas' clocks need not agree. Short socket timeouts and one overall timeout mean
a dead or stalled Redis costs a request at most ``socket_timeout_s`` x 8, never a hang.

A request that gives up on an acquire (timed out, or cancelled because its client left) does not
know whether Redis ran the script: a stalled Redis runs what is waiting on its sockets when it
resumes, and would then hold that slot for its whole lease (6 minutes by default) with nobody to
release it. So every acquire that may have been applied, and every release that failed, is
handed to a background sweeper that retries (one bounded pipeline at a time, backing off) until
Redis confirms: it removes the slot and leaves a tombstone for the lease, which the acquire
script checks, so the two cannot pass each other whichever runs first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Awaitable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import LimitsConfig
from gateway.limits.backend import BackendUnavailable
from gateway.limits.policy import WINDOW_S, Decision, Plan

log = logging.getLogger("opengateway.limits")

# KEYS: requests window, images window, slots, day spend, month spend, this token's tombstone.
# ARGV: requests limit, images limit, images asked, slots limit, lease ms, token, day limit,
#       month limit, window ms, spend reserved, day spend ttl ms, month spend ttl ms (a limit of 0
#       is not checked; spend in micro-USD).
_ACQUIRE = """
if redis.call('EXISTS', KEYS[6]) == 1 then
  return {'released', 0, 0, 0, 0, 0, 0, 0}  -- its request gave up and released it already
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, ipm, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slots, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local day_limit, month_limit, window_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local function window(key)
  local used = tonumber(redis.call('GET', key) or '0')
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then ttl = window_ms end
  return used, ttl
end
local r_used, r_ttl = window(KEYS[1])
local i_used, i_ttl = window(KEYS[2])
local s_used = 0
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  s_used = redis.call('ZCARD', KEYS[3])
end
local d_spent = tonumber(redis.call('GET', KEYS[4]) or '0')
local m_spent = tonumber(redis.call('GET', KEYS[5]) or '0')
local denied = ''
if rpm > 0 and r_used + 1 > rpm then denied = 'requests_per_minute'
elseif ipm > 0 and i_used + n > ipm then denied = 'images_per_minute'
elseif slots > 0 and s_used + 1 > slots then denied = 'concurrent_requests'
elseif day_limit > 0 and d_spent >= day_limit then denied = 'spend_usd_per_day'
elseif month_limit > 0 and m_spent >= month_limit then denied = 'spend_usd_per_month'
end
if denied == '' then
  local function count(key, by)
    local used = redis.call('INCRBY', key, by)
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then redis.call('PEXPIRE', key, window_ms); ttl = window_ms end
    return used, ttl
  end
  if rpm > 0 then r_used, r_ttl = count(KEYS[1], 1) end
  if ipm > 0 then i_used, i_ttl = count(KEYS[2], n) end
  if slots > 0 then
    redis.call('ZADD', KEYS[3], now_ms + lease_ms, ARGV[6])
    redis.call('PEXPIRE', KEYS[3], lease_ms)
    s_used = s_used + 1
  end
  local reserve = tonumber(ARGV[10])
  if reserve > 0 then  -- the request's worst case, settled after its answer
    for i = 4, 5 do
      redis.call('INCRBY', KEYS[i], reserve)
      if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[i + 7]) end
    end
  end
end
return {denied, r_used, r_ttl, i_used, i_ttl, s_used, d_spent, m_spent}
"""

# KEYS: day spend, month spend. ARGV: micro-USD (negative: a reservation released), day ttl ms,
# month ttl ms. Never below 0 (INCRBY keeps the key's TTL).
_CHARGE = """
for i = 1, 2 do
  local spent = redis.call('INCRBY', KEYS[i], ARGV[1])
  if spent < 0 then redis.call('INCRBY', KEYS[i], -spent) end
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[i + 1]) end
end
return 1
"""

# KEYS: slots, the token's tombstone. ARGV: token, lease ms.
_RELEASE = """
redis.call('SET', KEYS[2], 1, 'PX', ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

_DAY_TTL_MS = 2 * 86_400_000     # outlives its day by a margin for replicas' clock skew
_MONTH_TTL_MS = 33 * 86_400_000
#: Releases the sweeper sends in one pipeline.
_SWEEP_BATCH = 100
#: Releases waiting for Redis at most; past it a slot is left to its lease (and a warning says so).
_MAX_PENDING_RELEASES = 100_000
#: The sweeper's longest pause between tries while Redis does not answer.
_MAX_SWEEP_BACKOFF_S = 5.0
#: How long to keep trying a failed ``release`` (which is not told its slot's lease): the
#: default lease (router.deadline_s 300 s + 60 s). Its tombstone is moot: the acquire had run.
_DEFAULT_LEASE_MS = 360_000


class RedisBackend:
    def __init__(self, config: LimitsConfig) -> None:
        self.prefix = config.key_prefix
        # The whole call's bound, waiting for a pooled connection included: a burst of thousands
        # of arrivals queues on the pool (redis-py costs ~0.3-0.6 ms of CPU a call), while a
        # stalled Redis fails every call within socket_timeout_s x 2 (one retry).
        self.call_timeout_s = config.socket_timeout_s * 8
        # A blocking pool: a burst waits for a free connection (within the call's bound) instead
        # of failing with "Too many connections" as the default pool does past its size.
        pool = aioredis.BlockingConnectionPool.from_url(
            config.backend, max_connections=config.max_connections, timeout=self.call_timeout_s,
            socket_timeout=config.socket_timeout_s, socket_connect_timeout=config.socket_timeout_s,
            retry=Retry(NoBackoff(), 1), health_check_interval=30)
        self.client = aioredis.Redis(connection_pool=pool)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._charge = self.client.register_script(_CHARGE)
        self._release = self.client.register_script(_RELEASE)
        self.socket_timeout_s = config.socket_timeout_s
        # (key, token) -> (give up at, lease ms): slots to release once Redis answers again.
        self._pending: dict[tuple[str, str], tuple[float, int]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._full = False  # _pending reached its bound (warned once until it empties)

    def _key(self, key: str, kind: str) -> str:
        # The {hash tag} keeps one key's counters in one Redis Cluster slot, as a script needs.
        return f"{self.prefix}{{{key}}}:{kind}"

    async def _call(self, coro: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def acquire(self, plan: Plan, token: str) -> Decision:
        lease_ms = math.ceil(plan.slot_lease_s * 1000)
        keys = [self._key(plan.key, "rpm"), self._key(plan.key, "ipm"), self._key(plan.key, "slots"),
                self._key(plan.key, f"usd:{plan.day}"), self._key(plan.key, f"usd:{plan.month}"),
                self._key(plan.key, f"gone:{token}")]
        args: list[int | str] = [plan.requests_per_minute or 0, plan.images_per_minute or 0, plan.images,
                                 plan.concurrent_requests or 0, lease_ms, token,
                                 plan.spend_day_micro or 0, plan.spend_month_micro or 0, int(WINDOW_S * 1000),
                                 plan.reserve_micro, _DAY_TTL_MS, _MONTH_TTL_MS]
        try:
            reply = await self._call(self._acquire(keys=keys, args=args))
        except BaseException:  # BackendUnavailable, or cancelled: Redis may run the script later
            if plan.concurrent_requests is not None:
                self._release_later(plan.key, token, lease_ms)
            raise
        raw_denied, r_used, r_ttl, i_used, i_ttl, s_used, d_spent, m_spent = reply
        denied = raw_denied.decode() if isinstance(raw_denied, bytes) else str(raw_denied)
        if denied == "released":  # only if a token were reused after giving up on it
            raise BackendUnavailable("this concurrency slot was released before Redis counted it")
        return Decision(
            denied=denied or None, requests_used=int(r_used), requests_reset_s=int(r_ttl) / 1000,
            images_used=int(i_used), images_reset_s=int(i_ttl) / 1000, concurrent_used=int(s_used),
            spend_day_micro=int(d_spent), spend_month_micro=int(m_spent),
            holds_slot=not denied and plan.concurrent_requests is not None)

    async def release(self, key: str, token: str) -> None:
        try:
            await self._call(self.client.zrem(self._key(key, "slots"), token))
        except BaseException:  # failed or cancelled: the sweeper makes sure of it
            self._release_later(key, token, 0)
            raise

    def _release_later(self, key: str, token: str, lease_ms: int) -> None:
        """Hand ``token``'s slot to the sweeper (synchronous: safe in a cancelled task's except)."""
        if len(self._pending) >= _MAX_PENDING_RELEASES:
            if not self._full:  # once per episode: this happens only during a long outage
                self._full = True
                log.warning("%d concurrency slots wait for Redis to release them; further ones are left "
                            "to their leases", len(self._pending))
            return
        lease_ms = lease_ms or _DEFAULT_LEASE_MS
        self._pending[(key, token)] = (time.monotonic() + lease_ms / 1000, lease_ms)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Release pending slots until Redis confirms each one (or its lease has run out anyway)."""
        backoff_s = self.socket_timeout_s
        while self._pending:
            now = time.monotonic()
            for item in [item for item, (until, _) in self._pending.items() if until <= now]:
                del self._pending[item]  # its lease is over: nothing left to release
            batch = list(self._pending.items())[:_SWEEP_BATCH]
            if not batch:
                break
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    async with self.client.pipeline(transaction=False) as pipe:
                        for (key, token), (_, lease_ms) in batch:
                            await self._release(keys=[self._key(key, "slots"), self._key(key, f"gone:{token}")],
                                                args=[token, lease_ms], client=pipe)
                        await pipe.execute()
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _MAX_SWEEP_BACKOFF_S)
                continue
            backoff_s = self.socket_timeout_s
            for item, _ in batch:
                self._pending.pop(item, None)
        self._full = False

    async def charge(self, plan: Plan, micro_usd: int) -> None:
        keys = [self._key(plan.key, f"usd:{plan.day}"), self._key(plan.key, f"usd:{plan.month}")]
        await self._call(self._charge(keys=keys, args=[micro_usd, _DAY_TTL_MS, _MONTH_TTL_MS]))

    async def close(self) -> None:
        if self._sweeper is not None and not self._sweeper.done():
            # One last chance for the pending releases, then their leases take over.
            try:
                await asyncio.wait_for(asyncio.shield(self._sweeper), self.call_timeout_s)
            except TimeoutError:
                self._sweeper.cancel()
                await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
