"""The ``fal`` provider through the real app, against a fake fal on loopback that speaks the
documented API (tests/fake_fal.py says where each shape comes from).

``POST https://fal.run/<endpoint>`` ("run sends a direct HTTP request to fal.run ... no queue",
https://fal.ai/docs/model-apis/model-endpoints/synchronous-requests) with ``Authorization: Key``
(github fal-ai/fal-js libs/client/src/request.ts); FluxDevInput's ``image_size``, ``num_images``,
``output_format`` (jpeg|png), ``enable_safety_checker`` (default true) and the output's
``has_nsfw_concepts`` (fal-js types/endpoints.ts); result files on ``v3.fal.media``
(https://fal.ai/docs/model-apis/data-retention); errors (https://fal.ai/docs/documentation/model-apis/errors.md);
FLUX.1 [dev] at "$0.025 per megapixels" (https://fal.ai/models/fal-ai/flux-1/dev/llms.txt).
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
from tests import fake_fal as f
from tests.conftest import AUTH, GATEWAY_KEY, vendor_config_yaml

PROMPT = "A lighthouse on a cliff at dusk"
DEV1 = "fal/flux-1-dev"
DEV = "fal/flux-dev"
RUN1 = "/fal-ai/flux-1/dev"
RUN = "/fal-ai/flux/dev"
# The fake fal is reached as 127.0.0.1, which the operator adds to the plugin's domains (a test
# double); the attacker's server is reached as "localhost" (127.0.0.1 too, on another port).


def config_yaml(fake: FakeUpstream, models: str = "", instances: int = 1, settings: str = "",
                router: str = "max_attempts_per_target: 1", domains: str = '["127.0.0.1"]') -> str:
    return vendor_config_yaml("fal", "us", lambda i: f"""      api_key: "{f.API_KEY}"
      base_url: "{fake.url('')}"
      extra_domains: {domains}
{settings}""", instances, models, router)


TWO_TARGETS = f"""
models:
  {DEV1}: {{targets: [fal-0, fal-1]}}
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def attacker() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        upstream.always("GET", "/internal/a.jpeg", bytes_reply(f.image(8, 8), content_type="image/jpeg"))
        yield upstream


@pytest.fixture
def fal(fake: FakeUpstream) -> f.FakeFal:
    return f.FakeFal(fake)


@pytest.fixture
def gateway(aiohttp_client: Callable[..., Any], fake: FakeUpstream) -> Callable[..., Any]:
    async def make(**kwargs: Any) -> Any:
        return await aiohttp_client(create_app(parse_config(config_yaml(fake, **kwargs), env={})))
    return make


async def generate(gw: Any, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"model": DEV1, "prompt": PROMPT, **fields})
    return resp.status, await resp.json()


def pixels(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as picture:
        return picture.size


# -- success -----------------------------------------------------------------------------------

async def test_sync_call_with_urls_fetched_into_b64_json_priced_per_megapixel(
        gateway: Callable[..., Any], fake: FakeUpstream, fal: f.FakeFal) -> None:
    fake.script("POST", RUN1, fal.run())
    gw = await gateway()
    resp = await gw.post("/v1/images/generations", headers=AUTH,
                         json={"model": DEV1, "prompt": PROMPT, "size": "1024x1024", "output_format": "png",
                               "seed": 7})
    body = await resp.json()
    assert resp.status == 200, body
    sent, fetch = fake.received
    assert (sent.method, sent.path) == ("POST", "/fal-ai/flux-1/dev")
    assert sent.headers["authorization"] == f"Key {f.API_KEY}" and sent.headers["content-type"] == "application/json"
    assert sent.json() == {"prompt": PROMPT, "enable_safety_checker": True, "num_images": 1, "output_format": "png",
                           "image_size": {"width": 1024, "height": 1024}, "seed": 7}
    assert fetch.method == "GET" and "authorization" not in fetch.headers  # fal's CDN files are public
    [item] = body["data"]
    assert base64.b64decode(item["b64_json"]) == f.image(1024, 1024, "png")
    assert (body["output_format"], body["size"]) == ("png", "1024x1024")
    assert "usage" not in body and resp.headers["x-upstream-request-id"] == f.REQUEST_ID
    # $0.025 per megapixel: 1.048576 MP.
    assert body["extra"]["usage"] == {"cost_usd": 0.0262144, "price_source": "plugin",
                                      "cost_usd_details": {"megapixels": 0.0262144}}
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["provider"], attempt["region"], attempt["status"]) == ("fal", "us", "succeeded")
    assert "notes" not in attempt


