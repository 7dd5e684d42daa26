"""The ``google`` provider through the real app, against a fake Google on loopback that speaks
the documented APIs (tests/fake_google.py says where each shape comes from).

Gemini API: POST /v1beta/models/{model}:generateContent with ``x-goog-api-key``
(https://ai.google.dev/api), ``generationConfig.responseModalities`` and
``generationConfig.imageConfig.{aspectRatio, imageSize}`` (python-genai ImageConfig,
https://github.com/googleapis/python-genai/blob/main/google/genai/types.py ; nested under
imageConfig, LiteLLM #18656 https://github.com/BerriAI/litellm/issues/18656). Imagen: POST
:predict with ``sampleCount`` always sent, since it defaults to 4
(https://github.com/google-gemini/cookbook/blob/main/quickstarts/Get_started_imagen_rest.ipynb ,
https://github.com/BerriAI/litellm/issues/3482). Vertex AI: the regional :predict /
:generateContent path (https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/imagen-api)
with an OAuth bearer from the service-account JWT grant
(https://developers.google.com/identity/protocols/oauth2/service-account).
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any, AsyncIterator, Callable

import msgspec
import openai
import pytest
from PIL import Image

from gateway.app import create_app
from gateway.config import ConfigError, key_hash
from gateway.config_load import parse_config
from gateway.http_client import HTTPClient
from gateway.registry import Registry
from gateway.router import CREDENTIALS_REJECTED
from gateway.testing import FakeUpstream, ProviderContract, bytes_reply, hang, json_reply
from gateway.upstream_http import UpstreamHTTP
from tests.conftest import AUTH, GATEWAY_KEY, vendor_config_yaml
from tests import fake_google as g

API_KEY = "AIzaSyTEST-gemini-key-5f4e3d2c1b"
PRO = "gemini-3-pro-image-preview"
FLASH = "gemini-2.5-flash-image"
IMAGEN = "imagen-4.0-generate-001"
PROMPT = "A lighthouse on a cliff at dusk"


def config_yaml(fake: FakeUpstream, models: str = "", instances: int = 1, settings: str = "",
                router: str = "max_attempts_per_target: 1") -> str:
    return vendor_config_yaml("google", "global", lambda i: f"""      api_key: "{API_KEY}"
      base_url: "{fake.url('/v1beta')}"
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
    resp = await gw.post("/v1/images/generations", headers=AUTH,
                         json={"model": f"google/{PRO}", "prompt": PROMPT, **fields})
    return resp.status, await resp.json()


# -- success -----------------------------------------------------------------------------------

async def test_gemini_success_as_openai_b64_json_with_usage_and_cost(gateway: Callable[..., Any],
                                                                     fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), g.gemini_ok())
    status, body = await generate(await gateway(), size="1536x1024")
    assert status == 200, body
    [sent] = fake.received
    assert sent.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert sent.headers["x-goog-api-key"] == API_KEY and "authorization" not in sent.headers
    assert sent.headers["content-type"] == "application/json"
    assert sent.json() == {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
                           "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                                                "imageConfig": {"aspectRatio": "3:2", "imageSize": "1K"}}}
    [item] = body["data"]
    assert base64.b64decode(item["b64_json"]) == g.PNG
    assert (body["output_format"], body["size"]) == ("png", "4x3")
    # usageMetadata -> OpenAI usage: 10 text tokens in; 10 text + 1120 image tokens out.
    assert body["usage"] == {"input_tokens": 10, "output_tokens": 1130, "total_tokens": 1140,
                             "input_tokens_details": {"text_tokens": 10},
                             "output_tokens_details": {"image_tokens": 1120, "text_tokens": 10}}
    # The plugin's declared (unverified) rates: text in 2, text out 12, image out 120 USD per 1M:
    # 10*2 + 10*12 + 1120*120 = 134540 -> 0.13454 USD.
    assert body["extra"]["usage"] == {"cost_usd": 0.13454, "price_source": "plugin", "cost_usd_details": {
        "text_input": 0.00002, "text_output": 0.00012, "image_output": 0.1344}}
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["provider"], attempt["status"], attempt["model"]) == ("google", "succeeded", f"google/{PRO}")
    assert attempt["notes"] == ["size 1536x1024 sent as aspect ratio 3:2, size class 1K "
                                "(the provider chooses the exact pixels)"]


