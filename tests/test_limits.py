"""Per-key limits on the default in-memory backend, through the real app and the official SDK."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import openai
import pytest

from gateway.app import create_app
from gateway.config_load import parse_config
from gateway.limits.policy import reset_text
from tests.fake_upstream import error, ok
from tests.gate import Gate
from tests.limits_config import AUTH, BODY, KEY, limits_yaml

@pytest.fixture
def gateway(aiohttp_client: Callable[..., Any], upstream: Any) -> Callable[..., Awaitable[Any]]:
    async def make(limits: str | None, backend: str = "") -> Any:
        return await aiohttp_client(create_app(parse_config(limits_yaml(upstream.url, limits, backend), env={})))
    return make


@pytest.fixture
def sdk_on() -> Callable[[Any], openai.AsyncOpenAI]:
    def make(client: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=KEY, max_retries=0)
    return make


async def test_requests_per_minute_headers_then_429(gateway: Any, sdk_on: Any, upstream: Any) -> None:
    client = await gateway("{requests_per_minute: 3}")
    for remaining in (2, 1, 0):
        resp = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
        assert resp.status == 200
        assert resp.headers["x-ratelimit-limit-requests"] == "3"
        assert resp.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert resp.headers["x-ratelimit-reset-requests"].endswith("s")
    async with sdk_on(client) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.images.generate(**BODY)
    err = caught.value
    assert err.code == "rate_limit_exceeded" and err.type == "requests"
    assert "requests per minute" in err.message and "'limited'" in err.message and "Limit 3" in err.message
    headers = err.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.received) == 3


async def test_limit_headers_replace_the_upstreams(gateway: Any, upstream: Any) -> None:
    upstream.script("gpt-image-1", ok(headers={"x-ratelimit-limit-requests": "5000",
                                               "x-ratelimit-remaining-requests": "4999"}))
    client = await gateway("{requests_per_minute: 7}")
    resp = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
    assert resp.headers.getall("x-ratelimit-limit-requests") == ["7"]
    assert resp.headers["x-ratelimit-remaining-requests"] == "6"


async def test_images_per_minute_counts_n(gateway: Any, upstream: Any) -> None:
    client = await gateway("{images_per_minute: 5}")
    resp = await client.post("/v1/images/generations", json={**BODY, "n": 3}, headers=AUTH)
    assert resp.status == 200 and resp.headers["x-ratelimit-remaining-images"] == "2"
    assert "x-ratelimit-limit-requests" not in resp.headers
    resp = await client.post("/v1/images/generations", json={**BODY, "n": 3}, headers=AUTH)
    assert resp.status == 429
    assert "images per minute" in (await resp.json())["error"]["message"]
    assert resp.headers["x-ratelimit-limit-images"] == "5" and resp.headers["x-ratelimit-remaining-images"] == "2"
    resp = await client.post("/v1/images/generations", json=BODY, headers=AUTH)  # n defaults to 1
    assert resp.status == 200 and resp.headers["x-ratelimit-remaining-images"] == "1"
    assert len(upstream.received) == 2


async def test_concurrent_requests_and_release(gateway: Any, upstream: Any) -> None:
    client = await gateway("{concurrent_requests: 2}")
    gate = Gate(2)
    upstream.script("gpt-image-1", gate, gate)
    held = [asyncio.create_task(client.post("/v1/images/generations", json=BODY, headers=AUTH)) for _ in range(2)]
    await gate.all_arrived.wait()
    refused = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
    assert refused.status == 429 and refused.headers["retry-after"] == "1"
    assert "concurrent requests" in (await refused.json())["error"]["message"]
    gate.release.set()
    assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
    for _ in range(3):  # the slots came back
        assert (await client.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200


async def test_slot_is_released_when_the_request_fails(gateway: Any, upstream: Any) -> None:
    client = await gateway("{concurrent_requests: 1}")
    upstream.script("gpt-image-1", error(400, code="moderation_blocked", message="no"))
    assert (await client.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 400
    assert (await client.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200


async def test_slot_is_released_when_the_client_goes_away(gateway: Any, upstream: Any) -> None:
    client = await gateway("{concurrent_requests: 1}")
    gate = Gate(1)
    upstream.script("gpt-image-1", gate)
    task = asyncio.create_task(client.post("/v1/images/generations", json=BODY, headers=AUTH))
    await gate.all_arrived.wait()
    task.cancel()  # the client disconnects; the server cancels the handler (handler_cancellation)
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.release.set()
    for _ in range(50):  # bounded: the server notices the closed connection on its next loop turns
        resp = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
        if resp.status == 200:
            break
        await asyncio.sleep(0.02)
    assert resp.status == 200


async def test_spend_per_day_charges_actual_cost_after_the_response(gateway: Any, upstream: Any) -> None:
    # One gpt-image-1 answer of the fake upstream costs 20 text-in + 1056 image-out tokens: ~0.042 USD.
    client = await gateway("{spend_usd_per_day: 0.05}")
    first = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
    second = await client.post("/v1/images/generations", json=BODY, headers=AUTH)  # 0.042 < 0.05: allowed
    assert (first.status, second.status) == (200, 200)
    third = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
    assert third.status == 429
    err = (await third.json())["error"]
    assert "spend (USD) per day" in err["message"] and err["code"] == "rate_limit_exceeded"
    assert third.headers["x-should-retry"] == "false" and int(third.headers["retry-after"]) <= 86400
    assert len(upstream.received) == 2


async def test_a_key_without_limits_is_never_limited(gateway: Any, upstream: Any) -> None:
    client = await gateway(None)
    statuses = [(await client.post("/v1/images/generations", json=BODY, headers=AUTH)).status for _ in range(5)]
    assert statuses == [200] * 5


async def test_models_list_is_not_counted(gateway: Any, upstream: Any) -> None:
    client = await gateway("{requests_per_minute: 1}")
    for _ in range(3):
        assert (await client.get("/v1/models", headers=AUTH)).status == 200
    assert (await client.post("/v1/images/generations", json=BODY, headers=AUTH)).status == 200


@pytest.mark.parametrize(("seconds", "text"), [(0.02, "20ms"), (1.5, "1.5s"), (59.9991, "59.999s"),
                                               (360, "6m0s"), (61.2, "1m2s")])
def test_reset_format_is_openais(seconds: float, text: str) -> None:
    assert reset_text(seconds) == text


def test_limits_config_problems_are_located() -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(limits_yaml("http://127.0.0.1:1/v1", "{requests_per_minute: 0}",
                                 "limits: {backend: 'mysql://x'}"), env={})
    paths = sorted(p.path for p in caught.value.problems)
    assert paths == ["$.keys[0].limits.requests_per_minute", "$.limits.backend"]
