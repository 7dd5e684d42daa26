"""The limits tests' config: one key with the limits a test gives it, in front of the fake upstream."""

from __future__ import annotations

from gateway.config import key_hash
from tests.conftest import UPSTREAM_KEY

KEY = "og-test-limits-module-5e1f"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": "openai/gpt-image-1", "prompt": "a cube"}


def limits_yaml(upstream_url: str, limits: str | None, backend: str = "", admin: str = "") -> str:
    key_limits = f"    limits: {limits}\n" if limits else ""
    return f"""
keys:
  - name: limited
    hash: "{key_hash(KEY)}"
{key_limits}{admin}{backend}
providers:
  - id: openai-main
    plugin: openai
    settings: {{api_key: {UPSTREAM_KEY}, base_url: "{upstream_url}"}}
"""
