"""Every validation rule of the images endpoint: status, type, param and code, as OpenAI answers."""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import msgspec
import pytest

from tests.conftest import AUTH

BASE = {"model": "openai/gpt-image-1", "prompt": "A small red cube on a white background."}


def body(**changes: Any) -> dict[str, Any]:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


DROP = object()

#: Where OpenAI's wording below comes from. KM: a proxy project's record of direct probes of OpenAI's
#: images API (2026-08-29/30), message, type, param and code per case.
KM = ("https://github.com/kangminlee-maker/local-OAuth-CLI-API-adapter/blob/"
      "4f3331c9142ab6b621ed509efd9c6693385a20eb/docs/conformance-matrix.md")
SPEC = "https://github.com/openai/openai-openapi/blob/f85dbe223d40e1a31cba812ab2d755c7e98a92a3/openapi.yaml"
SDK_PARAMS = ("https://github.com/openai/openai-python/blob/e43b422412a9e96c9cc5192c61fffbe2d7e04836/"
              "src/openai/types/image_generate_params.py")
USER_ERROR = "image_generation_user_error"


class Rule(NamedTuple):
    case: str
    payload: Any
    status: int
    param: str | None
    code: str
    #: OpenAI's exact message where it is known (sourced in a comment); None: any message.
    message: str | None = None
    type: str = "invalid_request_error"


