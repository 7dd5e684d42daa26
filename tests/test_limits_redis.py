"""Limits shared through a real redis-server: two gateway apps enforce one limit; Redis down or
stalled follows ``limits.on_backend_error`` and never hangs a request."""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from typing import Any, Awaitable, Callable

import openai
import pytest
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.config import LimitsConfig
from gateway.config_load import parse_config
from gateway.limits import BackendUnavailable
from gateway.limits.policy import Plan
from gateway.limits.redis_backend import RedisBackend
from tests.gate import Gate
from tests.gateway_process import wait_listening
from tests.limits_config import AUTH, BODY, KEY, limits_yaml
from tests.redis_server import RedisServer
from tests.conftest import eventually

#: A request on a dead Redis must end within this (socket_timeout_s is 0.25 s): a hang guard only.
HANG_GUARD_S = 30


def backend_yaml(url: str, prefix: str, on_error: str = "open", timeout_s: float = 2.0) -> str:
    # Few connections: 30 concurrent requests per app must queue on the pool, not fail. A generous
    # timeout, so that a loaded CI machine does not turn a slow answer into fail-open.
    return (f"limits: {{backend: '{url}', key_prefix: '{prefix}', on_backend_error: {on_error}, "
            f"max_connections: 3, socket_timeout_s: {timeout_s}}}")


@pytest.fixture
def replicas(aiohttp_client: Callable[..., Any], upstream: Any) -> Callable[..., Awaitable[list[Any]]]:
    """``count`` gateway apps sharing one Redis (and one test-unique key prefix)."""
    async def make(redis: RedisServer, limits: str | None, count: int = 2, on_error: str = "open",
                   timeout_s: float = 2.0) -> list[Any]:
        text = limits_yaml(upstream.url, limits,
                           backend_yaml(redis.url, f"t{secrets.token_hex(4)}:", on_error, timeout_s))
        return [await aiohttp_client(create_app(parse_config(text, env={}))) for _ in range(count)]
    return make


def backend_errors(operation: str) -> float:
    return REGISTRY.get_sample_value("opengateway_limits_backend_errors_total", {"operation": operation}) or 0.0


async def test_two_replicas_let_exactly_the_limit_through(replicas: Any, shared_redis: RedisServer,
                                                          upstream: Any) -> None:
    a, b = await replicas(shared_redis, "{requests_per_minute: 20}")
    errors_before = backend_errors("acquire")
    responses = await asyncio.gather(*[
        (a if i % 2 else b).post("/v1/images/generations", json=BODY, headers=AUTH) for i in range(60)])
    statuses = [r.status for r in responses]
    assert statuses.count(200) == 20 and statuses.count(429) == 40
    assert backend_errors("acquire") == errors_before
    assert len(upstream.received) == 20
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status == 200)
    assert remaining == list(range(20))  # each of the 20 slots was taken exactly once
    for r in responses:
        assert r.headers["x-ratelimit-limit-requests"] == "20"
        if r.status == 429:
            assert r.headers["x-ratelimit-remaining-requests"] == "0" and int(r.headers["retry-after"]) >= 1
            body = await r.json()
            assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"


async def test_images_per_minute_shared_through_the_sdk(replicas: Any, shared_redis: RedisServer,
                                                        upstream: Any) -> None:
    a, b = await replicas(shared_redis, "{images_per_minute: 10}")
    clients = [openai.AsyncOpenAI(base_url=str(c.make_url("/v1")), api_key=KEY, max_retries=0) for c in (a, b)]
    results = await asyncio.gather(*[clients[i % 2].images.generate(**BODY, n=3) for i in range(6)],
                                   return_exceptions=True)
    for sdk in clients:
        await sdk.close()
    assert sum(not isinstance(r, Exception) for r in results) == 3  # 3 x 3 images <= 10 < 4 x 3
    refused = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, openai.RateLimitError) and "images per minute" in r.message for r in refused)