async def test_the_official_sdk_as_client_with_n_split_into_calls(gateway: Callable[..., Any],
                                                                  fake: FakeUpstream) -> None:
    fake.always("POST", g.gemini_path(PRO), g.gemini_ok())
    gw = await gateway()
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as sdk:
        result = await sdk.images.generate(model=f"google/{PRO}", prompt=PROMPT, n=3, size="1024x1536")
    assert len(result.data) == 3
    assert all(base64.b64decode(d.b64_json or "") == g.PNG for d in result.data)
    assert result.usage is not None and result.usage.total_tokens == 3 * 1140  # each call's usage kept
    assert len(fake.sent_to(g.gemini_path(PRO))) == 3
    assert all(r.json()["generationConfig"]["imageConfig"] == {"aspectRatio": "2:3", "imageSize": "1K"}
               for r in fake.received)
    attempt = (result.model_extra or {})["extra"]["routing"]["attempts"][0]
    assert attempt["notes"][:2] == [
        "size 1024x1536 sent as aspect ratio 2:3, size class 1K (the provider chooses the exact pixels)",
        "n=3 asked in 3 calls of at most 1 image (at most 4 at once); each call is billed by the provider"]
    assert (result.model_extra or {})["extra"]["usage"]["cost_usd"] == pytest.approx(3 * 0.13454)


@pytest.mark.parametrize(("size", "ratio", "size_class", "nearest"), [
    ("3840x2160", "16:9", "2K", False),
    ("4096x4096", "1:1", "4K", False),
    ("3072x1024", "21:9", "2K", True),
])
async def test_size_mapped_with_the_note_in_the_attempt(gateway: Callable[..., Any], fake: FakeUpstream, size: str,
                                                        ratio: str, size_class: str, nearest: bool) -> None:
    fake.script("POST", g.gemini_path(PRO), g.gemini_ok())
    status, body = await generate(await gateway(), size=size)
    assert status == 200, body
    assert fake.received[0].json()["generationConfig"]["imageConfig"] == {"aspectRatio": ratio, "imageSize": size_class}
    [note] = body["extra"]["routing"]["attempts"][0]["notes"]
    assert note.startswith(f"size {size} sent as aspect ratio {ratio}, size class {size_class}")
    assert ("nearest it offers" in note) is nearest


async def test_a_model_with_one_size_gets_no_image_size_and_auto_gets_nothing(gateway: Callable[..., Any],
                                                                               fake: FakeUpstream) -> None:
    fake.always("POST", g.gemini_path(FLASH), g.gemini_ok())
    gw = await gateway()
    status, body = await generate(gw, model=f"google/{FLASH}", size="1024x1024")
    assert status == 200, body
    assert fake.received[0].json()["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1"}
    status, body = await generate(gw, model=f"google/{FLASH}")
    assert "imageConfig" not in fake.received[1].json()["generationConfig"]
    assert "notes" not in body["extra"]["routing"]["attempts"][0]
    # gemini-2.5-flash-image's declared price has no input rate: unknown, with the reason, never 0.
    assert body["extra"]["usage"] == {"cost_usd": None, "cost_usd_details": None, "price_source": "plugin",
                                      "reason": "the usage has text_input tokens but the model "
                                                "'google/gemini-2.5-flash-image' has no text_input rate"}


async def test_output_format_converted_by_the_gateway_with_a_note(gateway: Callable[..., Any],
                                                                  fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), g.gemini_ok())
    status, body = await generate(await gateway(), output_format="jpeg", output_compression=70)
    assert status == 200, body
    data = base64.b64decode(body["data"][0]["b64_json"])
    assert data[:3] == b"\xff\xd8\xff" and body["output_format"] == "jpeg"
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (4, 3)
    assert body["extra"]["routing"]["attempts"][0]["notes"] == [
        "1 image converted from png to jpeg at quality 70 by the gateway"]
    assert "output_format" not in json.dumps(fake.received[0].json())  # the Gemini API cannot be asked