async def test_the_official_sdk_as_client_with_n_as_num_images_split_above_four(
        gateway: Callable[..., Any], fake: FakeUpstream, fal: f.FakeFal) -> None:
    fake.always("POST", RUN1, fal.run())
    gw = await gateway()
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as sdk:
        result = await sdk.images.generate(model=DEV1, prompt=PROMPT, n=6, size="1536x1024")
    assert len(result.data) == 6 and all(pixels(d.b64_json or "") == (1440, 960) for d in result.data)
    runs = fake.sent_to(RUN1)
    assert sorted(r.json()["num_images"] for r in runs) == [2, 4]
    assert all(r.json()["image_size"] == {"width": 1440, "height": 960} for r in runs)
    assert len(fal.files()) == 6
    extra = (result.model_extra or {})["extra"]
    assert extra["routing"]["attempts"][0]["notes"] == [
        "size 1536x1024 sent as 1440x960 (edges multiples of 32 from 256 to 1440)",
        "n=6 asked in 2 calls of at most 4 images (at most 4 at once); each call is billed by the provider"]
    assert extra["usage"]["cost_usd"] == pytest.approx(6 * 1.3824 * 0.025)


async def test_webp_is_made_from_png_and_auto_leaves_the_size_to_fal(gateway: Callable[..., Any],
                                                                    fake: FakeUpstream, fal: f.FakeFal) -> None:
    fake.script("POST", RUN, fal.run())
    status, body = await generate(await gateway(), model=DEV, output_format="webp")
    assert status == 200, body
    sent = fake.received[0].json()
    assert sent["output_format"] == "png" and "image_size" not in sent
    assert body["output_format"] == "webp" and pixels(body["data"][0]["b64_json"]) == (1024, 768)
    assert body["extra"]["routing"]["attempts"][0]["notes"] == ["1 image converted from png to webp at quality 100 "
                                                                "by the gateway"]
    # fal-ai/flux/dev's price is not verified: no price is declared, so the cost is null, never 0
    # (the gateway's reason names the missing usage, since without a price it would read tokens).
    assert body["extra"]["usage"] == {"cost_usd": None, "cost_usd_details": None, "price_source": None,
                                      "reason": "no price is configured for the model 'fal/flux-dev'"}


async def test_the_operator_may_turn_the_safety_checker_off(gateway: Callable[..., Any], fake: FakeUpstream,
                                                            fal: f.FakeFal) -> None:
    fake.script("POST", RUN1, fal.run())
    status, _ = await generate(await gateway(settings="      enable_safety_checker: false\n"))
    assert status == 200 and fake.received[0].json()["enable_safety_checker"] is False


async def test_what_fal_cannot_honour_is_refused_before_any_call(gateway: Callable[..., Any],
                                                                 fake: FakeUpstream) -> None:
    gw = await gateway()
    for field, value in (("quality", "high"), ("background", "transparent"), ("moderation", "low"),
                         ("enable_safety_checker", False)):
        status, body = await generate(gw, **{field: value})
        assert (status, body["error"]["param"]) == (400, field), body
    assert fake.received == []


# -- refusals ----------------------------------------------------------------------------------

async def test_has_nsfw_concepts_is_400_moderation_blocked_never_a_black_image(
        gateway: Callable[..., Any], fake: FakeUpstream, fal: f.FakeFal) -> None:
    fake.always("POST", RUN1, fal.run(nsfw=[True]))
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 400, body
    err = body["error"]
    assert (err["type"], err["code"], err["param"]) == ("image_generation_user_error", "moderation_blocked", None)
    assert err["message"] == "fal's safety checker flagged 1 of 1 image (has_nsfw_concepts)."
    assert "data" not in body
    assert len(fake.sent_to(RUN1)) == 1 and fal.files() == []  # final, and the flagged image is not fetched


