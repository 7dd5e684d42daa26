"""The ``bfl`` provider through the real app, against a fake BFL on loopback that speaks the
documented API (tests/fake_bfl.py says where each shape comes from).

Submit ``POST /v1/<model>`` with ``x-key`` and JSON (https://api.bfl.ai/openapi.json), poll the
returned ``polling_url`` as it is ("you must use the polling_url returned in the initial request
response", https://docs.bfl.ai/api_integration/integration_guidelines), fetch the signed
``result.sample`` ("delivery URLs that expire after 10 minutes",
https://help.bfl.ai/articles/9532536301-which-api-endpoint-should-i-use). Statuses and errors:
https://docs.bfl.ai/api_integration/errors . Sizes: FLUX1.1 [pro] width/height multiples of 32 in
256-1440, Ultra ``aspect_ratio`` between 21:9 and 9:21 (OpenAPI); FLUX.2 multiples of 16 up to
4 MP (BFL's agent skill, github black-forest-labs/skills references/endpoints.md).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any, AsyncIterator, Callable

import msgspec
import openai
import pytest
from PIL import Image

from gateway.app import create_app
from gateway.config import ConfigError
from gateway.config_load import parse_config
from gateway.http_client import HTTPClient
from gateway.provider import Call, ImageRequest, ProviderError
from gateway.registry import Registry
from gateway.router import CREDENTIALS_REJECTED
from gateway.testing import FakeUpstream, ProviderContract, bytes_reply, hang, json_reply
from gateway.upstream_http import UpstreamHTTP
from tests import fake_bfl as b
from tests.conftest import AUTH, GATEWAY_KEY, vendor_config_yaml

PROMPT = "A lighthouse on a cliff at dusk"
PRO2 = "bfl/flux-2-pro"
PRO11 = "bfl/flux-pro-1.1"
ULTRA = "bfl/flux-pro-1.1-ultra"
# The fake BFL is reached as 127.0.0.1, which the operator adds to the plugin's domains (a test
# double); the attacker's server is reached as "localhost" (also 127.0.0.1 here, on another port),
# which no setting allows: the host rule alone stands between the gateway and it.
FAST_POLLS = "      poll_interval_s: 0.02\n      max_poll_interval_s: 0.1\n"


def config_yaml(fake: FakeUpstream, models: str = "", instances: int = 1, settings: str = "",
                router: str = "max_attempts_per_target: 1", domains: str = '["127.0.0.1"]') -> str:
    return vendor_config_yaml("bfl", "eu", lambda i: f"""      api_key: "{b.API_KEY}"
      base_url: "{fake.url('')}"
      extra_domains: {domains}
{FAST_POLLS}{settings}""", instances, models, router)


TWO_TARGETS = f"""
models:
  {PRO2}: {{targets: [bfl-0, bfl-1]}}
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def attacker() -> AsyncIterator[FakeUpstream]:
    """The server a forged URL points at: it records whatever reaches it."""
    async with FakeUpstream() as upstream:
        upstream.always("GET", "/v1/get_result", json_reply({"id": "x", "status": "Ready",
                                                               "result": {"sample": "https://x.bfl.ai/s.png"}}))
        upstream.always("GET", "/internal/sample.png", bytes_reply(b.image(8, 8), content_type="image/jpeg"))
        yield upstream


def as_localhost(upstream: FakeUpstream, path: str) -> str:
    return upstream.url(path).replace("127.0.0.1", "localhost")


@pytest.fixture
def bfl(fake: FakeUpstream) -> b.FakeBFL:
    return b.FakeBFL(fake)


@pytest.fixture
def gateway(aiohttp_client: Callable[..., Any], fake: FakeUpstream) -> Callable[..., Any]:
    async def make(**kwargs: Any) -> Any:
        return await aiohttp_client(create_app(parse_config(config_yaml(fake, **kwargs), env={})))
    return make


async def generate(gw: Any, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"model": PRO2, "prompt": PROMPT, **fields})
    return resp.status, await resp.json()


# -- success -----------------------------------------------------------------------------------

