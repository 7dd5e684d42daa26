"""Every validation rule of the images endpoint: status, type, param and code, as OpenAI answers."""

from __future__ import annotations

import io
from typing import Any

import msgspec
import pytest

from tests.conftest import AUTH

BASE = {"model": "openai/gpt-image-1", "prompt": "A small red cube on a white background."}


def body(**changes: Any) -> dict[str, Any]:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


DROP = object()

# (case id, JSON body, status, param, code)
CASES: list[tuple[str, Any, int, str | None, str]] = [
    ("missing prompt", body(prompt=DROP), 400, "prompt", "missing_required_parameter"),
    ("missing model", body(model=DROP), 400, "model", "missing_required_parameter"),
    ("empty prompt", body(prompt=""), 400, "prompt", "empty_string"),
    ("prompt too long", body(prompt="x" * 32001), 400, "prompt", "string_above_max_length"),
    ("prompt not a string", body(prompt=5), 400, "prompt", "invalid_type"),
    ("model not a string", body(model=["a"]), 400, "model", "invalid_type"),
    ("n above 10", body(n=11), 400, "n", "integer_above_max_value"),
    ("n below 1", body(n=0), 400, "n", "integer_below_min_value"),
    ("n a string", body(n="2"), 400, "n", "invalid_type"),
    ("n a float", body(n=1.5), 400, "n", "invalid_type"),
    ("n a boolean", body(n=True), 400, "n", "invalid_type"),
    ("compression above 100", body(output_format="jpeg", output_compression=101), 400,
     "output_compression", "integer_above_max_value"),
    ("compression below 0", body(output_format="jpeg", output_compression=-1), 400,
     "output_compression", "integer_below_min_value"),
    ("compression with png", body(output_compression=50), 400, "output_compression", "invalid_value"),
    ("compression with explicit png", body(output_format="png", output_compression=80), 400,
     "output_compression", "invalid_value"),
    ("bad size", body(size="1792x1024"), 400, "size", "invalid_value"),
    ("bad size type", body(size=1024), 400, "size", "invalid_type"),
    ("bad quality", body(quality="standard"), 400, "quality", "invalid_value"),
    ("hd quality", body(quality="hd"), 400, "quality", "invalid_value"),
    ("bad background", body(background="clear"), 400, "background", "invalid_value"),
    ("bad output format", body(output_format="gif"), 400, "output_format", "invalid_value"),
    ("bad moderation", body(moderation="high"), 400, "moderation", "invalid_value"),
    ("transparent with jpeg", body(background="transparent", output_format="jpeg"), 400,
     "background", "invalid_value"),
    ("user not a string", body(user=7), 400, "user", "invalid_type"),
    ("unknown field", body(foo=1), 400, "foo", "unknown_parameter"),
    ("stream not bool", body(stream="yes"), 400, "stream", "invalid_type"),
    ("partial images without stream", body(partial_images=2), 400, "partial_images", "invalid_value"),
    ("partial images above 3", body(stream=True, partial_images=4), 400, "partial_images",
     "integer_above_max_value"),
    ("partial images not an integer", body(stream=True, partial_images="2"), 400, "partial_images", "invalid_type"),
    ("style", body(style="vivid"), 400, "style", "unsupported_parameter"),
    ("response_format url", body(response_format="url"), 400, "response_format", "unsupported_value"),
    ("response_format other", body(response_format="png"), 400, "response_format", "invalid_value"),
    ("extra not an object", body(extra=[1]), 400, "extra", "invalid_type"),
    ("extra unknown key", body(extra={"retries": 3}), 400, "extra.retries", "unknown_parameter"),
    ("extra.fallbacks not a list", body(extra={"fallbacks": "openai/gpt-image-2"}), 400,
     "extra.fallbacks", "invalid_type"),
    ("extra.fallbacks item not a string", body(extra={"fallbacks": [3]}), 400,
     "extra.fallbacks[0]", "invalid_type"),
    ("unknown fallback", body(extra={"fallbacks": ["openai/gpt-nope"]}), 400,
     "extra.fallbacks[0]", "model_not_found"),
    ("fallbacks conflict", body(fallbacks=["openai/gpt-image-2"], extra={"fallbacks": ["openai/gpt-image-1.5"]}),
     400, "fallbacks", "conflicting_parameters"),
    ("deadline not positive", body(extra={"deadline_s": 0}), 400, "extra.deadline_s", "invalid_value"),
    ("bare model name", body(model="gpt-image-1"), 400, "model", "invalid_value"),
    ("unknown model", body(model="openai/gpt-image-9"), 404, "model", "model_not_found"),
    ("unknown owner", body(model="acme/gpt-image-1"), 404, "model", "model_not_found"),
    ("gpt-image-2 size not divisible by 16", body(model="openai/gpt-image-2", size="1790x1024"), 400,
     "size", "invalid_value"),
    ("gpt-image-2 aspect beyond 3:1", body(model="openai/gpt-image-2", size="3200x1056"), 400,
     "size", "invalid_value"),
    ("gpt-image-2 edge above 3840", body(model="openai/gpt-image-2", size="3856x1024"), 400,
     "size", "invalid_value"),
    ("gpt-image-2 too few pixels", body(model="openai/gpt-image-2", size="512x512"), 400,
     "size", "invalid_value"),
    ("gpt-image-2 malformed size", body(model="openai/gpt-image-2", size="big"), 400, "size", "invalid_value"),
]


@pytest.mark.parametrize(("case", "payload", "status", "param", "code"), CASES, ids=[c[0] for c in CASES])
async def test_validation_rule(client: Any, upstream: Any, case: str, payload: Any, status: int,
                               param: str | None, code: str) -> None:
    resp = await client.post("/v1/images/generations", json=payload, headers=AUTH)
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"]
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
