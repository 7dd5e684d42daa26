"""Gateway keys: `opengateway keys create`, expiry, the enabled flag, allowed models and fallbacks."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from typing import Any, AsyncIterator, Callable

import openai
import pytest

from gateway.config import ConfigError
from gateway.config_load import parse_config
from tests.conftest import OTHER_KEY, UPSTREAM_KEY

KEY = "og-test-keys-module-3c9d1a"


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def config_yaml(upstream_url: str, keys: str) -> str:
    return f"""
keys:
{keys}
providers:
  - id: openai-main
    plugin: openai
    settings: {{api_key: {UPSTREAM_KEY}, base_url: "{upstream_url}"}}
"""


@pytest.fixture
def sdk_for(aiohttp_client: Callable[..., Any], upstream: Any) -> Callable[..., Any]:
    """An SDK client on a gateway whose ``keys:`` section is the given YAML."""
    from gateway.app import create_app

    async def make(keys: str, key: str = KEY) -> openai.AsyncOpenAI:
        client = await aiohttp_client(create_app(parse_config(config_yaml(upstream.url, keys), env={})))
        return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)
    return make


def test_keys_create_prints_the_key_once_and_its_hash() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--name", "team-a", "--models",
                          "openai/*", "openai/gpt-image-1-mini"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    [key] = re.findall(r"^(og-\S+)$", out, re.MULTILINE)
    assert len(key) > 40 and out.count(key) == 1
    snippet = out[out.index("  - name:"):]
    config = parse_config("keys:\n" + snippet, env={})
    [entry] = config.keys
    assert entry.name == "team-a" and entry.hash == key_hash(key)
    assert entry.models == ["openai/*", "openai/gpt-image-1-mini"]
    second = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--name", "team-a"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert key not in second  # a new random key every time


async def test_created_key_entry_authenticates(sdk_for: Callable[..., Any], upstream: Any) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--name", "new",
                          "--expires-at", "2999-01-01T00:00:00Z"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    [key] = re.findall(r"^(og-\S+)$", out, re.MULTILINE)
    async with await sdk_for(out[out.index("  - name:"):], key=key) as sdk:
        result = await sdk.images.generate(model="openai/gpt-image-1", prompt="a cube")
    assert len(result.data) == 1


def test_keys_create_refuses_an_expiry_without_time_zone() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--name", "x", "--expires-at",
                           "2026-01-01T00:00:00"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "time zone" in done.stderr and "og-" not in done.stdout


async def test_expired_key_is_401_saying_it_expired(sdk_for: Callable[..., Any], upstream: Any) -> None:
    keys = f'  - {{name: old, hash: "{key_hash(KEY)}", expires_at: "2020-01-01T00:00:00Z"}}'
    async with await sdk_for(keys) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.images.generate(model="openai/gpt-image-1", prompt="a cube")
    assert "expired" in caught.value.message and "2020-01-01" in caught.value.message
    assert caught.value.code == "api_key_expired"
    assert upstream.received == []


async def test_key_before_its_expiry_works(sdk_for: Callable[..., Any], upstream: Any) -> None:
    keys = f'  - {{name: fresh, hash: "{key_hash(KEY)}", expires_at: 2999-01-01T00:00:00+02:00}}'
    async with await sdk_for(keys) as sdk:
        await sdk.images.generate(model="openai/gpt-image-1", prompt="a cube")
    assert len(upstream.received) == 1


def test_expiry_needs_a_time_zone() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'keys:\n  - {{name: a, hash: "{key_hash(KEY)}", expires_at: "2026-01-01T00:00:00"}}',
                     env={})
    [problem] = caught.value.problems
    assert problem.path == "$.keys[0].expires_at" and "timezone" in problem.message and problem.line == 2


async def test_disabled_key_is_401(sdk_for: Callable[..., Any], upstream: Any) -> None:
    async with await sdk_for(f'  - {{name: disabled, hash: "{key_hash(KEY)}", enabled: false}}') as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.images.generate(model="openai/gpt-image-1", prompt="a cube")
    assert upstream.received == []


@pytest.fixture
async def mini_only(client: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    """conftest's ``mini-only`` key: models ["openai/gpt-image-1-mini"]."""
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=OTHER_KEY,
                                  max_retries=0) as sdk:
        yield sdk


async def test_model_not_allowed_is_403_before_any_upstream_call(mini_only: openai.AsyncOpenAI,
                                                                  upstream: Any) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await mini_only.images.generate(model="openai/gpt-image-2", prompt="a cube")
    assert caught.value.code == "model_not_allowed" and caught.value.param == "model"
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert "openai/gpt-image-2" in caught.value.message and "mini-only" in caught.value.message
    assert upstream.received == []
    await mini_only.images.generate(model="openai/gpt-image-1-mini", prompt="a cube")
    assert len(upstream.received) == 1


@pytest.mark.parametrize("where", ["extra", "top"])
async def test_model_allowed_only_as_primary_not_as_fallback_is_403(mini_only: openai.AsyncOpenAI, upstream: Any,
                                                                     where: str) -> None:
    body = {"extra": {"fallbacks": ["openai/gpt-image-2"]}} if where == "extra" else {
        "fallbacks": ["openai/gpt-image-2"]}
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await mini_only.images.generate(model="openai/gpt-image-1-mini", prompt="a cube", extra_body=body)
    assert caught.value.code == "model_not_allowed" and caught.value.param == "extra.fallbacks"
    assert "as a fallback" in caught.value.message
    assert upstream.received == []


async def test_fallback_models_can_widen_what_a_key_falls_back_to(sdk_for: Callable[..., Any], upstream: Any) -> None:
    from tests.fake_upstream import error

    keys = (f'  - {{name: fb, hash: "{key_hash(KEY)}", models: ["openai/gpt-image-1-mini"], '
            'fallback_models: ["openai/gpt-image-1"]}')
    upstream.script("gpt-image-1-mini", error(404, code="model_not_found", message="gone"))
    async with await sdk_for(keys) as sdk:
        result = await sdk.images.generate(model="openai/gpt-image-1-mini", prompt="a cube",
                                           extra_body={"extra": {"fallbacks": ["openai/gpt-image-1"]}})
        with pytest.raises(openai.PermissionDeniedError):
            await sdk.images.generate(model="openai/gpt-image-1", prompt="a cube")  # not as a primary
    assert (result.model_extra or {})["extra"]["routing"]["attempts"][-1]["model"] == "openai/gpt-image-1"