async def test_submit_poll_fetch_as_openai_b64_json_priced_per_megapixel(gateway: Callable[..., Any],
                                                                         fake: FakeUpstream, bfl: b.FakeBFL) -> None:
    fake.script("POST", "/v1/flux-2-pro", bfl.submit("Pending", "Pending", "Ready"))
    gw = await gateway()
    resp = await gw.post("/v1/images/generations", headers=AUTH,
                         json={"model": PRO2, "prompt": PROMPT, "size": "1024x1024", "seed": 42})
    body = await resp.json()
    assert resp.status == 200, body
    submit, *rest = fake.received
    assert (submit.method, submit.path) == ("POST", "/v1/flux-2-pro")
    assert submit.headers["x-key"] == b.API_KEY and submit.headers["content-type"] == "application/json"
    assert submit.json() == {"prompt": PROMPT, "width": 1024, "height": 1024, "seed": 42}
    polls, [fetch] = bfl.polls(), [r for r in rest if r.path.startswith("/results/")]
    assert len(polls) == 3 and all(p.query == {"id": "00000001-5c1e-4b7a-9d2f-3e8a6b0c4d1f"} for p in polls)
    assert all(p.headers["x-key"] == b.API_KEY for p in polls)
    # The signed URL is fetched as BFL handed it back, and the key is not sent with it.
    assert fetch.query == {"se": "2026-12-02T10:10Z", "sig": "SIGNED"} and "x-key" not in fetch.headers
    [item] = body["data"]
    assert base64.b64decode(item["b64_json"]) == b.image(1024, 1024)
    assert (body["output_format"], body["size"]) == ("jpeg", "1024x1024")
    assert "usage" not in body  # BFL reports no tokens: none are invented
    assert resp.headers["x-upstream-request-id"] == "00000001-5c1e-4b7a-9d2f-3e8a6b0c4d1f"
    # FLUX.2 [pro]: 3 credits the first MP, 1.5 each after: 0.015 + 1.048576 MP x 0.015 USD.
    assert body["extra"]["usage"] == {"cost_usd": 0.03072864, "price_source": "plugin",
                                      "cost_usd_details": {"images": 0.015, "megapixels": 0.01572864}}
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["provider"], attempt["region"], attempt["status"]) == ("bfl", "eu", "succeeded")
    assert attempt["notes"] == ["BFL reported a cost of 3.07 credits (USD 0.0307) for 1 task"]


async def test_the_official_sdk_as_client_with_n_as_concurrent_tasks(gateway: Callable[..., Any],
                                                                     fake: FakeUpstream, bfl: b.FakeBFL) -> None:
    fake.always("POST", "/v1/flux-pro-1.1", bfl.submit("Pending", "Ready", cost=4))
    gw = await gateway()
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as sdk:
        result = await sdk.images.generate(model=PRO11, prompt=PROMPT, n=3, size="1536x1024")
    assert len(result.data) == 3 and len(bfl.tasks) == 3
    submits = fake.sent_to("/v1/flux-pro-1.1")
    # FLUX1.1 [pro] takes 256-1440 in multiples of 32: 1536x1024 scaled to 1440x960.
    assert all(s.json() == {"prompt": PROMPT, "width": 1440, "height": 960} for s in submits)
    for item in result.data:
        with Image.open(io.BytesIO(base64.b64decode(item.b64_json or ""))) as picture:
            assert picture.size == (1440, 960)
    extra = (result.model_extra or {})["extra"]
    assert extra["routing"]["attempts"][0]["notes"] == [
        "size 1536x1024 sent as 1440x960 (edges multiples of 32 from 256 to 1440)",
        "n=3 asked in 3 calls of at most 1 image (at most 4 at once); each call is billed by the provider",
        "BFL reported a cost of 12 credits (USD 0.12) for 3 tasks"]
    assert extra["usage"]["cost_usd"] == pytest.approx(3 * 0.04)  # FLUX1.1 [pro] bills per image