CASES: list[Rule] = [
    Rule("missing prompt", body(prompt=DROP), 400, "prompt", "missing_required_parameter"),
    Rule("missing model", body(model=DROP), 400, "model", "missing_required_parameter"),
    Rule("empty prompt", body(prompt=""), 400, "prompt", "empty_string"),
    Rule("prompt too long", body(prompt="x" * 32001), 400, "prompt", "string_above_max_length"),
    Rule("prompt not a string", body(prompt=5), 400, "prompt", "invalid_type"),
    Rule("model not a string", body(model=["a"]), 400, "model", "invalid_type"),
    Rule("n above 10", body(n=11), 400, "n", "integer_above_max_value"),
    Rule("n below 1", body(n=0), 400, "n", "integer_below_min_value",
         "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."),  # KM 5.5.3
    Rule("n a string", body(n="2"), 400, "n", "invalid_type",
         "Invalid type for 'n': expected an integer, but got a string instead."),  # KM 5.5.3
    # KM 5.5.3: a decimal is "a decimal number", not "a number".
    Rule("n a float", body(n=1.5), 400, "n", "invalid_type",
         "Invalid type for 'n': expected an integer, but got a decimal number instead."),
    Rule("n a boolean", body(n=True), 400, "n", "invalid_type",
         "Invalid type for 'n': expected an integer, but got a boolean instead."),  # KM 5.5.3
    Rule("compression above 100", body(output_format="jpeg", output_compression=101), 400,
         "output_compression", "integer_above_max_value"),
    Rule("compression below 0", body(output_format="jpeg", output_compression=-1), 400,
         "output_compression", "integer_below_min_value"),
    # The gateway's rule, kept: below 100 with png (OpenAI's SPEC: "only supported for ... webp or
    # jpeg"; KM 5.5.3 saw OpenAI pass 50 with png through validation and did not record the outcome).
    # 100 with png, OpenAI's default, is accepted: test_valid_requests_pass.
    Rule("compression with png", body(output_compression=50), 400, "output_compression", "invalid_value"),
    Rule("compression with explicit png", body(output_format="png", output_compression=80), 400,
         "output_compression", "invalid_value"),
    # pollinations/pollinations#5037 (https://github.com/pollinations/pollinations/issues/5037):
    # OpenAI lists the sizes square, portrait, landscape, then auto.
    Rule("bad size", body(size="1792x1024"), 400, "size", "invalid_value",
         "Invalid value: '1792x1024'. Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'."),
    Rule("bad size type", body(size=1024), 400, "size", "invalid_type",
         "Invalid type for 'size': expected a string, but got an integer instead."),  # KM 5.5.3
    # KM 5.5.2 (also a raw envelope in a test fixture of another client): OpenAI's order, auto last.
    Rule("bad quality", body(quality="standard"), 400, "quality", "invalid_value",
         "Invalid value: 'standard'. Supported values are: 'low', 'medium', 'high', and 'auto'."),
    Rule("hd quality", body(quality="hd"), 400, "quality", "invalid_value"),
    # KM 5.5.3: a wrong type on an enum names its values, with "or".
    Rule("quality an integer", body(quality=5), 400, "quality", "invalid_type",
         "Invalid type for 'quality': expected one of 'low', 'medium', 'high', or 'auto', but got an integer "
         "instead."),
    Rule("moderation a boolean", body(moderation=True), 400, "moderation", "invalid_type",
         "Invalid type for 'moderation': expected one of 'auto' or 'low', but got a boolean instead."),
    Rule("bad background", body(background="clear"), 400, "background", "invalid_value",  # KM 5.5.2
         "Invalid value: 'clear'. Supported values are: 'transparent', 'opaque', and 'auto'."),
    Rule("bad output format", body(output_format="gif"), 400, "output_format", "invalid_value",  # KM 5.5.3
         "Invalid value: 'gif'. Supported values are: 'png', 'webp', and 'jpeg'."),
    Rule("bad moderation", body(moderation="high"), 400, "moderation", "invalid_value",  # KM 5.5.2
         "Invalid value: 'high'. Supported values are: 'auto' and 'low'."),
    Rule("transparent with jpeg", body(background="transparent", output_format="jpeg"), 400,
         "background", "invalid_value"),
    Rule("user not a string", body(user=7), 400, "user", "invalid_type"),
    Rule("unknown field", body(foo=1), 400, "foo", "unknown_parameter"),
    # Not an images parameter in OpenAI's SPEC or SDK (image_generate_params.py has `user`, no
    # `safety_identifier`: SDK_PARAMS); an operator may allow it per model (models.<id>.extra_fields).
    Rule("safety_identifier", body(safety_identifier="hashed-user-1"), 400, "safety_identifier",
         "unknown_parameter", "Unknown parameter: 'safety_identifier'."),
    Rule("stream not bool", body(stream="yes"), 400, "stream", "invalid_type",
         "Invalid type for 'stream': expected a boolean, but got a string instead."),  # KM 5.5.3
    Rule("partial images without stream", body(partial_images=2), 400, "partial_images", "invalid_value"),
    Rule("partial images above 3", body(stream=True, partial_images=4), 400, "partial_images",
         "integer_above_max_value"),
    Rule("partial images not an integer", body(stream=True, partial_images="2"), 400, "partial_images",
         "invalid_type"),
    Rule("style", body(style="vivid"), 400, "style", "unsupported_parameter"),
    Rule("response_format url", body(response_format="url"), 400, "response_format", "unsupported_value"),
    Rule("response_format other", body(response_format="png"), 400, "response_format", "invalid_value"),
    Rule("extra not an object", body(extra=[1]), 400, "extra", "invalid_type"),
    Rule("extra unknown key", body(extra={"retries": 3}), 400, "extra.retries", "unknown_parameter"),
    Rule("extra.fallbacks not a list", body(extra={"fallbacks": "openai/gpt-image-2"}), 400,
         "extra.fallbacks", "invalid_type"),
    Rule("extra.fallbacks item not a string", body(extra={"fallbacks": [3]}), 400,
         "extra.fallbacks[0]", "invalid_type"),
    Rule("unknown fallback", body(extra={"fallbacks": ["openai/gpt-nope"]}), 400,
         "extra.fallbacks[0]", "invalid_value", "Invalid fallback 'openai/gpt-nope': The model 'openai/gpt-nope' "
         "does not exist."),
    Rule("fallbacks conflict", body(fallbacks=["openai/gpt-image-2"], extra={"fallbacks": ["openai/gpt-image-1.5"]}),
         400, "fallbacks", "conflicting_parameters"),
    Rule("deadline not positive", body(extra={"deadline_s": 0}), 400, "extra.deadline_s", "invalid_value"),
    # KM 5.5.2 (model "", "dall-e-3", "foo-model"), and production reports of
    # {"error": {"message": "The model 'dall-e-3' does not exist.", "type": "image_generation_user_error"}}:
    # OpenAI's images endpoints answer an unknown model with 400, not 404.
    Rule("unknown model", body(model="openai/gpt-image-9"), 400, "model", "invalid_value",
         "The model 'openai/gpt-image-9' does not exist.", USER_ERROR),
    Rule("unknown owner", body(model="acme/gpt-image-1"), 400, "model", "invalid_value",
         "The model 'acme/gpt-image-1' does not exist.", USER_ERROR),
    Rule("empty model", body(model=""), 400, "model", "invalid_value", "The model '' does not exist.", USER_ERROR),
    Rule("bare dall-e-3", body(model="dall-e-3"), 400, "model", "invalid_value",
         "The model 'dall-e-3' does not exist.", USER_ERROR),
    # gpt-image-2's sizes are refused with type image_generation_user_error. Divisible by 16: KM 5.5.3,
    # jezweb/claude-skills#91 (https://github.com/jezweb/claude-skills/pull/91: "Invalid size '1792x936'.
    # Width and height must both be divisible by 16.") and a relay's raw answer.
    Rule("gpt-image-2 size not divisible by 16", body(model="openai/gpt-image-2", size="1790x1024"), 400,
         "size", "invalid_value", "Invalid size '1790x1024'. Width and height must both be divisible by 16.",
         USER_ERROR),
    Rule("gpt-image-2 size 9x9", body(model="openai/gpt-image-2", size="9x9"), 400, "size", "invalid_value",
         "Invalid size '9x9'. Width and height must both be divisible by 16.", USER_ERROR),
    # The three below are the gateway's wording in OpenAI's form: OpenAI's own is unpublished.
    Rule("gpt-image-2 aspect beyond 3:1", body(model="openai/gpt-image-2", size="3200x1056"), 400,
         "size", "invalid_value", "Invalid size '3200x1056'. The aspect ratio must be between 1:3 and 3:1.",
         USER_ERROR),
    Rule("gpt-image-2 edge above 3840", body(model="openai/gpt-image-2", size="3856x1024"), 400,
         "size", "invalid_value", "Invalid size '3856x1024'. Width and height must each be at most 3840 pixels.",
         USER_ERROR),
    Rule("gpt-image-2 too many pixels", body(model="openai/gpt-image-2", size="2896x2880"), 400, "size",
         "invalid_value", "Requested resolution is above the current maximum pixel budget.", USER_ERROR),
    # Reported from OpenAI through a relay on 2026-08-27 (notes/catalogue.md section 5.4; no public URL).
    Rule("gpt-image-2 too few pixels", body(model="openai/gpt-image-2", size="512x512"), 400,
         "size", "invalid_value", "Requested resolution is below the current minimum pixel budget.", USER_ERROR),
    Rule("gpt-image-2 malformed size", body(model="openai/gpt-image-2", size="big"), 400, "size",
         "invalid_value", "Invalid size 'big'. Expected WIDTHxHEIGHT, for example '1824x1024'.", USER_ERROR),  # KM
    Rule("gpt-image-2 size 0x0", body(model="openai/gpt-image-2", size="0x0"), 400, "size",
         "invalid_value", "Invalid size '0x0'. Expected WIDTHxHEIGHT, for example '1824x1024'.", USER_ERROR),  # KM
]


