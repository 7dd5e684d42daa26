"""/metrics after a scripted mix of successes, fallbacks and failures: every count is exact.

The prometheus registry is process-wide, so each test reads deltas between two scrapes.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import generate_latest

from tests.conftest import AUTH, GATEWAY_KEY, UPSTREAM_KEY
from tests.metrics_reading import G1, MINI, ROUTE, ROUTER, Delta, parse, scrape, total
from tests.fake_upstream import error

async def post(client: Any, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return await client.post(ROUTE, headers=AUTH if headers is None else headers,
                             json={"model": G1, "prompt": "A small red cube.", **body})


async def test_scripted_mix_counts_exactly(upstream: Any, make_client: Any, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    client = await make_client(ROUTER + f"log: {{destination: '{log_path}'}}\n")
    before = await scrape(client)
    user = {**AUTH, "x-opengateway-user-id": "user-1", "x-opengateway-session-id": "s-1"}

    for n in (1, 1, 2):                       # 3 successes on gpt-image-1, 4 images
        assert (await post(client, headers=user, n=n)).status == 200
    upstream.script("gpt-image-1", error(500), error(503))
    for _ in range(2):                        # 2 fallbacks to mini
        resp = await post(client)
        assert resp.status == 200
        assert (await resp.json())["extra"]["usage"]["cost_usd"] == 0.008488
    upstream.script("gpt-image-1", error(500))
    upstream.script("gpt-image-1-mini", error(502))
    assert (await post(client)).status == 502  # every target failed
    upstream.script("gpt-image-1", error(400, code="moderation_blocked", message="blocked"))
    assert (await post(client)).status == 400  # terminal upstream client error
    assert (await post(client, n=11)).status == 400  # refused before any routing
    assert (await post(client, headers={})).status == 401

    d = Delta(before, await scrape(client))
    req = "opengateway_requests_total"
    assert d(req, http_route=ROUTE, gen_ai_request_model=G1, http_response_status_code="200") == 5
    assert d(req, http_route=ROUTE, gen_ai_request_model=G1, http_response_status_code="502") == 1
    assert d(req, http_route=ROUTE, gen_ai_request_model=G1, http_response_status_code="400") == 1
    assert d(req, http_route=ROUTE, gen_ai_request_model="none", http_response_status_code="400") == 1
    assert d(req, http_route=ROUTE, gen_ai_request_model="none", http_response_status_code="401") == 1
    assert d(req, http_route=ROUTE) == 9
    assert d("opengateway_request_duration_seconds_count", http_route=ROUTE, gen_ai_request_model=G1) == 7
    assert d("opengateway_request_duration_seconds_count", http_route=ROUTE) == 9
    assert d("opengateway_gateway_overhead_seconds_count", http_route=ROUTE) == 7  # those that were routed
    assert d("opengateway_request_size_bytes_count", http_route=ROUTE) == 8  # the 401 body was never read
    assert d("opengateway_response_size_bytes_count", http_route=ROUTE) == 9

    att = "opengateway_upstream_attempts_total"
    common = {"gen_ai_provider_name": "openai", "cloud_region": "global"}
    assert d(att, **common, gen_ai_request_model=G1, outcome="succeeded") == 3
    assert d(att, **common, gen_ai_request_model=G1, outcome="failed") == 4
    assert d(att, **common, gen_ai_request_model=MINI, outcome="succeeded") == 2
    assert d(att, **common, gen_ai_request_model=MINI, outcome="failed") == 1
    assert d(att) == 10
    assert d("opengateway_upstream_attempt_duration_seconds_count", gen_ai_request_model=G1) == 7
    assert d("opengateway_fallbacks_total", gen_ai_request_model=G1, gen_ai_response_model=MINI) == 2
    assert d("opengateway_fallbacks_total") == 2

    assert d("opengateway_images_generated_total", gen_ai_response_model=G1) == 4
    assert d("opengateway_images_generated_total", gen_ai_response_model=MINI) == 2
    tok = "opengateway_tokens_total"
    assert d(tok, gen_ai_response_model=G1, gen_ai_token_type="input", modality="text") == 60
    assert d(tok, gen_ai_response_model=G1, gen_ai_token_type="output", modality="image") == 4 * 1056
    assert d(tok, gen_ai_response_model=MINI, gen_ai_token_type="input", modality="text") == 40
    assert d(tok, gen_ai_response_model=MINI, gen_ai_token_type="output", modality="image") == 2 * 1056
    assert d(tok, modality="image", gen_ai_token_type="input") == 0
    # 2 x (20*5 + 1056*40) + (20*5 + 2112*40) per 1M; 2 x (20*2 + 1056*8) per 1M
    assert d("opengateway_cost_usd_total", gen_ai_response_model=G1) == pytest.approx(0.16926, abs=1e-9)
    assert d("opengateway_cost_usd_total", gen_ai_response_model=MINI) == pytest.approx(0.016976, abs=1e-9)
    assert d("opengateway_cost_unknown_total") == 0
    assert d("opengateway_requests_in_flight") == 0  # each scrape sees only itself

    # The access log has one line per request, with the same figures.
    lines = [msgspec.json.decode(line) for line in log_path.read_bytes().splitlines()]
    api = [line for line in lines if line["route"] == ROUTE]
    assert len(api) == 9
    assert collections.Counter(line["status"] for line in api) == {200: 5, 502: 1, 400: 2, 401: 1}
    ok = [line for line in api if line["status"] == 200]
    assert sum(line["images"] for line in ok) == 6
    assert sum(line["cost_usd"] for line in ok) == pytest.approx(0.16926 + 0.016976, abs=1e-9)
    assert [line["model_served"] for line in ok] == [G1, G1, G1, MINI, MINI]
    assert [line["attempts"] for line in api] == [1, 1, 1, 2, 2, 2, 1, 0, 0]
    assert [line["user_id"] for line in api[:3]] == ["user-1"] * 3
    assert {line["key_name"] for line in api[:-1]} == {"test"} and api[-1]["key_name"] is None
    assert api[5]["level"] == "error" and api[6]["level"] == "warning" and api[0]["level"] == "info"
    assert api[6]["error_code"] == "moderation_blocked"
    text = log_path.read_text()
    assert GATEWAY_KEY not in text and UPSTREAM_KEY not in text and "small red cube" not in text


async def test_labels_are_bounded(upstream: Any, make_client: Any) -> None:
    client = await make_client()
    weird = "openai/not-a-model-8d1f"
    resp = await client.post(ROUTE, headers={**AUTH, "x-opengateway-user-id": "user-7e5b",
                                             "x-opengateway-session-id": "session-3a9c"},
                             json={"model": weird, "prompt": "secret prompt 51c2"})
    assert resp.status == 400
    assert (await client.get("/v1/raw/path-6f0e", headers=AUTH)).status == 404
    text = await (await client.get("/metrics")).text()
    for unbounded in (weird, "user-7e5b", "session-3a9c", "51c2", "path-6f0e", "=\"test\""):  # the key's name
        assert unbounded not in text
    samples = parse(text)
    assert total(samples, "opengateway_requests_total", http_route="unmatched") >= 1
    assert total(samples, "opengateway_build_info") == 1


async def test_key_name_label_is_opt_in(upstream: Any, make_client: Any) -> None:
    client = await make_client()
    await post(client)
    samples = await scrape(client)
    assert total(samples, "opengateway_requests_total", key_name="test") == 0
    client = await make_client("metrics: {key_name_label: true}\n")
    before = await scrape(client)
    await post(client)
    d = Delta(before, await scrape(client))
    assert d("opengateway_requests_total", key_name="test", http_response_status_code="200") == 1
    assert d("opengateway_images_generated_total", key_name="test") == 1


async def test_metrics_bearer_token(upstream: Any, make_client: Any) -> None:
    token = "metrics-token-0123456789abcdef"
    client = await make_client(f"metrics: {{bearer_token: {token}}}\n")
    resp = await client.get("/metrics")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/metrics", headers=AUTH)).status == 401  # a gateway key is not enough
    await scrape(client, {"Authorization": f"Bearer {token}"})


async def test_breaker_state_per_target(upstream: Any, make_client: Any) -> None:
    client = await make_client("""