@pytest.mark.parametrize(("size", "sent", "note"), [
    ("1536x1024", {"aspect_ratio": "3:2"}, "size 1536x1024 sent as aspect ratio 3:2 (the provider chooses"),
    ("3072x1024", {"aspect_ratio": "21:9"}, "size 3072x1024 sent as aspect ratio 21:9 (the nearest it offers"),
    ("auto", {}, None),
])
async def test_ultra_takes_the_nearest_aspect_ratio(gateway: Callable[..., Any], fake: FakeUpstream, bfl: b.FakeBFL,
                                                    size: str, sent: dict[str, str], note: str | None) -> None:
    fake.script("POST", "/v1/flux-pro-1.1-ultra", bfl.submit())
    status, body = await generate(await gateway(), model=ULTRA, size=size)
    assert status == 200, body
    assert fake.received[0].json() == {"prompt": PROMPT, **sent}
    notes = body["extra"]["routing"]["attempts"][0]["notes"]
    assert (notes[0].startswith(note) if note else len(notes) == 1)
    assert body["extra"]["usage"]["cost_usd"] == 0.06


async def test_output_format_is_bfls_own_and_compression_is_applied_by_the_gateway(
        gateway: Callable[..., Any], fake: FakeUpstream, bfl: b.FakeBFL) -> None:
    fake.always("POST", "/v1/flux-2-pro", bfl.submit())
    gw = await gateway()
    status, body = await generate(gw, output_format="webp")
    assert status == 200, body
    assert fake.received[0].json()["output_format"] == "webp" and body["output_format"] == "webp"
    assert not any("converted" in n for n in body["extra"]["routing"]["attempts"][0]["notes"])
    status, body = await generate(gw, output_format="jpeg", output_compression=50)
    assert body["extra"]["routing"]["attempts"][0]["notes"][-1] == \
        "1 image converted from jpeg to jpeg at quality 50 by the gateway"


async def test_what_bfl_cannot_honour_is_refused_before_any_call(gateway: Callable[..., Any],
                                                                 fake: FakeUpstream) -> None:
    gw = await gateway()
    for field, value in (("quality", "high"), ("background", "transparent"), ("moderation", "low"),
                         ("safety_tolerance", 6)):
        status, body = await generate(gw, **{field: value})
        assert (status, body["error"]["param"]) == (400, field), body
    assert fake.received == []


# -- the host rule -----------------------------------------------------------------------------

async def test_a_forged_polling_url_is_refused_without_any_request_to_it(
        gateway: Callable[..., Any], fake: FakeUpstream, bfl: b.FakeBFL, attacker: FakeUpstream) -> None:
    forged = bfl.submit(polling_url=lambda task: as_localhost(attacker, "/v1/get_result") + f"?id={task}")
    fake.script("POST", "/v1/flux-2-pro", forged)
    status, body = await generate(await gateway())
    assert status == 502, body
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["http_status"], attempt["error_code"]) == (502, "upstream_url_refused")
    assert attempt["error_message"] == ("BFL handed back a polling URL on http://localhost, outside the provider's "
                                        "domains; it was not requested.")
    assert attacker.received == [] and bfl.polls() == []
    # The same forged answer, with the attacker's host allowed by the operator, does reach it:
    # the attacker's server was reachable, so only the rule kept the key from it above.
    fake.script("POST", "/v1/flux-2-pro", forged)
    status, body = await generate(await gateway(domains='["127.0.0.1", "localhost"]'))
    assert [r.headers["x-key"] for r in attacker.sent_to("/v1/get_result")] == [b.API_KEY]


async def test_a_forged_result_url_is_refused_without_any_request_to_it(
        gateway: Callable[..., Any], fake: FakeUpstream, bfl: b.FakeBFL, attacker: FakeUpstream) -> None:
    fake.script("POST", "/v1/flux-2-pro", bfl.submit(sample_url=lambda t: as_localhost(attacker, "/internal/sample.png")
                                                     + "?sig=SECRET-SIG"))
    status, body = await generate(await gateway())
    assert status == 502
    [attempt] = body["extra"]["routing"]["attempts"]
    assert attempt["error_code"] == "upstream_url_refused" and "result URL on http://localhost" in \
        attempt["error_message"]
    assert "SECRET-SIG" not in str(body)  # a signed URL's query is a credential: never shown
    assert attacker.received == []