@pytest.mark.parametrize("rule", CASES, ids=[c.case for c in CASES])
async def test_validation_rule(client: Any, upstream: Any, rule: Rule) -> None:
    resp = await client.post("/v1/images/generations", json=rule.payload, headers=AUTH)
    assert resp.status == rule.status, await resp.text()
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (rule.type, rule.param, rule.code)
    assert error["message"]
    if rule.message is not None:
        assert error["message"] == rule.message
    assert upstream.received == [], "a rejected request must never reach the upstream"


RAW_CASES = [
    ("not JSON", b"{not json", {"Content-Type": "application/json"}, 400, None, "invalid_json"),
    ("empty body", b"", {"Content-Type": "application/json"}, 400, None, "invalid_json"),
    ("JSON array", b"[1, 2]", {"Content-Type": "application/json"}, 400, None, "invalid_type"),
    ("JSON string", b'"hello"', {"Content-Type": "application/json"}, 400, None, "invalid_type"),
    ("form content type", msgspec.json.encode(BASE), {"Content-Type": "application/x-www-form-urlencoded"},
     400, None, "unsupported_content_type"),
    ("text content type", msgspec.json.encode(BASE), {"Content-Type": "text/plain"}, 400, None,
     "unsupported_content_type"),
    ("body over the limit", b'{"model":"openai/gpt-image-1","prompt":"' + b"x" * 1_100_000 + b'"}',
     {"Content-Type": "application/json"}, 413, None, "request_too_large"),
]


