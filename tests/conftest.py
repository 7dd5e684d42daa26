"""Fixtures: the real app, with real plugins, against a fake upstream on loopback."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config, parse_config
from tests.fake_upstream import FakeUpstream

# Unique markers: a test scans outputs for them to prove no key leaks.
GATEWAY_KEY = "og-test-gateway-key-7f3a9c1e5b"
UPSTREAM_KEY = "sk-test-upstream-secret-4d2e8b6a"
OTHER_KEY = "og-test-other-key-0b1c2d3e4f"


def key_hash(key: str) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Any]) -> Any:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    fake.base = str(server.make_url(""))  # type: ignore[attr-defined]
    return fake


def base_config_yaml(upstream_url: str, extra: str = "") -> str:
    return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
  - name: mini-only
    hash: "{key_hash(OTHER_KEY)}"
    models: ["openai/gpt-image-1-mini"]
providers:
  - id: openai-main
    plugin: openai
    region: global
    settings:
      api_key: {UPSTREAM_KEY}
      base_url: "{upstream_url}"
{extra}
"""


@pytest.fixture
def make_config(upstream: Any) -> Callable[..., Config]:
    def make(extra: str = "", yaml_text: str | None = None) -> Config:
        return parse_config(yaml_text if yaml_text is not None else base_config_yaml(upstream.url, extra), env={})
    return make


@pytest.fixture
def make_client(aiohttp_client: Callable[..., Any], make_config: Callable[..., Config]) -> Callable[..., Any]:
    async def make(extra: str = "", config: Config | None = None) -> TestClient:
        return await aiohttp_client(create_app(config or make_config(extra)))
    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    return await make_client()


AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}


def in_flight() -> float:
    """The in-flight gauge's current value (process-global)."""
    from gateway import metrics
    return metrics.IN_FLIGHT.collect()[0].samples[0].value


async def eventually(condition: Callable[[], bool], bound_s: float = 15.0) -> bool:
    """Poll ``condition`` (bounded) while cancelled tasks and closed transports finish."""
    import asyncio
    loop = asyncio.get_running_loop()
    end = loop.time() + bound_s
    while not condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True