@pytest.mark.parametrize("url", ["https://bfl.ai.attacker.example/r.png", "https://169.254.169.254/latest/meta-data",
                                 "https://bfldeliveryprod.blob.core.windows.net/results/a/sample.jpeg?sig=x",
                                 "https://evil.blob.core.windows.net/x.png", "http://delivery-eu1.bfl.ai/r.png"])
async def test_result_hosts_outside_bfl_ai_are_refused(gateway: Callable[..., Any], fake: FakeUpstream,
                                                      bfl: b.FakeBFL, url: str) -> None:
    fake.script("POST", "/v1/flux-2-pro", bfl.submit(sample_url=lambda t: url))
    status, body = await generate(await gateway())
    [attempt] = body["extra"]["routing"]["attempts"]
    # Refused, not tried: a connection error would say the gateway had tried to reach it.
    assert (status, attempt["error_code"]) == (502, "upstream_url_refused")
    assert "result URL on " in attempt["error_message"] and len(bfl.polls()) == 1


def test_the_azure_delivery_host_only_when_the_operator_allows_it() -> None:
    from plugins.bfl import BFLProvider, BFLSettings

    http = UpstreamHTTP(HTTPClient())
    plain = BFLProvider(BFLSettings(api_key="k"), http)
    allowed = BFLProvider(BFLSettings(api_key="k", allow_azure_delivery=True), http)
    assert plain.result_domains == ("bfl.ai",)
    assert allowed.result_domains == ("bfl.ai", "bfldeliveryprod.blob.core.windows.net")


# -- refusals and failures ---------------------------------------------------------------------

@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
async def test_moderation_is_400_moderation_blocked_and_final(gateway: Callable[..., Any], fake: FakeUpstream,
                                                              bfl: b.FakeBFL, status: str) -> None:
    fake.always("POST", "/v1/flux-2-pro", bfl.submit("Pending", status))
    status_code, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status_code == 400, body
    err = body["error"]
    assert (err["type"], err["code"], err["param"]) == ("image_generation_user_error", "moderation_blocked", None)
    assert f"({status}, task 00000001-5c1e-4b7a-9d2f-3e8a6b0c4d1f)" in err["message"] and "data" not in body
    assert len(fake.sent_to("/v1/flux-2-pro")) == 1  # a safety decision is final: not routed around
    assert not any(r.path.startswith("/results/") for r in fake.received)


async def test_one_moderated_task_of_n_fails_the_attempt_saying_how_many_were_made(
        gateway: Callable[..., Any], fake: FakeUpstream, bfl: b.FakeBFL) -> None:
    fake.script("POST", "/v1/flux-2-pro", bfl.submit(), bfl.submit(), bfl.submit("Content Moderated"))
    status, body = await generate(await gateway(settings="      max_concurrent_calls: 1\n"), n=3)
    assert (status, body["error"]["code"]) == (400, "moderation_blocked")
    assert body["error"]["message"].startswith("2 of 3 images were made before a call failed (billed by the "
                                               "provider, not returned): BFL's moderation flagged the generated image")


@pytest.mark.parametrize("status", ["Error", "Task not found"])
async def test_a_failed_task_is_502_and_the_next_target_serves(gateway: Callable[..., Any], fake: FakeUpstream,
                                                               bfl: b.FakeBFL, status: str) -> None:
    fake.script("POST", "/v1/flux-2-pro", bfl.submit(status), bfl.submit())
    status_code, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status_code == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert (failed["http_status"], failed["error_code"]) == (502, "upstream_task_failed")
    assert f"ended with status '{status}'" in failed["error_message"]
    assert served["status"] == "succeeded" and served["target"] == f"bfl-1:{PRO2}"


