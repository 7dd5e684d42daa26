"""The model table: per-deployment capabilities, and targets that must serve their model."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.http_client import HTTPClient
from gateway.runtime import Resources, Runtime, build_runtime
from gateway.upstream_http import UpstreamHTTP
from tests.conftest import AUTH
from tests.fake_upstream import error

TWO_CLOUDS = """
  - id: azure-sweden
    plugin: azure_openai
    region: swedencentral
    settings:
      endpoint: "{base}"
      api_key: azure-test-key-0123
      deployments: {{openai/gpt-image-1: img1-sweden}}
models:
  openai/gpt-image-1:
    targets: [openai-main, azure-sweden]
"""


@pytest.fixture
async def two_clouds(upstream: Any, make_client: Any) -> Any:
    return await make_client(TWO_CLOUDS.format(base=upstream.base.rstrip("/")))


async def test_deployment_that_cannot_take_the_request_is_skipped(two_clouds: Any, upstream: Any) -> None:
    upstream.script("gpt-image-1", error(503, message="overloaded"), error(503, message="overloaded"))
    resp = await two_clouds.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": "x", "output_format": "webp"})
    assert resp.status == 502
    attempts = (await resp.json())["extra"]["routing"]["attempts"]
    assert [(a["target"], a["status"]) for a in attempts] == [
        ("openai-main:openai/gpt-image-1", "failed"), ("azure-sweden:openai/gpt-image-1", "skipped"),
        ("openai-main:openai/gpt-image-1", "failed")]  # the retry pass: only the target that can
    assert attempts[1]["error_code"] == "unsupported_request" and "webp" in attempts[1]["error_message"]
    assert all(r.path == "/v1/images/generations" for r in upstream.received), "Azure was never called"


async def test_deployment_that_can_take_it_serves_the_fallback(two_clouds: Any, upstream: Any) -> None:
    upstream.script("gpt-image-1", error(503, message="overloaded"))
    resp = await two_clouds.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": "x", "output_format": "png"})
    assert resp.status == 200
    attempts = (await resp.json())["extra"]["routing"]["attempts"]
    assert [(a["provider"], a["region"], a["status"]) for a in attempts] == [
        ("openai", "global", "failed"), ("azure_openai", "swedencentral", "succeeded")]


def build_state(config: Any) -> Runtime:
    """The runtime serve would build (start-up checks), on a client that never connects."""
    return build_runtime(config, Resources(UpstreamHTTP(HTTPClient())))


def test_target_must_serve_its_model(make_config: Any, upstream: Any) -> None:
    config = make_config(TWO_CLOUDS.format(base=upstream.base).replace(
        "targets: [openai-main, azure-sweden]", "targets: [openai-main]\n  openai/gpt-image-2:\n"
        "    targets: [azure-sweden]"))

    with pytest.raises(ConfigError) as info:
        build_state(config)
    [problem] = info.value.problems
    assert problem.path == "$.models.openai/gpt-image-2.targets[0]"
    assert "'azure-sweden' (azure_openai) does not serve 'openai/gpt-image-2'" in problem.message
    assert "openai/gpt-image-1" in problem.message


def test_operator_capabilities_vouch_for_an_unknown_model(make_config: Any) -> None:
    config = make_config("models:\n  acme/painter:\n    targets: [openai-main]\n    capabilities: {max_n: 2}\n")
    state = build_state(config)
    assert state.registry.models["acme/painter"].capabilities.max_n == 2
    assert state.registry.models["acme/painter"].targets[0].capabilities is None


def test_an_openai_base_url_the_client_cannot_call_is_a_config_problem() -> None:
    import msgspec

    from gateway.config_load import parse_config

    config = parse_config(msgspec.json.encode({"providers": [
        {"id": "oa", "plugin": "openai", "settings": {"api_key": "k", "base_url": "ftp://files.example/v1"}}]}).decode(),
        env={})
    with pytest.raises(ConfigError) as caught:
        build_state(config)
    [problem] = caught.value.problems
    assert problem.path == "$.providers[0]" and "not an http(s) URL" in problem.message