@pytest.mark.parametrize(("case", "data", "headers", "status", "param", "code"), RAW_CASES,
                         ids=[c[0] for c in RAW_CASES])
async def test_malformed_bodies(client: Any, case: str, data: bytes, headers: dict[str, str], status: int,
                                param: str | None, code: str) -> None:
    payload = io.BytesIO(data) if len(data) > 1_000_000 else data  # aiohttp warns on large raw bytes
    resp = await client.post("/v1/images/generations", data=payload, headers={**AUTH, **headers})
    assert resp.status == status
    error = (await resp.json())["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


async def test_charset_in_content_type_is_accepted(client: Any) -> None:
    resp = await client.post("/v1/images/generations", data=msgspec.json.encode(BASE),
                             headers={**AUTH, "Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 200


@pytest.mark.parametrize("payload", [
    body(response_format="b64_json"),
    body(n=None, size=None, quality=None, stream=False),
    body(model="openai/gpt-image-2", size="1792x1024"),
    body(model="openai/gpt-image-2", size="3840x1280"),
    body(background="transparent", output_format="webp", output_compression=60),
    body(output_format="jpeg", output_compression=0, quality="high", moderation="low", user="u-1", n=10),
    body(prompt="x" * 32000),
])
async def test_valid_requests_pass(client: Any, upstream: Any, payload: dict[str, Any]) -> None:
    resp = await client.post("/v1/images/generations", json=payload, headers=AUTH)
    assert resp.status == 200, await resp.text()
    sent = upstream.received[-1].body
    assert sent["model"] == payload["model"].split("/", 1)[1]
    assert "response_format" not in sent and "stream" not in sent and "extra" not in sent
    assert all(v is not None for v in sent.values())


@pytest.mark.parametrize("payload", [body(output_compression=100), body(output_format="png", output_compression=100)])
async def test_compression_100_with_png_is_accepted_and_not_sent(client: Any, upstream: Any,
                                                                 payload: dict[str, Any]) -> None:
    # OpenAI's SPEC (CreateImageRequest.output_compression): "only supported for the GPT image models
    # with the webp or jpeg output formats, and defaults to 100" (SPEC): 100 with png asks for the
    # default, so it is accepted; a PNG has no compression level, so nothing is sent for it.
    resp = await client.post("/v1/images/generations", json=payload, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert "output_compression" not in upstream.received[-1].body
    # With jpeg the value is forwarded as it is.
    resp = await client.post("/v1/images/generations", json={**payload, "output_format": "jpeg"}, headers=AUTH)
    assert resp.status == 200 and upstream.received[-1].body["output_compression"] == 100