async def test_one_flagged_image_of_n_fails_unless_the_operator_takes_partial_sets(
        gateway: Callable[..., Any], fake: FakeUpstream, fal: f.FakeFal) -> None:
    fake.always("POST", RUN1, fal.run(nsfw=[False, True, False]))
    status, body = await generate(await gateway(), n=3)
    assert (status, body["error"]["code"]) == (400, "moderation_blocked")
    assert body["error"]["message"].startswith("2 of 3 images were made")
    status, body = await generate(await gateway(settings="      return_partial: true\n"), n=3)
    assert status == 200 and len(body["data"]) == 2
    assert body["extra"]["routing"]["attempts"][0]["notes"][-1] == (
        "only 2 of 3 images were made (returned as the operator allows): fal's safety checker flagged 1 of 3 "
        "images (has_nsfw_concepts).")
    flagged = fake.sent_to(RUN1)[-1]
    assert flagged and len(fal.files()) == 4  # 2 fetched per request; the flagged image never


async def test_a_content_policy_violation_is_moderation_blocked(gateway: Callable[..., Any],
                                                                fake: FakeUpstream) -> None:
    fake.script("POST", RUN1, f.content_policy())
    status, body = await generate(await gateway())
    assert (status, body["error"]["code"]) == (400, "moderation_blocked")
    assert body["error"]["message"] == ("fal's content checker flagged the request: The content was flagged by a "
                                        "content checker.")


# -- the host rule -----------------------------------------------------------------------------

async def test_a_forged_result_url_is_refused_without_any_request_to_it(
        gateway: Callable[..., Any], fake: FakeUpstream, fal: f.FakeFal, attacker: FakeUpstream) -> None:
    forged = attacker.url("/internal/a.jpeg").replace("127.0.0.1", "localhost") + "?token=SECRET"
    # Two images, the second forged: neither is fetched (every URL is checked before any fetch).
    fake.script("POST", RUN1, fal.run(url=lambda path: fake.url(path) if path.startswith("/files/rabbit/0001")
                                      else forged))
    status, body = await generate(await gateway(), n=2)
    assert status == 502, body
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["http_status"], attempt["error_code"]) == (502, "upstream_url_refused")
    assert attempt["error_message"] == ("fal handed back a result URL on http://localhost, outside the provider's "
                                        "domains; it was not requested.")
    assert attacker.received == [] and fal.files() == [] and "SECRET" not in str(body)
    # With the attacker's host allowed, the same answer reaches it: only the rule stood between.
    fake.script("POST", RUN1, fal.run(url=lambda path: forged))
    status, body = await generate(await gateway(domains='["127.0.0.1", "localhost"]'))
    assert status == 200 and len(attacker.received) == 1


@pytest.mark.parametrize("url", ["https://v3.fal.media.attacker.example/x.png", "http://v3.fal.media/files/x.png",
                                 "https://169.254.169.254/latest/meta-data", "https://storage.googleapis.com/x.png"])
async def test_result_hosts_outside_fal_media_are_refused(gateway: Callable[..., Any], fake: FakeUpstream,
                                                         fal: f.FakeFal, url: str) -> None:
    fake.script("POST", RUN1, fal.run(url=lambda path: url))
    status, body = await generate(await gateway())
    assert (status, body["extra"]["routing"]["attempts"][0]["error_code"]) == (502, "upstream_url_refused")


def test_fal_media_hosts_pass_the_rule() -> None:
    from gateway.provider import allowed_url
    from plugins.fal import FAL_MEDIA_DOMAINS

    for url in ("https://v3.fal.media/files/rabbit/YYbm6L.jpeg", "https://v3b.fal.media/files/b/x.png"):
        assert allowed_url(url, FAL_MEDIA_DOMAINS, upstream="fal") == url


# -- failures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", [f.unauthorized(), f.error(403, {"detail": "Key lacks the scope"})])
async def test_a_refused_key_is_401_and_the_next_target_serves(gateway: Callable[..., Any], fake: FakeUpstream,
                                                               fal: f.FakeFal, answer: Any) -> None:
    fake.script("POST", RUN1, answer, fal.run())
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert (failed["http_status"], failed["error_code"]) == (401, "invalid_api_key")
    assert failed["error_message"] == CREDENTIALS_REJECTED.format(target=f"fal-0:{DEV1}", status=401)
    assert served["status"] == "succeeded"


async def test_rate_limit_with_retry_after(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", RUN1, f.error(429, {"detail": "Too many requests"}, headers={"Retry-After": "3"}))
    gw = await gateway()
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"model": DEV1, "prompt": PROMPT})
    body = await resp.json()
    assert (resp.status, body["error"]["code"], resp.headers["retry-after"]) == (429, "rate_limit_exceeded", "3")