async def test_what_google_cannot_honour_is_refused_before_any_call(gateway: Callable[..., Any],
                                                                    fake: FakeUpstream) -> None:
    status, body = await generate(await gateway(), quality="high")
    assert (status, body["error"]["param"], body["error"]["code"]) == (400, "quality", "invalid_value")
    status, body = await generate(await gateway(), background="transparent")
    assert (status, body["error"]["param"]) == (400, "background")
    assert fake.received == []


# -- failures ----------------------------------------------------------------------------------

async def test_bad_key_is_401_and_the_next_target_serves(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), g.api_key_invalid(), g.gemini_ok())
    gw = await gateway(instances=2, models=f"""
models:
  google/{PRO}: {{targets: [google-0, google-1]}}
""")
    status, body = await generate(gw)
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert (failed["status"], failed["http_status"], failed["error_code"]) == ("failed", 401, "invalid_api_key")
    assert failed["error_message"] == CREDENTIALS_REJECTED.format(target=f"google-0:google/{PRO}", status=401)
    assert served["status"] == "succeeded" and served["target"] == f"google-1:google/{PRO}"


async def test_billing_precondition_is_the_operators_not_the_clients(gateway: Callable[..., Any],
                                                                     fake: FakeUpstream) -> None:
    # 400 FAILED_PRECONDITION: "free tier is not available in your country", per
    # https://ai.google.dev/gemini-api/docs/troubleshooting : moves on like a 403.
    fake.script("POST", g.gemini_path(PRO), g.google_error(
        400, "FAILED_PRECONDITION", "Gemini API free tier is not available in your country. Please enable billing."))
    status, body = await generate(await gateway())
    assert status == 502
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["http_status"], attempt["error_code"]) == (403, "permission_denied")


async def test_rate_limit_with_retry_delay(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), g.rate_limited("7s"))
    gw = await gateway()
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"model": f"google/{PRO}", "prompt": PROMPT})
    body = await resp.json()
    assert (resp.status, body["error"]["code"], resp.headers["retry-after"]) == (429, "rate_limit_exceeded", "7")
    assert body["extra"]["routing"]["attempts"][0]["http_status"] == 429


async def test_rate_limit_is_retried_after_its_delay(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), g.rate_limited("0.2s"), g.gemini_ok())
    status, body = await generate(await gateway(router="max_attempts_per_target: 2"))
    assert status == 200, body
    assert [a["status"] for a in body["extra"]["routing"]["attempts"]] == ["failed", "succeeded"]


@pytest.mark.parametrize("shape", list(g.REFUSALS))
async def test_every_gemini_refusal_is_400_moderation_blocked(gateway: Callable[..., Any], fake: FakeUpstream,
                                                              shape: str) -> None:
    fake.always("POST", g.gemini_path(PRO), json_reply(g.REFUSALS[shape]))
    status, body = await generate(await gateway(instances=2, models=f"""
models:
  google/{PRO}: {{targets: [google-0, google-1]}}
"""))
    assert status == 400, body
    err = body["error"]
    assert (err["type"], err["code"], err["param"]) == ("image_generation_user_error", "moderation_blocked", None)
    assert "data" not in body
    assert len(fake.received) == 1  # a safety decision is final: not routed around


async def test_refusal_messages_carry_googles_reason(gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), json_reply(g.REFUSALS["image prohibited"]),
                json_reply(g.REFUSALS["prompt blocked"]))
    gw = await gateway()
    assert (await generate(gw))[1]["error"]["message"].startswith(
        "Gemini did not make the image (IMAGE_PROHIBITED_CONTENT): The model output could not be generated.")
    assert (await generate(gw))[1]["error"]["message"] == (
        "Gemini blocked the prompt (PROHIBITED_CONTENT): The prompt is blocked due to prohibited contents")


