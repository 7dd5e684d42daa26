"""Ambiguous failures: a timeout or a lost connection after the whole request reached the upstream
means it may be generating, and billing, an image. Each attempt says whether it may have been
billed; ``router.on_ambiguous`` decides what follows (``fallback`` by default: never the same
target again; ``retry``; ``fail``), and what those attempts may have cost is reported in the
answer's ``extra.usage``, the access log and the metrics.

The router runs on the fake clock (tests/router_harness.py); the fake upstream resets the
connection after it has read the request (``reset``), as a crashed or restarted server does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from gateway.app import create_app
from gateway.config import key_hash
from gateway.config_load import parse_config
from tests.conftest import AUTH, GATEWAY_KEY, UPSTREAM_KEY, eventually
from tests.fake_upstream import FakeUpstream, error, hang, reset, reset_mid_body, streamed
from tests.metrics_reading import Delta, scrape
from tests.router_harness import TWO_REGIONS, attempts, config_yaml, post

PROMPT = "A small red cube on a white background."
#: The most that request can cost on gpt-image-1 with size and quality left to "auto" (an upper
#: bound, as the upstream chooses): 1536x1024 at high quality, 6,240 image output tokens at $40 per
#: million, plus the prompt's 10 tokens (40 characters, 4 a token) at $5 per million (OpenAI's
#: image generation guide and pricing page, as in gateway/data/models.yaml).
MOST_IT_COULD_COST = round(6240 * 40 / 1e6 + 10 * 5 / 1e6, 10)


def billed(body: dict[str, Any]) -> list[bool]:
    return [a.get("possibly_billed", False) for a in body["extra"]["routing"]["attempts"]]


async def test_by_default_an_ambiguous_target_is_never_called_again(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed()
    # global resets after reading the request; eu-west fails cleanly once, then answers.
    upstream.script("gpt-image-1", reset(), error(500))
    status, body, _ = await post(client)
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("failed", "eu-west"), ("succeeded", "eu-west")]
    assert billed(body) == [True, False, False]
    usage = body["extra"]["usage"]
    assert usage["possibly_billed_attempts"] == 1
    assert usage["possibly_billed_usd"] == MOST_IT_COULD_COST


async def test_retry_treats_an_ambiguous_failure_like_any_other(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(router="  on_ambiguous: retry")
    upstream.script("gpt-image-1", reset(), error(500))
    status, body, _ = await post(client)
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("failed", "eu-west"), ("succeeded", "global")]
    assert body["extra"]["usage"]["possibly_billed_attempts"] == 1


async def test_fail_answers_at_once(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(router="  on_ambiguous: fail")
    upstream.script("gpt-image-1", reset_mid_body())
    status, body, _ = await post(client)
    assert status == 502 and len(attempts(body)) == 1 and billed(body) == [True]
    assert body["extra"]["usage"]["possibly_billed_attempts"] == 1
    assert len(upstream.received) == 1


async def test_a_timeout_after_sending_is_ambiguous(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(router="  attempt_timeout_s: 0.2")
    upstream.script("gpt-image-1", hang(), error(500))
    status, body, _ = await post(client)
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("timeout", "global"), ("failed", "eu-west"), ("succeeded", "eu-west")]
    assert billed(body) == [True, False, False]


async def test_a_refusal_is_not_ambiguous(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed("  openai/gpt-image-1.5: {targets: [openai-main]}\n")
    upstream.script("gpt-image-1.5", error(503), error(429, "rate_limit_exceeded"))
    status, body, _ = await post(client, "openai/gpt-image-1.5")
    assert status in (429, 502) and billed(body) == [False, False]
    assert "possibly_billed_attempts" not in (body["extra"].get("usage") or {})


async def test_a_connection_never_made_is_not_ambiguous(aiohttp_client: Any, unused_tcp_port: int) -> None:
    config = parse_config(f"""
keys: [{{name: test, hash: "{key_hash(GATEWAY_KEY)}"}}]
providers:
  - id: nowhere
    plugin: openai
    settings: {{api_key: {UPSTREAM_KEY}, base_url: "http://127.0.0.1:{unused_tcp_port}/v1"}}
router: {{backoff_base_s: 0.01}}
""", env={})
    gateway = await aiohttp_client(create_app(config))
    resp = await gateway.post("/v1/images/generations", json={"model": "openai/gpt-image-1", "prompt": PROMPT},
                              headers=AUTH)
    body = await resp.json()
    assert resp.status == 502
    # Nothing reached an upstream: the same target is retried, and nothing may have been billed.
    assert [a["error_code"] for a in body["extra"]["routing"]["attempts"]] == ["connection_error"] * 2
    assert billed(body) == [False, False]


async def test_possibly_billed_is_in_the_log_and_the_metrics(aiohttp_client: Any, make_config: Any,
                                                           upstream: FakeUpstream, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    config = make_config(yaml_text=config_yaml(upstream.url, TWO_REGIONS) + f"log: {{destination: '{log}'}}\n")
    gateway = await aiohttp_client(create_app(config))
    labels = {"gen_ai_provider_name": "openai", "cloud_region": "global", "gen_ai_request_model": "openai/gpt-image-1"}
    before = await scrape(gateway)
    upstream.script("gpt-image-1", reset())
    resp = await gateway.post("/v1/images/generations", json={"model": "openai/gpt-image-1", "prompt": PROMPT},
                              headers=AUTH)
    assert resp.status == 200
    assert await eventually(lambda: log.exists() and bool(log.read_text()))
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["possibly_billed_attempts"] == 1 and line["possibly_billed_usd"] > 0
    delta = Delta(before, await scrape(gateway))
    assert delta("opengateway_possibly_billed_attempts_total", **labels) == 1
    usd = delta("opengateway_possibly_billed_usd_total", gen_ai_request_model="openai/gpt-image-1")
    assert abs(usd - MOST_IT_COULD_COST) < 1e-9  # a float sum of two scrapes


async def test_a_stream_that_breaks_off_may_have_been_billed(client: Any, upstream: FakeUpstream) -> None:
    upstream.script("gpt-image-1", streamed(fail_after=1))
    resp = await client.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": PROMPT, "stream": True, "partial_images": 2})
    text = (await resp.read()).decode()
    error_event = msgspec.json.decode(text.split("event: error\ndata: ")[1].split("\n\n")[0])
    extra = error_event["error"]["extra"]
    assert extra["usage"]["possibly_billed_attempts"] == 1
    assert extra["routing"]["attempts"][-1]["possibly_billed"] is True