async def test_a_validation_error_is_the_clients_400(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", RUN1, f.validation_error())
    status, body = await generate(await gateway())
    assert (status, body["error"]["code"], body["error"]["message"]) == (
        400, "invalid_value", "Input should be less than or equal to 14142")


async def test_a_retryable_server_error_is_retried(gateway: Callable[..., Any], fake: FakeUpstream,
                                                   fal: f.FakeFal) -> None:
    fake.script("POST", RUN1, f.error(503, {"detail": "Runner disconnected", "error_type": "runner_disconnected"},
                                      headers={"X-Fal-Retryable": "true"}), fal.run())
    status, body = await generate(await gateway(router="max_attempts_per_target: 2, backoff_base_s: 0.01"))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert failed["error_message"] == "Runner disconnected (runner_disconnected)" and served["status"] == "succeeded"


async def test_a_call_that_hangs_ends_within_the_attempt(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", RUN1, hang())
    status, body = await generate(await gateway(router="max_attempts_per_target: 1, attempt_timeout_s: 0.5"))
    assert status == 504 and body["extra"]["routing"]["attempts"][0]["status"] == "timeout"


@pytest.mark.parametrize("case", ["not json", "images not a list", "no image", "file missing", "file not an image"])
async def test_malformed_answers_are_502_and_the_next_target_serves(gateway: Callable[..., Any], fake: FakeUpstream,
                                                                    fal: f.FakeFal, case: str) -> None:
    bad = {"not json": bytes_reply(b"<html>oops</html>", content_type="text/html"),
           "images not a list": json_reply({"images": "many"}),
           "no image": json_reply({"images": [], "has_nsfw_concepts": []}),
           "file missing": fal.run(url=lambda path: fake.url("/files/gone.jpeg")),
           "file not an image": fal.run(url=lambda path: fake.url("/files/odd.jpeg"))}[case]
    fake.script("GET", "/files/gone.jpeg", bytes_reply(b"", status=404))
    fake.script("GET", "/files/odd.jpeg", bytes_reply(b"<html/>", content_type="image/jpeg"))
    fake.script("POST", RUN1, bad, fal.run())
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert failed["http_status"] == 502 and failed["error_code"] in (
        "invalid_upstream_response", "upstream_result_unavailable"), failed
    assert served["status"] == "succeeded"


@pytest.mark.parametrize(("settings", "fragment"), [
    ({}, "Object missing required field `api_key`"),
    ({"api_key": ""}, "api_key is required"),
    ({"api_key": "k", "models": ["fal/flux-9"]}, "unknown models ['fal/flux-9']"),
    ({"api_key": "k", "base_url": "fal.run"}, "base_url"),
])
def test_bad_settings_are_config_problems(settings: dict[str, Any], fragment: str) -> None:
    config = parse_config(msgspec.json.encode({"providers": [
        {"id": "f", "plugin": "fal", "settings": settings}]}).decode(), env={})
    with pytest.raises(ConfigError) as caught:
        Registry.build(config, UpstreamHTTP(HTTPClient()))
    [problem] = caught.value.problems
    assert problem.path.startswith("$.providers[0]") and fragment in problem.message, problem


# -- the plugin authors' contract suite, run on this plugin ------------------------------------

class TestFalContract(ProviderContract):
    plugin = "fal"

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {"api_key": f.API_KEY, "base_url": upstream.url(""), "models": [DEV1], "extra_domains": ["127.0.0.1"]}

    def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
        answers = {"success": f.FakeFal(upstream).run(), "auth": f.unauthorized(),
                   "rate_limit": f.error(429, {"detail": "Too many requests"}),
                   "server_error": f.error(500, {"detail": "Internal Server Error"}),
                   "refusal": f.content_policy(),
                   "malformed": json_reply({"images": [{"width": 1}]}), "hang": hang()}
        upstream.script("POST", RUN1, answers[kind])
        return True


def test_the_docs_document_every_setting_and_model() -> None:
    from pathlib import Path

    from plugins.fal import FalSettings, catalog

    section = (Path(__file__).resolve().parent.parent / "docs/providers/fal.md").read_text()
    for name in FalSettings.__struct_fields__:
        assert f"{name}:" in section, name
    for model in catalog():
        assert f"`{model}`" in section, model