async def test_an_answer_without_image_that_is_no_refusal_is_an_upstream_error(gateway: Callable[..., Any],
                                                                              fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), json_reply({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "I can only describe it."}]}, "finishReason": "NO_IMAGE"}]}))
    status, body = await generate(await gateway())
    assert status == 502
    attempt = body["extra"]["routing"]["attempts"][0]
    assert (attempt["http_status"], attempt["error_code"]) == (502, "no_image_generated")
    assert "NO_IMAGE" in attempt["error_message"] and "I can only describe it." in attempt["error_message"]


@pytest.mark.parametrize("answer", [b"<html>oops</html>", b'{"candidates": "many"}',
                                    b'{"candidates": [{"content": {"parts": [{"inlineData": {"data": "!!"}}]}}]}'])
async def test_malformed_answer_is_502_and_the_next_target_serves(gateway: Callable[..., Any], fake: FakeUpstream,
                                                                  answer: bytes) -> None:
    fake.script("POST", g.gemini_path(PRO), bytes_reply(answer, content_type="application/json"), g.gemini_ok())
    status, body = await generate(await gateway(instances=2, models=f"""
models:
  google/{PRO}: {{targets: [google-0, google-1]}}
"""))
    assert status == 200, body
    failed, served = body["extra"]["routing"]["attempts"]
    assert (failed["http_status"], failed["error_code"]) == (502, "invalid_upstream_response")
    assert served["status"] == "succeeded"