async def test_polling_that_never_finishes_ends_within_the_attempt_as_a_timeout(
        gateway: Callable[..., Any], fake: FakeUpstream, bfl: b.FakeBFL) -> None:
    fake.script("POST", "/v1/flux-2-pro", bfl.submit("Pending"))
    gw = await gateway(router="max_attempts_per_target: 1, attempt_timeout_s: 1")
    started = time.monotonic()
    status, body = await generate(gw)
    took = time.monotonic() - started
    assert status == 504, body
    assert 1.0 <= took < 1.8
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["status"], attempt["error_code"]) == ("timeout", "timeout")
    polls = len(bfl.polls())
    assert attempt["error_message"].startswith("BFL task 00000001-5c1e-4b7a-9d2f-3e8a6b0c4d1f was still 'Pending' "
                                               "after ")
    assert f"and {polls} polls: the attempt's 1 s ran out (BFL may still finish, and bill, the task)." in \
        attempt["error_message"]
    # Waits grow from 0.02 s by 1.5x up to 0.1 s: about a dozen polls in 1 s, not hundreds.
    assert 6 <= polls <= 16
    await asyncio.sleep(0.3)
    assert len(bfl.polls()) == polls  # nothing polls on after the attempt


async def test_a_submit_that_hangs_ends_within_the_attempt(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", "/v1/flux-2-pro", hang())
    status, body = await generate(await gateway(router="max_attempts_per_target: 1, attempt_timeout_s: 0.5"))
    assert status == 504
    assert body["extra"]["routing"]["attempts"][0]["status"] == "timeout"


@pytest.mark.parametrize(("answer", "code"), [
    (b.error(403, {"detail": "Not authenticated"}), "permission_denied"),
    (b.error(401, {"error": "invalid_api_key", "message": "Invalid API key"}), "invalid_api_key"),
    (b.error(402, {"detail": "Insufficient credits"}), "insufficient_credits"),
])
async def test_the_operators_account_refused_moves_to_the_next_target(gateway: Callable[..., Any],
                                                                      fake: FakeUpstream, bfl: b.FakeBFL,
                                                                      answer: Any, code: str) -> None:
    fake.script("POST", "/v1/flux-2-pro", answer, bfl.submit())
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert failed["error_code"] == code and failed["http_status"] in (401, 403)
    assert failed["error_message"] == CREDENTIALS_REJECTED.format(target=f"bfl-0:{PRO2}",
                                                                  status=failed["http_status"])
    assert served["status"] == "succeeded"


@pytest.mark.parametrize(("answer", "retry_after"), [(b.rate_limited("2"), "2"), (b.rate_limited(None), "5")])
async def test_rate_limit_with_retry_after(gateway: Callable[..., Any], fake: FakeUpstream, answer: Any,
                                           retry_after: str) -> None:
    fake.script("POST", "/v1/flux-2-pro", answer)
    gw = await gateway()
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"model": PRO2, "prompt": PROMPT})
    body = await resp.json()
    assert (resp.status, body["error"]["code"], resp.headers["retry-after"]) == (429, "rate_limit_exceeded",
                                                                                  retry_after)


async def test_a_rate_limited_poll_is_a_rate_limit_too(gateway: Callable[..., Any], fake: FakeUpstream,
                                                       bfl: b.FakeBFL) -> None:
    fake.script("POST", "/v1/flux-2-pro", bfl.submit(polling_url=lambda t: fake.url("/v1/poll-429") + f"?id={t}"))
    fake.script("GET", "/v1/poll-429", b.rate_limited("1"))
    status, body = await generate(await gateway())
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")


