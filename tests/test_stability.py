"""The ``stability`` provider through the real app, against a fake Stability AI on loopback that
speaks the documented API (tests/fake_stability.py says where each shape comes from).

The API: POST /v2beta/stable-image/generate/{ultra,core,sd3}, multipart/form-data, ``authorization:
Bearer``, ``accept: application/json`` for the base64 answer; ``aspect_ratio`` one of nine (no 4:3),
``output_format`` png/jpeg/webp, ``model`` on sd3; one image per call; 403 ``content_moderation``
and ``finish_reason: CONTENT_FILTERED`` are refusals; 429 after 150 requests in 10 s; credits per
successful image (ultra 8, core 3, sd3.5-large 6.5). Stability's v2beta OpenAPI document, as
copied in https://github.com/tryAGI/StabilityAI/blob/016c91ba97c1d174b3e2a01966f6223379aab94f/src/libs/StabilityAI/openapi.yaml
(published at https://platform.stability.ai/docs/api-reference), and
https://stabilityplatform.freshdesk.com/support/solutions/articles/150000186026-api-key-rate-limit-information .
UNVERIFIED, so kept configurable or conservative: the dollar value of a credit (the
``usd_per_credit`` setting; no price without it), the v2beta 401 body (both forms read), a
``retry-after`` header on 429 (used only when present).
"""

from __future__ import annotations

import base64
import io
from typing import Any, AsyncIterator, Callable

import msgspec
import openai
import pytest
from PIL import Image

from gateway.app import create_app
from gateway.config import ConfigError
from gateway.config_load import parse_config
from gateway.http_client import HTTPClient
from gateway.registry import Registry
from gateway.router import CREDENTIALS_REJECTED
from gateway.testing import FakeUpstream, ProviderContract, bytes_reply, hang, json_reply
from gateway.upstream_http import UpstreamHTTP
from tests import fake_stability as s
from tests.conftest import AUTH, GATEWAY_KEY, vendor_config_yaml

ULTRA = "stability/stable-image-ultra"
SD3 = "stability/sd3.5-large"
PROMPT = "Lighthouse on a cliff overlooking the ocean"
TWO_TARGETS = f"""
models:
  {ULTRA}: {{targets: [stability-0, stability-1]}}
"""


def config_yaml(fake: FakeUpstream, models: str = "", instances: int = 1, settings: str = "",
                router: str = "max_attempts_per_target: 1", keys: tuple[str, ...] = ()) -> str:
    return vendor_config_yaml("stability", "global", lambda i: f"""      api_key: "{keys[i] if i < len(keys) else s.API_KEY}"
      base_url: "{fake.url('')}"
{settings}""", instances, models, router)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def gateway(aiohttp_client: Callable[..., Any], fake: FakeUpstream) -> Callable[..., Any]:
    async def make(**kwargs: Any) -> Any:
        return await aiohttp_client(create_app(parse_config(config_yaml(fake, **kwargs), env={})))
    return make


async def generate(gw: Any, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"model": ULTRA, "prompt": PROMPT, **fields})
    return resp.status, await resp.json()


def decoded(item: dict[str, Any]) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) as picture:
        return str(picture.format), picture.size


# -- success -----------------------------------------------------------------------------------

async def test_success_is_a_multipart_call_answered_as_openai_b64_json(gateway: Callable[..., Any],
                                                                       fake: FakeUpstream) -> None:
    fake.script("POST", s.path("ultra"), s.ok())
    gw = await gateway()
    resp = await gw.post("/v1/images/generations", headers=AUTH,
                         json={"model": ULTRA, "prompt": PROMPT, "size": "1536x1024"})
    body = await resp.json()
    assert resp.status == 200, body
    [sent] = fake.received
    assert sent.path == "/v2beta/stable-image/generate/ultra"
    assert sent.headers["authorization"] == f"Bearer {s.API_KEY}"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sent.form() == {"prompt": PROMPT, "aspect_ratio": "3:2", "output_format": "png"}
    [item] = body["data"]
    assert decoded(item) == ("PNG", (6, 4))
    assert (body["output_format"], body["size"]) == ("png", "6x4")
    assert "usage" not in body  # Stability reports no tokens: none are invented
    assert resp.headers["x-upstream-request-id"].startswith("stab-req-")
    # No usd_per_credit and no configured price: the cost is unknown, with the reason, never 0.
    assert body["extra"]["usage"] == {"cost_usd": None, "cost_usd_details": None, "price_source": None,
                                      "reason": f"no price is configured for the model '{ULTRA}'"}
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["provider"], attempt["status"], attempt["model"]) == ("stability", "succeeded", ULTRA)
    assert attempt["notes"] == ["size 1536x1024 sent as aspect ratio 3:2 (the provider chooses the exact pixels)",
                                "size 1536x1024 is 1.6 megapixels; this model makes about 1 at any aspect ratio"]