async def test_one_failed_call_of_n_fails_the_attempt_saying_how_many_were_made(
        gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.script("POST", g.gemini_path(PRO), g.gemini_ok(), g.gemini_ok(), json_reply(g.REFUSALS["image safety"]))
    status, body = await generate(await gateway(settings="      max_concurrent_calls: 1\n"), n=3)
    assert status == 400
    assert body["error"]["code"] == "moderation_blocked"
    assert body["error"]["message"].startswith("2 of 3 images were made before a call failed (billed by the "
                                               "provider, not returned): Gemini did not make the image (IMAGE_SAFETY)")


# -- Imagen ------------------------------------------------------------------------------------

IMAGEN_MODELS = f"""
models:
  google/{IMAGEN}:
    targets: [google-0]
    price: {{per_image: 0.04}}   # Imagen bills per image; the figure here is the test's, not Google's
"""


async def test_imagen_always_sends_sample_count_and_splits_above_four(gateway: Callable[..., Any],
                                                                      fake: FakeUpstream) -> None:
    fake.always("POST", f"/v1beta/models/{IMAGEN}:predict", g.imagen_ok())
    gw = await gateway(models=IMAGEN_MODELS)
    status, body = await generate(gw, model=f"google/{IMAGEN}", size="1792x1024")
    assert status == 200, body
    assert fake.received[0].headers["x-goog-api-key"] == API_KEY
    assert fake.received[0].json() == {"instances": [{"prompt": PROMPT}], "parameters": {
        "sampleCount": 1, "includeRaiReason": True, "aspectRatio": "16:9", "sampleImageSize": "1K"}}
    assert body["extra"]["usage"] == {"cost_usd": 0.04, "cost_usd_details": {"images": 0.04}, "price_source": "config"}
    assert "usage" not in body  # Imagen reports no tokens: none are invented
    status, body = await generate(gw, model=f"google/{IMAGEN}", n=6)
    assert status == 200 and len(body["data"]) == 6
    assert sorted(r.json()["parameters"]["sampleCount"] for r in fake.received[1:]) == [2, 4]
    assert body["extra"]["usage"]["cost_usd"] == 0.24


@pytest.mark.parametrize("shape", list(g.IMAGEN_REFUSALS))
async def test_imagen_refusals_are_moderation_blocked(gateway: Callable[..., Any], fake: FakeUpstream,
                                                      shape: str) -> None:
    fake.script("POST", f"/v1beta/models/{IMAGEN}:predict", json_reply(g.IMAGEN_REFUSALS[shape]))
    status, body = await generate(await gateway(models=IMAGEN_MODELS), model=f"google/{IMAGEN}")
    assert (status, body["error"]["code"]) == (400, "moderation_blocked")


async def test_imagen_partly_filtered_fails_unless_the_operator_takes_partial_sets(
        gateway: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.always("POST", f"/v1beta/models/{IMAGEN}:predict", g.imagen_ok(filtered=1))
    status, body = await generate(await gateway(models=IMAGEN_MODELS), model=f"google/{IMAGEN}", n=3)
    assert (status, body["error"]["code"]) == (400, "moderation_blocked")
    assert body["error"]["message"].startswith("2 of 3 images were made")
    gw = await gateway(models=IMAGEN_MODELS, settings="      return_partial: true\n")
    status, body = await generate(gw, model=f"google/{IMAGEN}", n=3)
    assert status == 200 and len(body["data"]) == 2
    assert body["extra"]["usage"]["cost_usd"] == 0.08  # what was made
    assert body["extra"]["routing"]["attempts"][0]["notes"][-1] == (
        "only 2 of 3 images were made (returned as the operator allows): Imagen filtered 1 of 3 images: Your "
        "current safety filter threshold filtered out the generated image.")


# -- Vertex AI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key_pair() -> tuple[str, Any]:
    """A test RSA key pair: the private key (PEM) goes into the key file, the public key to the
    fake token server, which verifies the JWT's signature with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem, private.public_key()


SA_EMAIL = "gateway@test-project.iam.gserviceaccount.com"


def vertex_yaml(fake: FakeUpstream, pem: str, location: str = "europe-west4") -> str:
    key_file = json.dumps({"type": "service_account", "project_id": "test-project", "private_key_id": "kid-1",
                           "private_key": pem, "client_email": SA_EMAIL, "token_uri": fake.url("/token")})
    return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:
  - id: vertex-eu
    plugin: google
    region: {location}
    settings:
      api: vertex
      location: {location}
      service_account_key: '{key_file}'
      base_url: "{fake.url('/v1')}"
router: {{max_attempts_per_target: 1}}
"""


async def test_vertex_call_with_a_signed_jwt_and_a_cached_token(aiohttp_client: Callable[..., Any],
                                                                 fake: FakeUpstream, key_pair: tuple[str, Any]) -> None:
    pem, public = key_pair
    fake.script("POST", "/token", g.token_server(public, SA_EMAIL, "ya29.vertex-token-one"))
    fake.always("POST", g.vertex_path("test-project", "europe-west4", PRO), g.gemini_ok())
    gw = await aiohttp_client(create_app(parse_config(vertex_yaml(fake, pem), env={})))
    for _ in range(2):
        status, body = await generate(gw)
        assert status == 200, body
    token_requests = fake.sent_to("/token")
    assert len(token_requests) == 1  # the token is cached until shortly before it expires
    calls = fake.sent_to(g.vertex_path("test-project", "europe-west4", PRO))
    assert [c.headers["authorization"] for c in calls] == ["Bearer ya29.vertex-token-one"] * 2
    assert "x-goog-api-key" not in calls[0].headers
    assert body["extra"]["routing"]["attempts"][0]["region"] == "europe-west4"
    import jwt
    assert jwt.get_unverified_header(msgspec.json.decode(b'"' + token_requests[0].body.split(b"assertion=")[1] + b'"')
                                     )["kid"] == "kid-1"


async def test_a_token_about_to_expire_is_renewed(aiohttp_client: Callable[..., Any], fake: FakeUpstream,
                                                  key_pair: tuple[str, Any]) -> None:
    pem, public = key_pair
    # 200 s left is inside the 225 s margin: each request needs a new token.
    fake.script("POST", "/token", g.token_server(public, SA_EMAIL, "ya29.short-1", expires_in=200),
                g.token_server(public, SA_EMAIL, "ya29.short-2", expires_in=200))
    fake.always("POST", g.vertex_path("test-project", "europe-west4", IMAGEN, "predict"), g.imagen_ok())
    gw = await aiohttp_client(create_app(parse_config(vertex_yaml(fake, pem), env={})))
    for _ in range(2):
        status, body = await generate(gw, model=f"google/{IMAGEN}")
        assert status == 200, body
    calls = fake.sent_to(g.vertex_path("test-project", "europe-west4", IMAGEN, "predict"))
    assert [c.headers["authorization"] for c in calls] == ["Bearer ya29.short-1", "Bearer ya29.short-2"]


async def test_a_jwt_signed_with_another_key_is_refused_and_hidden(aiohttp_client: Callable[..., Any],
                                                                   fake: FakeUpstream,
                                                                   key_pair: tuple[str, Any]) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem, _ = key_pair
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    fake.script("POST", "/token", g.token_server(other, SA_EMAIL, "ya29.never"))
    gw = await aiohttp_client(create_app(parse_config(vertex_yaml(fake, pem), env={})))
    status, body = await generate(gw)
    assert status == 502
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["http_status"], attempt["error_code"]) == (401, "invalid_api_key")
    assert fake.sent_to(g.vertex_path("test-project", "europe-west4", PRO)) == []
    assert "PRIVATE KEY" not in json.dumps(body)


def test_vertex_hosts_per_location() -> None:
    from plugins.google import vertex_base_url

    # python-genai _api_client: global, multi-region and regional hosts (research notes 2.3).
    assert vertex_base_url("global") == "https://aiplatform.googleapis.com/v1"
    assert vertex_base_url("eu") == "https://aiplatform.eu.rep.googleapis.com/v1"
    assert vertex_base_url("us-central1") == "https://us-central1-aiplatform.googleapis.com/v1"


@pytest.mark.parametrize(("settings", "fragment"), [
    ({}, "api: gemini takes api_key"),
    ({"api": "vertex"}, "exactly one of service_account_key and service_account_file"),
    ({"api": "vertex", "service_account_key": "{}", "api_key": "k"}, "exactly one of"),
    ({"api_key": "k", "models": ["google/imagen-9"]}, "unknown models ['google/imagen-9']"),
    ({"api": "vertex", "service_account_key": "not json"}, "not a key file's JSON"),
    ({"api": "vertex", "service_account_key": '{"client_email": "a@b", "private_key": "nope"}'},
     "not a PEM private key"),
])
def test_bad_settings_are_config_problems(settings: dict[str, Any], fragment: str) -> None:
    config = parse_config(msgspec.json.encode({"providers": [
        {"id": "g", "plugin": "google", "settings": settings}]}).decode(), env={})
    with pytest.raises(ConfigError) as caught:
        Registry.build(config, UpstreamHTTP(HTTPClient()))
    [problem] = caught.value.problems
    assert problem.path.startswith("$.providers[0]") and fragment in problem.message


# -- the plugin authors' contract suite, run on this plugin ------------------------------------

class TestGeminiContract(ProviderContract):
    plugin = "google"

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {"api_key": API_KEY, "base_url": upstream.url("/v1beta"), "models": [f"google/{PRO}"]}

    def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
        answers = {"success": [g.gemini_ok() for _ in range(n)], "auth": [g.api_key_invalid()],
                   "rate_limit": [g.rate_limited()],
                   "server_error": [g.google_error(503, "UNAVAILABLE", "The model is overloaded.")],
                   "refusal": [json_reply(g.REFUSALS["image prohibited"])],
                   "malformed": [bytes_reply(b'{"candidates": [{"content": 5}]}', content_type="application/json")],
                   "hang": [hang()]}
        upstream.script("POST", g.gemini_path(PRO), *answers[kind])
        return True


class TestImagenContract(ProviderContract):
    plugin = "google"

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {"api_key": API_KEY, "base_url": upstream.url("/v1beta"), "models": [f"google/{IMAGEN}"]}

    def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
        answers = {"success": g.imagen_ok(), "auth": g.api_key_invalid(), "rate_limit": g.rate_limited(),
                   "server_error": g.google_error(500, "INTERNAL", "Internal error."),
                   "refusal": json_reply(g.IMAGEN_REFUSALS["all filtered"]),
                   "malformed": bytes_reply(b"not json", content_type="application/json"), "hang": hang()}
        upstream.script("POST", f"/v1beta/models/{IMAGEN}:predict", answers[kind])
        return True
