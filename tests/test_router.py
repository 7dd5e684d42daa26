"""The fallback router, black-box: order, fallbacks, retries, time and the all-fail answer
(tests/router_harness.py sets the scene; circuit breakers are in test_router_circuits.py)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import UPSTREAM_KEY
from tests.fake_upstream import FakeUpstream, error, hang, reset, reset_mid_body
from tests.router_harness import (SINGLE_WITH_FALLBACK, TWO_REGIONS, FakeClock, attempts, post, sdk_generate, takes)


# --- fallback and order -----------------------------------------------------------------------

async def test_primary_503_answers_from_the_next_region(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed()  # the defaults: the first pass moves on at once
    upstream.script("gpt-image-1", error(503, message="The engine is currently overloaded."))
    status, body, _ = await post(client)
    assert status == 200, body
    assert attempts(body) == [("failed", "global", "openai/gpt-image-1", "openai"),
                              ("succeeded", "eu-west", "openai/gpt-image-1", "openai")]
    first = body["extra"]["routing"]["attempts"][0]
    assert first["http_status"] == 503 and first["target"] == "openai-main:openai/gpt-image-1"
    assert first["error_message"] == "The engine is currently overloaded."
    assert body["data"][0]["b64_json"]


async def test_a_single_deployment_is_retried_after_a_jittered_backoff(
        routed: Any, upstream: FakeUpstream, clock: FakeClock) -> None:
    client = await routed()
    upstream.script("gpt-image-1.5", error(500), reset())
    status, body, _ = await post(client, "openai/gpt-image-1.5")
    assert status == 502  # two attempts in all (max_attempts_per_target), both failed
    assert [a[0] for a in attempts(body)] == ["failed", "failed"]
    assert body["extra"]["routing"]["attempts"][1]["error_code"] == "connection_error"
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 0.5  # full jitter over [0, base]

    upstream.script("gpt-image-1.5", error(500))
    status, body, _ = await post(client, "openai/gpt-image-1.5")
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("succeeded", "global")]


async def test_fallbacks_come_first_then_the_retries_in_the_same_order(
        routed: Any, upstream: FakeUpstream, clock: FakeClock) -> None:
    client = await routed(SINGLE_WITH_FALLBACK)
    upstream.script("gpt-image-1", error(500), error(500))
    upstream.script("gpt-image-1-mini", error(503))
    status, body, _ = await post(client)
    assert status == 200
    assert attempts(body) == [("failed", "global", "openai/gpt-image-1", "openai"),
                              ("failed", "eu-west", "openai/gpt-image-1-mini", "openai"),
                              ("failed", "global", "openai/gpt-image-1", "openai"),
                              ("succeeded", "eu-west", "openai/gpt-image-1-mini", "openai")]
    assert [r.body["model"] for r in upstream.received] == ["gpt-image-1", "gpt-image-1-mini"] * 2


async def test_request_fallbacks_are_tried_in_the_order_given(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(router="  max_attempts_per_target: 1")
    upstream.script("gpt-image-1", error(502), error(502))
    upstream.script("gpt-image-1.5", error(503))
    status, body, _ = await post(client, fallbacks=["openai/gpt-image-1.5", "openai/gpt-image-1-mini"])
    assert status == 200
    assert [(a[0], a[1], a[2]) for a in attempts(body)] == [
        ("failed", "global", "openai/gpt-image-1"), ("failed", "eu-west", "openai/gpt-image-1"),
        ("failed", "global", "openai/gpt-image-1.5"), ("succeeded", "eu-west", "openai/gpt-image-1-mini")]


async def test_fallbacks_in_extra_and_top_level_must_agree(routed: Any) -> None:
    client = await routed()
    status, body, _ = await post(client, fallbacks=["openai/gpt-image-1.5"],
                                 extra={"fallbacks": ["openai/gpt-image-1-mini"]})
    assert status == 400 and body["error"]["code"] == "conflicting_parameters"
    status, body, _ = await post(client, fallbacks=["openai/gpt-image-1.5"],
                                 extra={"fallbacks": ["openai/gpt-image-1.5"]})
    assert status == 200


async def test_a_fallback_model_that_cannot_take_the_request_is_skipped(routed: Any, upstream: FakeUpstream) -> None:
    models = TWO_REGIONS + """
  openai/gpt-image-2: {targets: [openai-main]}