async def test_concurrency_slots_are_shared(replicas: Any, shared_redis: RedisServer, upstream: Any) -> None:
    a, b = await replicas(shared_redis, "{concurrent_requests: 1}")
    gate = Gate(1)
    upstream.script("gpt-image-1", gate)
    held = asyncio.create_task(a.post("/v1/images/generations", json=BODY, headers=AUTH))
    await gate.all_arrived.wait()
    assert (await b.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 429
    gate.release.set()
    assert (await held).status == 200
    assert (await b.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200


async def test_every_key_expires_by_itself(shared_redis: RedisServer) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    backend = RedisBackend(LimitsConfig(backend=shared_redis.url, key_prefix=prefix))
    plan = Plan(key="k", requests_per_minute=5, images_per_minute=5, concurrent_requests=2, slot_lease_s=90,
                spend_day_micro=10, spend_month_micro=10, day="20260101", month="202601")
    try:
        decision = await backend.acquire(plan, "slot-1")
        assert decision.denied is None and decision.holds_slot and decision.concurrent_used == 1
        await backend.charge(plan, 3)
    finally:
        await backend.close()
    redis = shared_redis.client()
    try:
        keys = redis.keys(f"{prefix}*")
        assert len(keys) == 5
        ttls = {k.decode().rsplit(":", 1)[-1]: redis.pttl(k) for k in keys}
        assert 0 < ttls["rpm"] <= 60_000 and 0 < ttls["ipm"] <= 60_000
        assert 0 < ttls["slots"] <= 90_000  # a crashed replica's slot frees itself after the lease
        assert 0 < ttls["20260101"] <= 2 * 86_400_000 and 0 < ttls["202601"] <= 33 * 86_400_000
        # the slot's own lease, not only the set's TTL: a live set does not keep a dead replica's slot
        [(member, score)] = redis.zrange(f"{prefix}{{k}}:slots", 0, -1, withscores=True)
        now_ms = redis.time()[0] * 1000
        assert member == b"slot-1" and now_ms < score <= now_ms + 91_000
    finally:
        redis.close()


async def test_counters_survive_a_new_app(replicas: Any, shared_redis: RedisServer, upstream: Any) -> None:
    [a] = await replicas(shared_redis, "{requests_per_minute: 2}", count=1)
    for _ in range(2):
        assert (await a.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200
    await a.close()  # a replica going away takes nothing with it
    [b] = await replicas(shared_redis, "{requests_per_minute: 2}", count=1)
    assert (await b.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200  # new prefix


async def test_redis_stopped_mid_run_fail_open(replicas: Any, own_redis: RedisServer, upstream: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    [gw] = await replicas(own_redis, "{requests_per_minute: 1}", count=1, on_error="open", timeout_s=0.25)
    assert (await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200
    assert (await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 429
    own_redis.stop()
    before = backend_errors("acquire")
    with caplog.at_level(logging.WARNING, logger="opengateway.limits"):
        async with asyncio.timeout(HANG_GUARD_S):
            resp = await gw.post("/v1/images/generations", json=BODY, headers=AUTH)
    assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers
    assert backend_errors("acquire") == before + 1
    assert any("serving without limits" in r.getMessage() for r in caplog.records)
    own_redis.start()  # back (empty): limits hold again, through the same client
    statuses = [(await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status for _ in range(2)]
    assert statuses == [200, 429]


async def test_redis_stopped_fail_closed_is_503(replicas: Any, own_redis: RedisServer, upstream: Any) -> None:
    [gw] = await replicas(own_redis, "{requests_per_minute: 5}", count=1, on_error="closed", timeout_s=0.25)
    assert (await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200
    own_redis.stop()
    async with asyncio.timeout(HANG_GUARD_S):
        resp = await gw.post("/v1/images/generations", json=BODY, headers=AUTH)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "limits_unavailable"
    assert len(upstream.received) == 1


async def test_stalled_redis_times_out_instead_of_hanging(replicas: Any, own_redis: RedisServer,
                                                          upstream: Any) -> None:
    [gw] = await replicas(own_redis, "{concurrent_requests: 5}", count=1, on_error="closed", timeout_s=0.25)
    assert (await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200
    own_redis.pause()  # connections stay open, nothing answers: only the socket timeout ends it
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            resp = await gw.post("/v1/images/generations", json=BODY, headers=AUTH)
    finally:
        own_redis.resume()
    assert resp.status == 503


async def test_no_limits_no_backend_call(replicas: Any, own_redis: RedisServer, upstream: Any) -> None:
    [gw] = await replicas(own_redis, None, count=1, on_error="closed", timeout_s=0.25)
    own_redis.stop()  # fail-closed and no Redis: any backend call would answer 503
    before = backend_errors("acquire")
    for _ in range(3):
        assert (await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200
    assert backend_errors("acquire") == before


async def test_two_real_gateway_processes_share_one_limit(shared_redis: RedisServer, upstream: Any,
                                                          tmp_path: Any) -> None:
    import socket
    import subprocess
    import sys


    path = tmp_path / "gateway.yaml"
    # A long Redis timeout: on a loaded machine a slow answer must not turn into fail-open.
    path.write_text(limits_yaml(upstream.url, "{requests_per_minute: 20}",
                                backend_yaml(shared_redis.url, f"t{secrets.token_hex(4)}:", timeout_s=5.0))
                    + "server: {access_log: false}\n")
    ports, procs = [], []
    try:
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
            procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path),
                                           "--port", str(ports[-1])],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for proc, port in zip(procs, ports):
            await wait_listening(proc, port)
        clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=KEY, max_retries=0)
                   for p in ports]
        results = await asyncio.gather(*[clients[i % 2].images.with_raw_response.generate(**BODY)
                                         for i in range(60)], return_exceptions=True)
        for sdk in clients:
            await sdk.close()
    finally:
        for proc in procs:
            proc.terminate()
        errors = [proc.communicate(timeout=30)[1] for proc in procs]
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    outcomes = collections.Counter(type(r).__name__ if isinstance(r, Exception) else r.http_response.status_code
                                   for r in results)
    assert len(ok) == 20 and len(refused) == 40, (outcomes, [r for r in results if isinstance(r, Exception)
                                                              and not isinstance(r, openai.RateLimitError)][:3], errors)
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(20))
    assert all(r.response.headers["x-ratelimit-limit-requests"] == "20" and "retry-after" in r.response.headers
               for r in refused)
    assert len(upstream.received) == 20


# -- a Redis that stalls: an acquire given up on may still be run when Redis resumes -------------

async def _first_200(gw: Any, bound_s: float = 10.0) -> int:
    """Requests until one is let through (concurrency limit 1, nothing else in flight): how many
    were refused first. Fails the test past ``bound_s`` (the slot's lease is 360 s)."""
    refused = 0
    async with asyncio.timeout(bound_s):
        while (await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 429:
            refused += 1
            await asyncio.sleep(0.05)
    return refused


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_a_slot_counted_after_a_stall_is_released(replicas: Any, own_redis: RedisServer, upstream: Any,
                                                        loop_stall_guard: object, on_error: str) -> None:
    """SIGSTOP: the acquire times out (served without limits, or refused with 503), but its
    script waits in Redis's socket and runs on SIGCONT, taking the key's only slot for its lease.
    The gateway must give that slot back."""
    [gw] = await replicas(own_redis, "{concurrent_requests: 1}", count=1, on_error=on_error, timeout_s=0.1)
    assert (await gw.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200  # script loaded
    own_redis.pause()
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            resp = await gw.post("/v1/images/generations", json=BODY, headers=AUTH)
    finally:
        own_redis.resume()
    assert resp.status == (200 if on_error == "open" else 503)
    await _first_200(gw)


async def test_an_acquire_cancelled_during_a_stall_leaves_no_slot(own_redis: RedisServer,
                                                                  loop_stall_guard: object) -> None:
    """A client that leaves cancels its request while the acquire waits on a stalled Redis."""
    prefix = f"t{secrets.token_hex(4)}:"
    backend = RedisBackend(LimitsConfig(backend=own_redis.url, key_prefix=prefix, socket_timeout_s=5))
    plan = Plan(key="k", concurrent_requests=1, slot_lease_s=360)
    redis = own_redis.client()
    try:
        assert (await backend.acquire(plan, "warm")).holds_slot
        await backend.release("k", "warm")
        own_redis.pause()
        try:
            waiting = asyncio.create_task(backend.acquire(plan, "gone"))
            await asyncio.sleep(0.2)  # the script is in Redis's socket by now
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            own_redis.resume()
        assert await eventually(lambda: redis.zcard(f"{prefix}{{k}}:slots") == 0 and
                                redis.exists(f"{prefix}{{k}}:gone:gone") == 1, 10)
        assert 0 < redis.pttl(f"{prefix}{{k}}:gone:gone") <= 360_000  # the tombstone lives as long as a slot
        assert (await backend.acquire(plan, "next")).holds_slot
    finally:
        redis.close()
        await backend.close()


async def test_a_release_that_overtakes_its_acquire_wins(shared_redis: RedisServer) -> None:
    """Redis may run the late acquire after the release (they travel on different connections):
    the release's tombstone keeps the acquire from taking the slot."""
    prefix = f"t{secrets.token_hex(4)}:"
    backend = RedisBackend(LimitsConfig(backend=shared_redis.url, key_prefix=prefix))
    plan = Plan(key="k", concurrent_requests=1, requests_per_minute=10, slot_lease_s=360)
    redis = shared_redis.client()
    try:
        backend._release_later("k", "late", 360_000)
        assert await eventually(lambda: redis.exists(f"{prefix}{{k}}:gone:late") == 1, 10)
        with pytest.raises(BackendUnavailable):
            await backend.acquire(plan, "late")
        assert redis.zcard(f"{prefix}{{k}}:slots") == 0 and redis.get(f"{prefix}{{k}}:rpm") is None
        assert (await backend.acquire(plan, "other")).holds_slot
    finally:
        redis.close()
        await backend.close()
