"""Fixtures: the real app, with real plugins, against a fake upstream on loopback; the router on
a fake clock; real Redis servers. Every fixture of the suite is defined here."""

from __future__ import annotations

import random
import shutil
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config, key_hash, parse_config
from gateway.router import RouterTiming
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, require_redis_server

# Unique markers: a test scans outputs for them to prove no key leaks.
GATEWAY_KEY = "og-test-gateway-key-7f3a9c1e5b"
UPSTREAM_KEY = "sk-test-upstream-secret-4d2e8b6a"
OTHER_KEY = "og-test-other-key-0b1c2d3e4f"
ADMIN_KEY = "og-admin-key-9d8c7b6a5f4e3d2c"
#: Config lines for a dashboard test: one admin key, no retries, no auto-refresh.
ADMIN = f"""
admin_keys:
  - name: ops
    hash: "{key_hash(ADMIN_KEY)}"
router: {{max_attempts_per_target: 1}}
dashboard: {{refresh_s: 3600}}
"""


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
    async def make(extra: str = "", config: Config | None = None, timing: RouterTiming = RouterTiming()
                   ) -> TestClient:
        return await aiohttp_client(create_app(config or make_config(extra), timing=timing))
    return make


@pytest.fixture
def started_from_file(aiohttp_client: Callable[..., Any], upstream: FakeUpstream, tmp_path: Any) -> Callable[..., Any]:
    """A gateway started from a config file (the base config plus ``extra``), as ``serve --config``
    does, so that a reload re-reads it: the client, the file and the text written to it."""
    from gateway.config import load_config

    async def start(extra: str = "") -> tuple[TestClient, Any, str]:
        path = tmp_path / "gateway.yaml"
        text = base_config_yaml(upstream.url, extra)
        path.write_text(text)
        return await aiohttp_client(create_app(load_config(str(path)), config_path=str(path))), path, text
    return start


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


@pytest.fixture
def clock() -> Any:
    from tests.router_harness import FakeClock
    return FakeClock()


@pytest.fixture
def routed(make_client: Callable[..., Any], make_config: Callable[..., Any], upstream: FakeUpstream,
           clock: Any) -> Callable[..., Any]:
    """A client of the real app whose router runs on the fake clock and a seeded rng
    (tests/router_harness.py), handed in through create_app as any caller would."""
    from tests.router_harness import TWO_REGIONS, config_yaml

    async def make(models: str = TWO_REGIONS, router: str = "", seed: int = 7) -> TestClient:
        config = make_config(yaml_text=config_yaml(upstream.url, models, router))
        return await make_client(config=config, timing=RouterTiming(clock, clock.sleep, random.Random(seed)))
    return make


def _redis() -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One real redis-server for a test module; tests keep apart with their own ``limits.key_prefix``."""
    yield from _redis()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A real redis-server of the test's own, to stop or pause mid-run."""
    yield from _redis()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A real headless Chromium (tests/chromium.py); modules using it skip when it is missing locally."""
    from tests.chromium import launch
    async with launch() as devtools:
        yield devtools
