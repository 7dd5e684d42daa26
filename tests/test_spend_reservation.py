"""Spend limits reserve each request's worst case before its call and settle it to the actual cost
after, in one process's memory and in a real Redis shared by two gateways: 40 requests in flight at
once overshoot the limit by at most one request's estimate; a reservation larger than the limit
still lets requests through one after another (each settles to its cost); a failed request gives
back all of it but what may have been billed.

gpt-image-2 at low 1024x1024 is 196 output tokens (OpenAI's calculator; gateway/tokens.py), so an
answer of 5 prompt tokens and 196 image tokens costs 5*5 + 196*30 = 5905 micro-USD, and the
estimate for "A small red cube." (17 characters: 5 tokens) at that size and quality is the same.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any, Callable

import msgspec
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.catalog import openai_image_models
from gateway.config_load import parse_config
from gateway.cost import estimate_usd
from gateway.api import ImageRequest
from tests.conftest import eventually
from tests.fake_upstream import error, hang
from tests.limits_config import AUTH, limits_yaml
from tests.redis_server import RedisServer

LIMIT_USD = 0.05
LOW = {"model": "openai/gpt-image-2", "prompt": "A small red cube.", "size": "1024x1024", "quality": "low"}
AUTO = {"model": "openai/gpt-image-2", "prompt": "A small red cube."}  # auto: the dearest size and quality
ANSWER_USD = 0.005905
USAGE = {"input_tokens": 5, "input_tokens_details": {"text_tokens": 5, "image_tokens": 0}, "output_tokens": 196,
         "output_tokens_details": {"image_tokens": 196, "text_tokens": 0}, "total_tokens": 201}


def estimate(body: dict[str, Any]) -> float:
    entry = openai_image_models()["openai/gpt-image-2"]
    usd = estimate_usd(msgspec.convert(body, ImageRequest), entry.price, entry.tokens)
    assert usd is not None
    return usd


class Held:
    """Answers a low 1024x1024 gpt-image-2 image once released; counts the requests that arrived."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.arrived += 1
        await self.release.wait()
        return answer()


def answer() -> web.Response:
    return web.Response(body=msgspec.json.encode({"created": 1, "data": [{"b64_json": "AAAA"}], "usage": USAGE}),
                        content_type="application/json")


async def answered(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return answer()


def spent(message: str) -> float:
    """The spend a 429 reports ("Limit 0.05, Used 0.053145")."""
    match = re.search(r"Used ([0-9]+(?:\.[0-9]+)?)", message)
    assert match, message
    return float(match.group(1))


@pytest.fixture
def gateways(aiohttp_client: Callable[..., Any], upstream: Any) -> Callable[..., Any]:
    async def make(count: int = 1, backend: str = "", router: str = "") -> list[Any]:
        text = limits_yaml(upstream.url, f"{{spend_usd_per_day: {LIMIT_USD}}}", backend) + router
        return [await aiohttp_client(create_app(parse_config(text, env={}))) for _ in range(count)]
    return make


async def forty_at_once(clients: list[Any], upstream: Any) -> None:
    held = Held()
    upstream.script("gpt-image-2", *([held] * 40))
    tasks = [asyncio.create_task(clients[i % len(clients)].post("/v1/images/generations", json=LOW, headers=AUTH))
             for i in range(40)]
    # Every request is in flight or refused before any is answered: the admitted ones are held.
    assert await eventually(lambda: held.arrived + sum(t.done() for t in tasks) == 40)
    refused = sum(t.done() for t in tasks)
    held.release.set()
    statuses = [(await t).status for t in tasks]
    assert statuses.count(429) == refused and statuses.count(200) == held.arrived == 40 - refused
    # Each reserved 0.005905 while the spend with reservations was below 0.05: 9 of them (8 x 0.005905
    # = 0.04724 < 0.05 <= 9 x 0.005905). Without the reservation all 40 were let through (0.2362 USD).
    assert held.arrived == 9
    after = await clients[0].post("/v1/images/generations", json=LOW, headers=AUTH)
    assert after.status == 429
    total = spent((await after.json())["error"]["message"])
    assert total == round(9 * ANSWER_USD, 6) == 0.053145
    assert LIMIT_USD <= total <= LIMIT_USD + estimate(LOW)


async def test_forty_requests_in_flight_stay_within_one_estimate_in_memory(gateways: Any, upstream: Any) -> None:
    assert estimate(LOW) == ANSWER_USD  # the worst case is this answer's exact cost
    await forty_at_once(await gateways(), upstream)


async def test_forty_requests_on_two_gateways_sharing_redis(gateways: Any, upstream: Any,
                                                            shared_redis: RedisServer) -> None:
    from tests.test_limits_redis import backend_yaml
    backend = backend_yaml(shared_redis.url, f"t{secrets.token_hex(4)}:")
    await forty_at_once(await gateways(2, backend), upstream)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_reservation_settles_to_the_cost_and_a_failure_to_what_may_be_billed(
        gateways: Any, upstream: Any, request: pytest.FixtureRequest, backend: str) -> None:
    config = ""
    if backend == "redis":
        from tests.test_limits_redis import backend_yaml
        redis: RedisServer = request.getfixturevalue("shared_redis")
        config = backend_yaml(redis.url, f"t{secrets.token_hex(4)}:")
    [client] = await gateways(1, config, "router: {attempt_timeout_s: 0.3, max_attempts_per_target: 1}\n")
    assert estimate(AUTO) > 10 * LIMIT_USD  # each request reserves 0.71 USD, far above the limit
    # A refusal by the upstream: nothing can have been billed, the whole reservation goes back.
    upstream.script("gpt-image-2", error(400, "moderation_blocked", "blocked", type="image_generation_user_error"))
    assert (await client.post("/v1/images/generations", json=AUTO, headers=AUTH)).status == 400
    # A timeout after the request was sent: it may have been billed, its estimate stays charged.
    upstream.script("gpt-image-2", hang())
    resp = await client.post("/v1/images/generations", json=LOW, headers=AUTH)
    assert resp.status == 504
    assert (await resp.json())["extra"]["usage"]["possibly_billed_usd"] == ANSWER_USD
    # Then one request after another, each reserving 0.71 USD and settling to 0.005905.
    upstream.script("gpt-image-2", *([answered] * 20))
    statuses = [(await client.post("/v1/images/generations", json=AUTO, headers=AUTH)).status for _ in range(9)]
    assert statuses == [200] * 8 + [429]  # (1 + 8) x 0.005905 = 0.053145 >= 0.05
    resp = await client.post("/v1/images/generations", json=AUTO, headers=AUTH)
    assert resp.status == 429 and spent((await resp.json())["error"]["message"]) == 0.053145