async def test_the_official_sdk_as_client_with_n_split_into_priced_calls(gateway: Callable[..., Any],
                                                                         fake: FakeUpstream) -> None:
    fake.always("POST", s.path("sd3"), s.ok("sd3"))
    gw = await gateway(settings="      usd_per_credit: 0.01\n")
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as sdk:
        result = await sdk.images.generate(model=SD3, prompt=PROMPT, n=3, size="1024x1024")
    assert result.data is not None and len(result.data) == 3
    assert all(decoded({"b64_json": d.b64_json}) == ("PNG", (2, 2)) for d in result.data)
    sent = fake.sent_to(s.path("sd3"))
    assert [r.form() for r in sent] == [{"prompt": PROMPT, "model": "sd3.5-large", "aspect_ratio": "1:1",
                                         "output_format": "png"}] * 3
    extra = (result.model_extra or {})["extra"]
    assert extra["routing"]["attempts"][0]["notes"] == [
        "size 1024x1024 sent as aspect ratio 1:1 (the provider chooses the exact pixels)",
        "n=3 asked in 3 calls of at most 1 image (at most 4 at once); each call is billed by the provider"]
    # sd3.5-large: 6.5 credits per image at the configured 0.01 USD per credit.
    assert extra["usage"] == {"cost_usd": 0.195, "cost_usd_details": {"images": 0.195}, "price_source": "plugin"}


