"""The routing tests' harness: the real app and the real openai plugin against the fake upstream,
with the router on a fake clock (the ``clock`` and ``routed`` fixtures in tests/conftest.py).

Two provider instances (regions ``global`` and ``eu-west``) point at the same fake upstream, which
scripts behaviours per upstream model name. The router runs on a fake clock whose sleep advances
time at once, so backoff, retry-after, deadlines and breaker cooldowns cost no real time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import key_hash
from tests.conftest import AUTH, GATEWAY_KEY, UPSTREAM_KEY
from tests.fake_upstream import Behaviour

PROMPT = "A small red cube on a white background."


class FakeClock:
    """Monotonic time that only moves when told to, or when the router sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def takes(clock: FakeClock, seconds: float, then: Behaviour) -> Behaviour:
    """An upstream call that lasts ``seconds`` on the fake clock, then behaves like ``then``."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        clock.now += seconds
        return await then(request, body)
    return reply


def config_yaml(url: str, models: str, router: str = "") -> str:
    provider = "\n".join(f"""  - id: {pid}
    plugin: openai
    region: {region}
    settings: {{api_key: {UPSTREAM_KEY}, base_url: "{url}"}}""" for pid, region in
                         (("openai-main", "global"), ("openai-eu", "eu-west")))
    return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:
{provider}
models:
{models}
router:
  backoff_base_s: 0.5
{router}
"""


#: gpt-image-1 in two regions; gpt-image-1-mini and gpt-image-1.5 in one each.
TWO_REGIONS = """
  openai/gpt-image-1: {targets: [openai-main, openai-eu]}
  openai/gpt-image-1-mini: {targets: [openai-eu]}
  openai/gpt-image-1.5: {targets: [openai-main]}
"""
#: gpt-image-1 has a single deployment and falls back to gpt-image-1-mini by default.
SINGLE_WITH_FALLBACK = """
  openai/gpt-image-1: {targets: [openai-main], fallbacks: [openai/gpt-image-1-mini]}
  openai/gpt-image-1-mini: {targets: [openai-eu]}
"""


async def post(client: TestClient, model: str = "openai/gpt-image-1", **fields: Any) -> tuple[int, Any, Any]:
    resp = await client.post("/v1/images/generations", json={"model": model, "prompt": PROMPT, **fields},
                             headers=AUTH)
    return resp.status, await resp.json(), resp.headers


def attempts(body: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(status, region, model, provider) of each attempt."""
    return [(a["status"], a["region"], a["model"], a["provider"]) for a in body["extra"]["routing"]["attempts"]]


async def sdk_generate(client: TestClient) -> None:
    """One call through the official SDK (no retries of its own): it raises on an error status."""
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=GATEWAY_KEY,
                                  max_retries=0) as sdk:
        await sdk.images.generate(model="openai/gpt-image-1", prompt=PROMPT)
