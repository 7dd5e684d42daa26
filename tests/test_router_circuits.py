"""Circuit breakers through the real app: open, half-open, closed; a single deployment going
straight to its fallback; every circuit open; and their state in ``GET /readyz?verbose=1``."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.fake_upstream import FakeUpstream, block, error, ok
from tests.router_harness import (SINGLE_WITH_FALLBACK, FakeClock, attempts, post)

BREAKER = """  max_attempts_per_target: 1
  breaker: {consecutive_failures: 2, cooldown_s: 10, max_cooldown_s: 15}"""


async def readyz_targets(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/readyz?verbose=1")  # public: no key
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    return {t["target"]: t for t in body["targets"]}


async def test_an_open_breaker_sends_a_single_deployment_straight_to_the_fallback(
        routed: Any, upstream: FakeUpstream, clock: FakeClock) -> None:
    client = await routed(SINGLE_WITH_FALLBACK, BREAKER)
    dead = "openai-main:openai/gpt-image-1"
    upstream.script("gpt-image-1", error(503), error(503))
    for _ in range(2):
        status, body, _ = await post(client)
        assert status == 200 and [a[0] for a in attempts(body)] == ["failed", "succeeded"]
    health = (await readyz_targets(client))[dead]
    assert health["state"] == "open" and health["consecutive_failures"] == 2
    assert health["retry_in_s"] == 10 and health["open_until"] is not None

    # Open: the dead target costs nothing, neither an upstream call nor a wait.
    received = len(upstream.received)
    status, body, _ = await post(client)
    assert status == 200
    assert attempts(body) == [("skipped", "global", "openai/gpt-image-1", "openai"),
                              ("succeeded", "eu-west", "openai/gpt-image-1-mini", "openai")]
    assert body["extra"]["routing"]["attempts"][0]["error_code"] == "circuit_open"
    assert [r.body["model"] for r in upstream.received[received:]] == ["gpt-image-1-mini"]
    assert clock.sleeps == []

    # Cooldown over: one probe; it fails, so the circuit re-opens for longer (15 s, the cap).
    clock.now += 10
    upstream.script("gpt-image-1", error(503))
    status, body, _ = await post(client)
    assert [a[0] for a in attempts(body)] == ["failed", "succeeded"]
    health = (await readyz_targets(client))[dead]
    assert health["state"] == "open" and health["trips"] == 2 and health["retry_in_s"] == 15

    # The next probe succeeds and closes the circuit.
    clock.now += 15
    status, body, _ = await post(client)
    assert attempts(body) == [("succeeded", "global", "openai/gpt-image-1", "openai")]
    health = (await readyz_targets(client))[dead]
    assert health == {**health, "state": "closed", "consecutive_failures": 0, "trips": 0, "open_until": None}


async def test_half_open_lets_one_probe_through_at_a_time(routed: Any, upstream: FakeUpstream,
                                                           clock: FakeClock) -> None:
    client = await routed(SINGLE_WITH_FALLBACK, BREAKER)
    upstream.script("gpt-image-1", error(503), error(503))
    for _ in range(2):
        await post(client)
    clock.now += 10
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", block(started, release))
    probe = asyncio.create_task(post(client))
    await started.wait()
    status, body, _ = await post(client)  # while the probe is in flight
    assert status == 200 and [a[0] for a in attempts(body)] == ["skipped", "succeeded"]
    assert "probe" in body["extra"]["routing"]["attempts"][0]["error_message"]
    release.set()
    status, body, _ = await probe
    assert status == 200 and [a[0] for a in attempts(body)] == ["succeeded"]
    assert (await readyz_targets(client))["openai-main:openai/gpt-image-1"]["state"] == "closed"


async def test_every_circuit_open_answers_503_at_once(routed: Any, upstream: FakeUpstream, clock: FakeClock) -> None:
    client = await routed("  openai/gpt-image-1: {targets: [openai-main]}\n", BREAKER)
    upstream.script("gpt-image-1", error(503), error(503))
    for _ in range(2):
        status, _, _ = await post(client)
        assert status == 502
    received = len(upstream.received)
    status, body, headers = await post(client)
    assert status == 503 and body["error"]["code"] == "all_targets_unavailable"
    assert headers["retry-after"] == "10"
    assert [a[0] for a in attempts(body)] == ["skipped"]
    assert len(upstream.received) == received and clock.sleeps == []


async def test_a_failure_ratio_opens_the_breaker(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(SINGLE_WITH_FALLBACK, """  max_attempts_per_target: 1
  breaker: {consecutive_failures: 100, failure_ratio: 0.5, window_requests: 4}""")
    # Never two failures in a row, yet half of the last four attempts failed.
    upstream.script("gpt-image-1", ok(), error(503), ok(), error(503))
    for _ in range(4):
        status, _, _ = await post(client)
        assert status == 200
    status, body, _ = await post(client)
    assert [a[0] for a in attempts(body)] == ["skipped", "succeeded"]


async def test_readyz_stays_plain_without_verbose(routed: Any) -> None:
    client = await routed()
    resp = await client.get("/readyz")
    assert resp.status == 200 and await resp.json() == {"status": "ready"}
    targets = await readyz_targets(client)
    assert set(targets) == {"openai-main:openai/gpt-image-1", "openai-eu:openai/gpt-image-1",
                            "openai-eu:openai/gpt-image-1-mini", "openai-main:openai/gpt-image-1.5"}
    assert {t["state"] for t in targets.values()} == {"closed"}
    assert targets["openai-eu:openai/gpt-image-1"]["region"] == "eu-west"


async def test_a_429_storm_stays_a_429_with_the_upstreams_retry_after(
        routed: Any, upstream: FakeUpstream, clock: FakeClock) -> None:
    """A rate-limiting upstream is working, not broken: its 429s never open the circuit (which
    would turn them into 503 all_targets_unavailable, another SDK exception and retry policy).
    Within its retry-after the target is skipped at no cost, and the client still gets 429 with
    the time left; afterwards it is tried again."""
    client = await routed(SINGLE_WITH_FALLBACK.replace(", fallbacks: [openai/gpt-image-1-mini]", ""), BREAKER)
    target = "openai-main:openai/gpt-image-1"
    limited = error(429, "rate_limit_exceeded", "Rate limit reached for images per minute.", headers={"retry-after": "20"})
    for round_ in range(4):  # twice the breaker's consecutive_failures
        upstream.script("gpt-image-1", limited)
        called = len(upstream.received)
        status, body, headers = await post(client)
        assert (status, headers["retry-after"], body["error"]["code"]) == (429, "20", "rate_limit_exceeded")
        assert len(upstream.received) == called + 1
        # Within the retry-after: no upstream call, still a 429 with the time left.
        clock.now += 15
        status, body, headers = await post(client)
        assert (status, headers["retry-after"]) == (429, "5") and len(upstream.received) == called + 1
        assert body["extra"]["routing"]["attempts"][0]["error_code"] == "rate_limited"
        clock.now += 5
    health = (await readyz_targets(client))[target]
    assert health["state"] == "closed" and health["trips"] == 0
    status, body, _ = await post(client)  # the upstream takes requests again
    assert status == 200 and attempts(body)[0][0] == "succeeded"
