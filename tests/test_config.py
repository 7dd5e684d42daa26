"""The YAML config: env references, every problem reported with its location, env-only mode."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, key_hash
from gateway.config_load import config_from_env, parse_config

HASH = "sha256:" + "a" * 64

GOOD = f"""
server: {{port: 9000}}
keys:
  - {{name: team-a, hash: "{HASH}", models: ["openai/*"]}}
providers:
  - id: openai-us
    plugin: openai
    region: us
    settings: {{api_key: "${{TEST_OPENAI_KEY}}", base_url: "${{TEST_BASE:-http://127.0.0.1:1/v1}}"}}
models:
  openai/gpt-image-1: {{targets: [openai-us], fallbacks: [openai/gpt-image-2]}}
  openai/gpt-image-2: {{targets: [{{provider: openai-us, weight: 2}}]}}
"""


def test_env_references_are_resolved() -> None:
    config = parse_config(GOOD, env={"TEST_OPENAI_KEY": "sk-abc"})
    assert config.providers[0].settings == {"api_key": "sk-abc", "base_url": "http://127.0.0.1:1/v1"}
    assert config.server.port == 9000
    assert config.models["openai/gpt-image-1"].fallbacks == ["openai/gpt-image-2"]


def test_every_problem_is_reported_with_its_line() -> None:
    text = """
server:
  port: 99999
keys:
  - {name: a, hash: "md5:abc"}
providers:
  - id: p1
    plugin: openai
    settings: {api_key: "${MISSING_VAR}"}
  - id: p1
    plugin: openai
models:
  openai/gpt-image-1: {targets: [nowhere]}
  bare-name: {targets: [p1]}
colour: blue
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    found = {(p.path, p.line) for p in info.value.problems}
    messages = " | ".join(str(p) for p in info.value.problems)
    assert ("$.server.port", 3) in found, messages
    assert ("$.keys[0].hash", 5) in found, messages
    assert ("$.providers[0].settings.api_key", 9) in found, messages
    assert ("$.colour", 15) in found, messages
    assert "MISSING_VAR" in messages


def test_reference_problems_are_reported_together() -> None:
    text = """
providers:
  - {id: p1, plugin: openai}
  - {id: p1, plugin: openai}
models:
  openai/gpt-image-1: {targets: [nowhere], fallbacks: [openai/unknown]}
  bare-name: {targets: [p1]}
aliases: {img: openai/none}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    paths = {p.path for p in info.value.problems}
    assert paths == {"$.providers[1].id", "$.models.openai/gpt-image-1.targets[0]",
                     "$.models.openai/gpt-image-1.fallbacks[0]", "$.models.bare-name", "$.aliases.img"}


def test_invalid_yaml_has_a_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("providers:\n  - id: [unclosed\n", env={})
    assert info.value.problems[0].line is not None


def test_env_mode_local_without_openai_key() -> None:
    env = config_from_env({})
    assert env.upstream == "local" and env.generated_key is not None
    assert env.config.providers[0].plugin == "local"
    assert env.config.keys[0].hash == key_hash(env.generated_key)
    # No models: section: the local provider's declared models (the bundled catalogue) are routed.
    assert env.config.models == {}
    from gateway.http_client import HTTPClient
    from gateway.runtime import Resources, build_runtime
    from gateway.upstream_http import UpstreamHTTP
    assert "openai/gpt-image-2" in build_runtime(env.config, Resources(UpstreamHTTP(HTTPClient()))).registry.models


def test_env_mode_openai_with_key_and_base_url() -> None:
    env = config_from_env({"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:5/v1",
                           "OPENGATEWAY_API_KEY": "og-chosen"})
    assert env.upstream == "openai" and env.generated_key is None
    assert env.config.providers[0].settings == {"api_key": "sk-x", "base_url": "http://127.0.0.1:5/v1"}
    assert env.config.keys[0].hash == key_hash("og-chosen")