async def test_a_validation_error_is_the_clients_400(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", "/v1/flux-2-pro", b.validation_error())
    status, body = await generate(await gateway())
    assert (status, body["error"]["code"], body["error"]["message"]) == (400, "invalid_value",
                                                                        "Input should be a multiple of 32")


@pytest.mark.parametrize("case", ["not json", "no polling_url", "ready without sample", "poll not json",
                                  "expired result", "result not an image"])
async def test_malformed_answers_are_502_and_the_next_target_serves(gateway: Callable[..., Any], fake: FakeUpstream,
                                                                    bfl: b.FakeBFL, case: str) -> None:
    submit = "/v1/flux-2-pro"
    if case == "not json":
        fake.script("POST", submit, bytes_reply(b"<html>502 Bad Gateway</html>", content_type="text/html"))
    elif case == "no polling_url":
        fake.script("POST", submit, json_reply({"id": "task-x"}))
    else:
        bad = {"ready without sample": json_reply({"id": "t", "status": "Ready", "result": {"seed": 1}}),
               "poll not json": bytes_reply(b"{", content_type="application/json"),
               "expired result": bytes_reply(b"<Error>AuthenticationFailed</Error>", status=403),
               "result not an image": bytes_reply(b"<html>hello</html>", content_type="image/jpeg")}[case]
        where = "/v1/odd-poll" if "poll" in case or "sample" in case else "/results/odd.jpeg"
        if where == "/v1/odd-poll":
            fake.script("POST", submit, bfl.submit(polling_url=lambda t: fake.url(where) + f"?id={t}"))
        else:
            fake.script("POST", submit, bfl.submit(sample_url=lambda t: fake.url(where)))
        fake.script("GET", where, bad)
    fake.script("POST", submit, bfl.submit())
    status, body = await generate(await gateway(instances=2, models=TWO_TARGETS))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert failed["http_status"] == 502 and failed["error_code"] in (
        "invalid_upstream_response", "upstream_result_unavailable"), failed
    assert served["status"] == "succeeded"


@pytest.mark.parametrize(("settings", "fragment"), [
    ({}, "Object missing required field `api_key`"),
    ({"api_key": ""}, "api_key is required"),
    ({"api_key": "k", "models": ["bfl/flux-9"]}, "unknown models ['bfl/flux-9']"),
    ({"api_key": "k", "base_url": "api.bfl.ai"}, "base_url"),
    ({"api_key": "k", "poll_interval_s": 2, "max_poll_interval_s": 1}, "max_poll_interval_s must be at least"),
])
def test_bad_settings_are_config_problems(settings: dict[str, Any], fragment: str) -> None:
    config = parse_config(msgspec.json.encode({"providers": [
        {"id": "b", "plugin": "bfl", "settings": settings}]}).decode(), env={})
    with pytest.raises(ConfigError) as caught:
        Registry.build(config, UpstreamHTTP(HTTPClient()))
    [problem] = caught.value.problems
    assert problem.path.startswith("$.providers[0]") and fragment in problem.message, problem


async def test_the_key_never_reaches_an_error_message(fake: FakeUpstream) -> None:
    from plugins.bfl import BFLProvider, BFLSettings

    fake.script("POST", "/v1/flux-2-pro", b.error(500, {"detail": f"bad key {b.API_KEY}"}))
    client = HTTPClient()
    provider = BFLProvider(BFLSettings(api_key=b.API_KEY, base_url=fake.url("")), UpstreamHTTP(client))
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.generate(ImageRequest(model=PRO2, prompt=PROMPT), Call(PRO2, 5.0))
    finally:
        await client.close()
    assert caught.value.status == 500 and b.API_KEY not in caught.value.message


# -- the plugin authors' contract suite, run on this plugin ------------------------------------

class TestBFLContract(ProviderContract):
    plugin = "bfl"

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {"api_key": b.API_KEY, "base_url": upstream.url(""), "models": [PRO2], "extra_domains": ["127.0.0.1"],
                "poll_interval_s": 0.02, "max_poll_interval_s": 0.05}

    def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
        bfl = b.FakeBFL(upstream)
        answers = {"success": [bfl.submit("Pending", "Ready") for _ in range(n)],
                   "auth": [b.error(403, {"detail": "Not authenticated"})], "rate_limit": [b.rate_limited()],
                   "server_error": [b.error(503, {"detail": "Service Unavailable"})],
                   "refusal": [bfl.submit("Request Moderated")],
                   "malformed": [json_reply({"id": "task-x", "status": "Pending"})],
                   "hang": [bfl.submit("Pending")]}  # a task that never finishes
        upstream.script("POST", "/v1/flux-2-pro", *answers[kind])
        return True


def test_the_docs_document_every_setting_and_model() -> None:
    from pathlib import Path

    from plugins.bfl import BFLSettings, catalog

    section = (Path(__file__).resolve().parent.parent / "docs/providers/bfl.md").read_text()
    for name in BFLSettings.__struct_fields__:
        assert f"{name}:" in section, name
    for model in catalog():
        assert f"`{model}`" in section, model