"""
    client = await routed(models, router="  max_attempts_per_target: 1")
    upstream.script("gpt-image-2", error(503))
    # A flexible size only gpt-image-2 accepts: gpt-image-1-mini is skipped, not an error.
    status, body, _ = await post(client, "openai/gpt-image-2", size="1280x720",
                                 extra={"fallbacks": ["openai/gpt-image-1-mini"]})
    assert status == 502, body
    assert [a[0] for a in attempts(body)] == ["failed", "skipped"]
    assert body["extra"]["routing"]["attempts"][1]["error_code"] == "unsupported_request"


async def test_upstream_404_moves_to_the_next_target(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed()
    upstream.script("gpt-image-1", error(404, "model_not_found", "The model 'gpt-image-1' does not exist."))
    status, body, _ = await post(client)
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("succeeded", "eu-west")]


async def test_a_truncated_upstream_body_is_a_failed_attempt(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(router="  max_attempts_per_target: 1")
    upstream.script("gpt-image-1", reset_mid_body())
    status, body, _ = await post(client)
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("succeeded", "eu-west")]


async def test_weighted_targets_are_shuffled_by_weight(routed: Any, upstream: FakeUpstream) -> None:
    models = """
  openai/gpt-image-1: {targets: [{provider: openai-main, weight: 3}, {provider: openai-eu, weight: 1}]}
"""
    client = await routed(models)
    firsts = []
    for _ in range(40):
        status, body, _ = await post(client)
        assert status == 200
        firsts.append(body["extra"]["routing"]["attempts"][0]["region"])
    # Seeded: deterministic, and both regions take traffic, the heavier one more of it.
    assert firsts.count("global") > firsts.count("eu-west") > 0


# --- policy: terminal errors, credentials --------------------------------------------------------

async def test_moderation_blocked_is_not_routed_around(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed()
    upstream.script("gpt-image-1", error(400, "moderation_blocked", "Your request was rejected by the "
                                         "safety system.", type="image_generation_user_error"))
    status, body, headers = await post(client, fallbacks=["openai/gpt-image-1-mini"])
    assert status == 400
    assert body["error"]["code"] == "moderation_blocked"
    assert body["error"]["type"] == "image_generation_user_error"
    assert headers["x-should-retry"] == "false"
    assert [a[0] for a in attempts(body)] == ["failed"]
    assert len(upstream.received) == 1


async def test_moderation_falls_back_when_the_operator_allows_it(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(router="  fallback_on_moderation: true")
    upstream.script("gpt-image-1", error(400, "moderation_blocked", "Rejected by the safety system."))
    status, body, _ = await post(client)
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("succeeded", "eu-west")]


async def test_upstream_401_is_never_shown_to_the_client(routed: Any, upstream: FakeUpstream,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A refused credential is the operator's business: the client gets a fixed message naming the
    target, never the upstream's words (OpenAI's quote part of the key), and the operator's log
    gets those words, redacted, with the target."""
    client = await routed("  openai/gpt-image-1: {targets: [openai-main, openai-eu]}\n")
    masked = f"{UPSTREAM_KEY[:6]}*****{UPSTREAM_KEY[-4:]}"  # OpenAI's own way of quoting a key
    upstream.script("gpt-image-1", error(401, "invalid_api_key", f"Incorrect API key provided: {masked}."),
                    error(403, None, f"Key {UPSTREAM_KEY[-6:]} may not use this model."))
    status, body, headers = await post(client)
    assert status == 502
    assert headers["x-should-retry"] == "false"  # a retry would meet the same credentials
    assert "credentials" in body["error"]["message"]
    assert [a[0] for a in attempts(body)] == ["failed", "failed"]  # 401/403 are not retried
    messages = [a["error_message"] for a in body["extra"]["routing"]["attempts"]]
    assert messages == [f"The upstream rejected the gateway's credentials for target '{t}:openai/gpt-image-1' "
                        f"(HTTP {s}); the operator has been told." for t, s in (("openai-main", 401),
                                                                                ("openai-eu", 403))]
    text = str(body) + str(dict(headers))
    for piece in (UPSTREAM_KEY[:6], UPSTREAM_KEY[-4:], "Incorrect API key"):
        assert piece not in text
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "credentials" in r.getMessage()]
    assert len(warnings) == 2 and "openai-main:openai/gpt-image-1" in warnings[0]
    assert "Incorrect API key provided: [redacted]." in warnings[0]  # the masked key, scrubbed whole
    assert all(UPSTREAM_KEY[-4:] not in w and UPSTREAM_KEY[:6] not in w for w in warnings)


# --- time: deadline and retry-after ------------------------------------------------------------------

async def test_the_deadline_ends_the_walk_with_504(routed: Any, upstream: FakeUpstream, clock: FakeClock) -> None:
    client = await routed(router="  deadline_s: 100")
    upstream.script("gpt-image-1", *[takes(clock, 40, error(503)) for _ in range(3)])
    with pytest.raises(openai.InternalServerError) as caught:
        await sdk_generate(client)
    assert caught.value.status_code == 504
    body = caught.value.response.json()
    assert body["error"]["code"] == "deadline_exceeded"
    # 40 s in each region, then the first region's retry gets what is left (20 s) and uses it up.
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("failed", "eu-west"), ("failed", "global")]