async def test_a_configured_price_wins_over_credits(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.always("POST", s.path("core"), s.ok("core"))
    gw = await gateway(settings="      usd_per_credit: 0.01\n", models="""
models:
  stability/stable-image-core: {targets: [stability-0], price: {per_image: 0.035}}
""")
    status, body = await generate(gw, model="stability/stable-image-core", n=2)
    assert status == 200, body
    assert body["extra"]["usage"] == {"cost_usd": 0.07, "cost_usd_details": {"images": 0.07},
                                      "price_source": "config"}


@pytest.mark.parametrize(("size", "ratio", "notes"), [
    ("1024x1024", "1:1", ["size 1024x1024 sent as aspect ratio 1:1 (the provider chooses the exact pixels)"]),
    # Stability has no 4:3 or 3:4: the nearest ratio is sent, and said.
    ("1024x768", "5:4", ["size 1024x768 sent as aspect ratio 5:4 (the nearest it offers to 1.33:1; "
                         "the provider chooses the exact pixels)"]),
    ("768x1024", "4:5", ["size 768x1024 sent as aspect ratio 4:5 (the nearest it offers to 0.75:1; "
                         "the provider chooses the exact pixels)"]),
    ("1792x1024", "16:9", ["size 1792x1024 sent as aspect ratio 16:9 (the nearest it offers to 1.75:1; "
                           "the provider chooses the exact pixels)",
                           "size 1792x1024 is 1.8 megapixels; this model makes about 1 at any aspect ratio"]),
    ("3072x1024", "21:9", ["size 3072x1024 sent as aspect ratio 21:9 (the nearest it offers to 3:1; "
                           "the provider chooses the exact pixels)",
                           "size 3072x1024 is 3.1 megapixels; this model makes about 1 at any aspect ratio"]),
])
async def test_size_mapped_to_the_nearest_aspect_ratio_with_a_note(gateway: Callable[..., Any], fake: FakeUpstream,
                                                                   size: str, ratio: str, notes: list[str]) -> None:
    fake.script("POST", s.path("ultra"), s.ok())
    status, body = await generate(await gateway(), size=size)
    assert status == 200, body
    assert fake.received[0].form()["aspect_ratio"] == ratio
    assert body["extra"]["routing"]["attempts"][0]["notes"] == notes


async def test_auto_size_sends_no_aspect_ratio_and_notes_nothing(gateway: Callable[..., Any],
                                                                 fake: FakeUpstream) -> None:
    fake.script("POST", s.path("ultra"), s.ok())
    status, body = await generate(await gateway(), size="auto")
    assert status == 200, body
    assert fake.received[0].form() == {"prompt": PROMPT, "output_format": "png"}
    assert "notes" not in body["extra"]["routing"]["attempts"][0]


async def test_formats_asked_upstream_and_compression_applied_by_the_gateway(gateway: Callable[..., Any],
                                                                             fake: FakeUpstream) -> None:
    fake.always("POST", s.path("ultra"), s.ok())
    gw = await gateway()
    status, body = await generate(gw, output_format="webp", size="1024x1024")
    assert status == 200, body
    assert fake.received[0].form()["output_format"] == "webp"
    assert decoded(body["data"][0])[0] == "WEBP" and body["output_format"] == "webp"
    assert len(body["extra"]["routing"]["attempts"][0]["notes"]) == 1  # the size note only
    # Stability takes no quality: the gateway re-encodes at the asked compression, and says so.
    status, body = await generate(gw, output_format="jpeg", output_compression=60, size="1024x1024")
    assert status == 200, body
    assert fake.received[1].form()["output_format"] == "jpeg"
    assert decoded(body["data"][0])[0] == "JPEG"
    assert body["extra"]["routing"]["attempts"][0]["notes"][-1] == (
        "1 image converted from jpeg to jpeg at quality 60 by the gateway")


async def test_an_image_in_another_format_than_asked_is_converted(gateway: Callable[..., Any],
                                                                  fake: FakeUpstream) -> None:
    png = base64.b64encode(s.image("png")).decode()
    fake.script("POST", s.path("ultra"), json_reply({"image": png, "seed": 1, "finish_reason": "SUCCESS"}))
    status, body = await generate(await gateway(), output_format="webp")
    assert status == 200, body
    assert decoded(body["data"][0])[0] == "WEBP"
    assert body["extra"]["routing"]["attempts"][0]["notes"] == [
        "1 image converted from png to webp at quality 100 by the gateway"]


async def test_what_stability_cannot_honour_is_refused_before_any_call(gateway: Callable[..., Any],
                                                                       fake: FakeUpstream) -> None:
    gw = await gateway()
    for field, value in (("quality", "high"), ("background", "transparent"), ("moderation", "low")):
        status, body = await generate(gw, **{field: value})
        assert (status, body["error"]["param"]) == (400, field), body
    assert fake.received == []


async def test_seed_and_other_stability_fields_are_forwarded_one_seed_per_call(gateway: Callable[..., Any],
                                                                              fake: FakeUpstream) -> None:
    fake.always("POST", s.path("ultra"), s.ok())
    gw = await gateway(settings="      max_concurrent_calls: 1\n")
    status, body = await generate(gw, n=2, seed=42, negative_prompt="fog", style_preset="cinematic")
    assert status == 200, body
    forms = [r.form() for r in fake.received]
    assert [f["seed"] for f in forms] == ["42", "43"]  # the same seed would make the same image twice
    assert all(f["negative_prompt"] == "fog" and f["style_preset"] == "cinematic" for f in forms)
    assert body["extra"]["routing"]["attempts"][0]["notes"][0] == (
        "seeds 42 to 43 sent, one per call (one seed would make the same image 2 times)")
    status, body = await generate(gw, seed={"value": 1})
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "invalid_type", "seed")
    assert len(fake.received) == 2


# -- failures ----------------------------------------------------------------------------------

async def test_a_rejected_key_is_401_and_the_next_target_serves(gateway: Callable[..., Any],
                                                                fake: FakeUpstream) -> None:
    fake.always("POST", s.path("ultra"), s.ok())
    gw = await gateway(instances=2, models=TWO_TARGETS, keys=("sk-revoked-key-000000000000", s.API_KEY))
    status, body = await generate(gw)
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert (failed["status"], failed["http_status"], failed["error_code"]) == ("failed", 401, "invalid_api_key")
    assert failed["error_message"] == CREDENTIALS_REJECTED.format(target=f"stability-0:{ULTRA}", status=401)
    assert served["status"] == "succeeded" and served["target"] == f"stability-1:{ULTRA}"


def test_the_v1_error_form_is_read_too() -> None:
    from plugins.stability_wire import stability_error

    # The v1 API's 401 (components/responses/401 of the same spec): `message`, not `errors`
    # (the id is the test's own).
    raw = b'{"id": "v1-error-id", "name": "unauthorized", "message": "missing authorization header"}'
    exc = stability_error(401, raw, {})
    assert (exc.status, exc.code) == (401, "invalid_api_key")
    assert exc.message == "Stability AI answered HTTP 401 (unauthorized): missing authorization header"
    assert "sk-x" not in stability_error(400, b'{"errors": ["bad key sk-xyz"]}', {}, "sk-xyz").message