router:
  max_attempts_per_target: 1
  breaker: {consecutive_failures: 1, failure_ratio: null, cooldown_s: 600}
models:
  openai/gpt-image-1:
    targets: [openai-main]
""")
    labels = {"target": "openai-main:openai/gpt-image-1", "gen_ai_provider_name": "openai",
              "cloud_region": "global", "gen_ai_request_model": G1}
    samples = await scrape(client)
    assert total(samples, "opengateway_breaker_state", **labels, state="closed") == 1
    assert total(samples, "opengateway_breaker_state", **labels, state="open") == 0
    upstream.script("gpt-image-1", error(500))
    assert (await post(client)).status == 502
    samples = await scrape(client)
    assert total(samples, "opengateway_breaker_state", **labels, state="open") == 1
    assert total(samples, "opengateway_breaker_state", **labels, state="closed") == 0


def test_a_published_batch_equals_observing_one_by_one() -> None:
    """publish() increments prometheus-client's histogram buckets in bulk; the exposition must be
    exactly what observe() per value gives, bucket edges included (values on a bound go in it)."""
    from prometheus_client import CollectorRegistry, Histogram

    from gateway import metrics

    values = [0.0, 0.0005, 0.0005, 0.0007, 0.001, 0.3, 1.0, 1.0000001, 5, 1e9, 0.024]
    one, bulk = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "h", ["route"], buckets=metrics.OVERHEAD_BUCKETS, registry=one)
    batched = Histogram("h", "h", ["route"], buckets=metrics.OVERHEAD_BUCKETS, registry=bulk)
    for v in values:
        direct.labels("/x").observe(v)
    child = batched.labels("/x")
    assert hasattr(child, "_upper_bounds") and hasattr(child, "_buckets") and hasattr(child, "_sum"), \
        "prometheus-client's histogram layout changed: publish() now takes its slow path"
    metrics._observe_all(child, values)
    assert generate_latest(bulk) == generate_latest(one)