async def test_the_client_may_ask_for_a_shorter_deadline(routed: Any, upstream: FakeUpstream, clock: FakeClock) -> None:
    client = await routed()
    upstream.script("gpt-image-1", takes(clock, 40, error(503)), takes(clock, 40, error(503)))
    status, body, _ = await post(client, extra={"deadline_s": 50})
    assert status == 504
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("failed", "eu-west")]  # no retries


async def test_retry_after_inside_the_deadline_is_honoured(routed: Any, upstream: FakeUpstream,
                                                           clock: FakeClock) -> None:
    client = await routed()
    upstream.script("gpt-image-1.5", error(429, "rate_limit_exceeded", headers={"retry-after-ms": "2500"}))
    status, body, _ = await post(client, "openai/gpt-image-1.5")
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("succeeded", "global")]
    assert clock.sleeps == [2.5]


async def test_another_target_does_not_wait_for_a_retry_after(routed: Any, upstream: FakeUpstream,
                                                               clock: FakeClock) -> None:
    client = await routed()
    upstream.script("gpt-image-1", error(429, "rate_limit_exceeded", headers={"retry-after": "20"}))
    status, body, _ = await post(client)
    assert status == 200 and clock.sleeps == []
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("succeeded", "eu-west")]


@pytest.mark.parametrize(("retry_after", "settings"), [("20", {"extra": {"deadline_s": 10}}), ("6", {})],
                         ids=["beyond the deadline", "beyond max_retry_after_s"])
async def test_a_retry_after_too_long_is_not_waited_for(routed: Any, upstream: FakeUpstream, clock: FakeClock,
                                                        retry_after: str, settings: dict[str, Any]) -> None:
    client = await routed(router="  max_retry_after_s: 5")
    upstream.script("gpt-image-1.5", error(429, "rate_limit_exceeded", headers={"retry-after": retry_after}))
    status, body, headers = await post(client, "openai/gpt-image-1.5", **settings)
    assert status == 429 and headers["retry-after"] == retry_after  # answered at once
    assert clock.sleeps == [] and [a[0] for a in attempts(body)] == ["failed"]


async def test_a_hanging_attempt_times_out_and_the_next_target_answers(routed: Any, upstream: FakeUpstream) -> None:
    # The one real wait in this file: the per-attempt timeout runs on the event loop's clock.
    client = await routed(router="  attempt_timeout_s: 0.2\n  max_attempts_per_target: 1")
    upstream.script("gpt-image-1", hang())
    status, body, _ = await post(client)
    assert status == 200
    assert [a[:2] for a in attempts(body)] == [("timeout", "global"), ("succeeded", "eu-west")]
    assert body["extra"]["routing"]["attempts"][0]["error_code"] == "timeout"


# --- all targets fail ---------------------------------------------------------------------------------

async def test_all_rate_limited_is_a_429_the_sdk_knows(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(router="  max_attempts_per_target: 1")
    upstream.script("gpt-image-1", *[error(429, "rate_limit_exceeded", "Rate limit reached.",
                                           headers={"retry-after": "90"}) for _ in range(2)])
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk_generate(client)
    assert caught.value.response.headers["retry-after"] == "90"
    body = caught.value.response.json()
    assert body["error"] == {"message": "Rate limit reached.", "type": "requests", "param": None,
                             "code": "rate_limit_exceeded"}
    assert [a[:2] for a in attempts(body)] == [("failed", "global"), ("failed", "eu-west")]


async def test_all_failing_is_a_502_with_every_attempt(routed: Any, upstream: FakeUpstream) -> None:
    client = await routed(SINGLE_WITH_FALLBACK)
    upstream.script("gpt-image-1", error(500), error(429))
    upstream.script("gpt-image-1-mini", error(503), error(503, message="Last words."))
    with pytest.raises(openai.InternalServerError) as caught:
        await sdk_generate(client)
    assert caught.value.status_code == 502
    assert "x-should-retry" not in caught.value.response.headers  # transient: a retry may help
    body = caught.value.response.json()
    assert body["error"]["message"] == "Last words." and body["error"]["code"] == "upstream_error"
    assert [(a["model"], a["http_status"]) for a in body["extra"]["routing"]["attempts"]] == [
        ("openai/gpt-image-1", 500), ("openai/gpt-image-1-mini", 503),
        ("openai/gpt-image-1", 429), ("openai/gpt-image-1-mini", 503)]