@pytest.mark.parametrize(("headers", "retry_after"), [({"retry-after": "7"}, "7"), (None, None)])
async def test_rate_limit_is_429_with_retry_after_when_stability_sends_one(
        gateway: Callable[..., Any], fake: FakeUpstream, headers: dict[str, str] | None,
        retry_after: str | None) -> None:
    fake.script("POST", s.path("ultra"), s.rate_limited(headers))
    gw = await gateway()
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"model": ULTRA, "prompt": PROMPT})
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (429, "rate_limit_exceeded")
    assert resp.headers.get("retry-after") == retry_after
    assert "150 requests within a 10 second period" in body["error"]["message"]


async def test_a_server_error_is_retried(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", s.path("ultra"), s.server_error(), s.ok())
    status, body = await generate(await gateway(router="max_attempts_per_target: 2, backoff_base_s: 0.01"))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert (failed["http_status"], served["status"]) == (500, "succeeded")


REFUSALS = {"blurred (200 CONTENT_FILTERED)": s.filtered, "403 content_moderation": s.moderated,
            "422 public_figure": s.public_figure}


@pytest.mark.parametrize("shape", list(REFUSALS))
async def test_every_refusal_is_400_moderation_blocked_never_a_200(gateway: Callable[..., Any], fake: FakeUpstream,
                                                                   shape: str) -> None:
    fake.always("POST", s.path("ultra"), REFUSALS[shape]())
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 400, body
    err = body["error"]
    assert (err["type"], err["code"], err["param"]) == ("image_generation_user_error", "moderation_blocked", None)
    assert "data" not in body
    assert len(fake.received) == 1  # a safety decision is final: not routed around


async def test_refusal_messages_say_what_stability_said(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", s.path("ultra"), s.moderated(), s.filtered())
    gw = await gateway()
    assert (await generate(gw))[1]["error"]["message"] == (
        "Stability AI answered HTTP 403 (content_moderation): Your request was flagged by our content moderation "
        "system, as a result your request was denied and you were not charged.")
    assert (await generate(gw))[1]["error"]["message"] == (
        "Stability AI's content moderation flagged the image it made (finish_reason CONTENT_FILTERED) and "
        "blurred it; it is not returned.")


async def test_one_refused_call_of_n_fails_the_attempt_saying_how_many_were_made(
        gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", s.path("ultra"), s.ok(), s.ok(), s.filtered())
    status, body = await generate(await gateway(settings="      max_concurrent_calls: 1\n"), n=3)
    assert (status, body["error"]["code"]) == (400, "moderation_blocked")
    assert body["error"]["message"].startswith("2 of 3 images were made before a call failed (billed by the "
                                               "provider, not returned): Stability AI's content moderation")


@pytest.mark.parametrize(("behaviour", "code", "fragment"), [
    (s.invalid_language(), "invalid_language", "English is the only supported language for this service."),
    (s.error(400, "bad_request", ["aspect_ratio: must be one of 21:9, 16:9"]), "bad_request",
     "aspect_ratio: must be one of"),
    (s.error(413, "payload_too_large", ["body: payloads cannot be larger than 10MiB in size"]), "payload_too_large",
     "10MiB"),
])
async def test_a_rejected_request_is_400_in_openais_shape(gateway: Callable[..., Any], fake: FakeUpstream,
                                                          behaviour: Any, code: str, fragment: str) -> None:
    fake.always("POST", s.path("ultra"), behaviour)
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 400, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error", code)
    assert fragment in body["error"]["message"]
    assert len(fake.received) == 1  # the request's fault: no other target is tried


@pytest.mark.parametrize("answer", [
    b"<html>Bad gateway</html>",
    b'{"image": "!!not base64!!", "finish_reason": "SUCCESS"}',
    b'{"finish_reason": "SUCCESS"}',
    b'{"image": "' + base64.b64encode(b"not an image") + b'", "finish_reason": "SUCCESS"}',
    b'{"image": "' + base64.b64encode(s.image("png")) + b'", "finish_reason": "ERROR"}',
    s.image("png"),  # raw bytes, as for accept: image/*
])
async def test_malformed_answer_is_502_and_the_next_target_serves(gateway: Callable[..., Any], fake: FakeUpstream,
                                                                  answer: bytes) -> None:
    fake.script("POST", s.path("ultra"), bytes_reply(answer, content_type="application/json"), s.ok())
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert (failed["http_status"], failed["error_code"]) == (502, "invalid_upstream_response")
    assert served["status"] == "succeeded"


async def test_a_silent_upstream_times_out_within_the_attempt(gateway: Callable[..., Any],
                                                              fake: FakeUpstream) -> None:
    fake.script("POST", s.path("ultra"), hang())
    status, body = await generate(await gateway(router="max_attempts_per_target: 1, attempt_timeout_s: 0.5"))
    assert (status, body["error"]["code"]) == (504, "deadline_exceeded")
    [attempt] = body["extra"]["routing"]["attempts"]
    assert attempt["status"] == "timeout" and 400 <= attempt["latency_ms"] < 2000


# -- settings and data -------------------------------------------------------------------------

def test_the_model_data_reads_and_keeps_to_stabilitys_enums() -> None:
    from plugins.stability import ASPECT_RATIOS, catalog

    table = catalog()
    assert set(table) == {ULTRA, "stability/stable-image-core", SD3, "stability/sd3.5-large-turbo",
                          "stability/sd3.5-medium"}
    assert {i: (m.endpoint, m.model, m.credits) for i, m in table.items()} == {
        ULTRA: ("ultra", None, 8), "stability/stable-image-core": ("core", None, 3), SD3: ("sd3", "sd3.5-large", 6.5),
        "stability/sd3.5-large-turbo": ("sd3", "sd3.5-large-turbo", 4),
        "stability/sd3.5-medium": ("sd3", "sd3.5-medium", 3.5)}
    for model in table.values():
        assert set(model.aspect_ratios) == set(s.ASPECT_RATIOS) == set(ASPECT_RATIOS)
        assert "4:3" not in model.aspect_ratios
        assert set(model.upstream_formats) <= set(s.FORMATS) and model.model in (None, *s.SD3_MODELS)


@pytest.mark.parametrize(("settings", "fragment"), [
    ({}, "api_key"),
    ({"api_key": ""}, "api_key is empty"),
    ({"api_key": "k", "models": ["stability/sd4"]}, "unknown models ['stability/sd4']"),
    ({"api_key": "k", "usd_per_credit": 0}, "settings.usd_per_credit Expected `float` > 0.0"),
    ({"api_key": "k", "base_url": "ftp://stability.example"}, "not an http(s) URL: 'ftp://stability.example'"),
])
def test_bad_settings_are_config_problems(settings: dict[str, Any], fragment: str) -> None:
    config = parse_config(msgspec.json.encode({"providers": [
        {"id": "st", "plugin": "stability", "settings": settings}]}).decode(), env={})
    with pytest.raises(ConfigError) as caught:
        Registry.build(config, UpstreamHTTP(HTTPClient()))
    [problem] = caught.value.problems
    assert problem.path.startswith("$.providers[0]") and fragment in f"{problem.path} {problem.message}", problem


def test_the_docs_config_example_is_a_working_config() -> None:
    from pathlib import Path

    section = (Path(__file__).resolve().parent.parent / "docs/providers/stability.md").read_text()
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, env={"STABILITY_API_KEY": s.API_KEY})
    registry = Registry.build(config, UpstreamHTTP(HTTPClient()))
    [model] = [m for m in registry.providers["stability"].models() if m.id == "stability/stable-image-core"]
    assert model.price is not None and model.price.per_image == 0.03  # 3 credits at 0.01 USD


# -- the plugin authors' contract suite, run on this plugin ------------------------------------

class TestStabilityContract(ProviderContract):
    plugin = "stability"

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {"api_key": s.API_KEY, "base_url": upstream.url(""), "usd_per_credit": 0.01}

    def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
        endpoint = {"stability/stable-image-ultra": "ultra", "stability/stable-image-core": "core"}.get(model, "sd3")
        answers = {"success": [s.ok(endpoint) for _ in range(n)], "auth": [s.unauthorized()],
                   "rate_limit": [s.rate_limited()], "server_error": [s.server_error()],
                   "refusal": [s.moderated()],
                   "malformed": [bytes_reply(b'{"image": 5}', content_type="application/json")], "hang": [hang()]}
        upstream.script("POST", s.path(endpoint), *answers[kind])
        return True


async def test_a_deeply_nested_answer_fails_the_attempt_not_the_request(gateway: Callable[..., Any],
                                                                        fake: FakeUpstream) -> None:
    # A 200 nested 5,000 levels deep (msgspec would give up with RecursionError): an invalid
    # answer, the next target answers; never a 500.
    fake.script("POST", s.path("ultra"), bytes_reply(b'{"image":' + b"[" * 5000 + b"]" * 5000 + b"}",
                                                     content_type="application/json"), s.ok())
    gw = await gateway(instances=2, models=TWO_TARGETS)
    status, body = await generate(gw)
    assert status == 200, body
    first, second = body["extra"]["routing"]["attempts"]
    assert (first["status"], first["http_status"], first["error_code"]) == ("failed", 502, "invalid_upstream_response")
    assert second["status"] == "succeeded"
