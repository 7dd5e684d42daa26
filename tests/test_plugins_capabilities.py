"""Per-model capabilities as data, operator overrides, extra fields and aliases, black box."""

from __future__ import annotations

import re
from typing import Any, AsyncIterator, Callable

import openai
import pytest

from gateway.catalog import openai_image_models
from gateway.config import ConfigError
from tests.conftest import AUTH, GATEWAY_KEY
from tests.fake_upstream import error

PROMPT = "A small red cube on a white background."


async def generate(client: Any, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/images/generations", headers=AUTH, json={"prompt": PROMPT, **fields})
    return resp.status, await resp.json()


def test_every_catalogued_model_has_coherent_capabilities_and_a_price() -> None:
    catalog = openai_image_models()
    assert {"openai/gpt-image-1", "openai/gpt-image-1-mini", "openai/gpt-image-1.5",
            "openai/gpt-image-2"} <= set(catalog)
    for model_id, entry in catalog.items():
        caps = entry.capabilities
        assert re.fullmatch(r"[a-z0-9-]+/[a-z0-9.-]+", model_id)
        assert "auto" in caps.sizes and all(s == "auto" or re.fullmatch(r"\d+x\d+", s) for s in caps.sizes)
        assert set(caps.compression_formats) <= set(caps.output_formats)
        assert set(caps.transparent_formats) <= set(caps.output_formats)
        assert 1 <= caps.max_n <= 10
        if model_id != "openai/chatgpt-image-latest":  # no published price: its cost is null, with the reason
            assert entry.price is not None and entry.price.image_output, model_id
    rule = catalog["openai/gpt-image-2"].capabilities.flexible_sizes
    assert rule is not None and rule.broken(1792, 1024) is None and rule.broken(1790, 1024) == "multiple_of"


async def test_fixed_sizes_refused_in_openai_words_before_any_call(client: Any, upstream: Any) -> None:
    status, body = await generate(client, model="openai/gpt-image-1", size="1792x1024")
    assert status == 400
    assert body["error"] == {
        "message": "Invalid value: '1792x1024'. Supported values are: '1024x1024', '1024x1536', '1536x1024', "
                   "and 'auto'.",
        "type": "invalid_request_error", "param": "size", "code": "invalid_value"}
    assert upstream.received == []


async def test_gpt_image_2_flexible_sizes(client: Any, upstream: Any) -> None:
    status, _ = await generate(client, model="openai/gpt-image-2", size="1792x1024")
    assert status == 200
    assert upstream.received[-1].body["size"] == "1792x1024"
    status, body = await generate(client, model="openai/gpt-image-2", size="1790x1024")
    assert status == 400
    assert body["error"]["message"] == "Invalid size '1790x1024'. Width and height must both be divisible by 16."
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (
        "image_generation_user_error", "size", "invalid_value")
    assert len(upstream.received) == 1


EXTRA = """
models:
  openai/gpt-image-1:
    targets: [openai-main]
    extra_fields: [safety_identifier]
  openai/gpt-image-1-mini:
    targets: [openai-main]
    capabilities:
      sizes: [auto, 1024x1024]
      qualities: [low, auto]
      max_n: 2
router: {max_attempts_per_target: 1}
aliases:
  gpt-image-1: openai/gpt-image-1
  cheap: openai/gpt-image-1-mini
"""


@pytest.fixture
async def tuned(make_client: Callable[..., Any]) -> Any:
    return await make_client(EXTRA)


async def test_operator_allowed_field_is_forwarded(tuned: Any, upstream: Any) -> None:
    status, _ = await generate(tuned, model="openai/gpt-image-1", safety_identifier="hash-of-user-42")
    assert status == 200
    assert upstream.received[-1].body["safety_identifier"] == "hash-of-user-42"


@pytest.mark.parametrize(("model", "field"), [
    ("openai/gpt-image-1", "seed"),                     # not listed for this model
    ("openai/gpt-image-1-mini", "safety_identifier"),   # listed for another model only
])
async def test_unlisted_field_is_unknown_parameter(tuned: Any, upstream: Any, model: str, field: str) -> None:
    status, body = await generate(tuned, model=model, **{field: "x"})
    assert status == 400
    assert body["error"] == {"message": f"Unknown parameter: '{field}'.", "type": "invalid_request_error",
                             "param": field, "code": "unknown_parameter"}
    assert upstream.received == []


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"size": "1536x1024"}, "size", "Invalid value: '1536x1024'. Supported values are: '1024x1024' and 'auto'."),
    ({"quality": "high"}, "quality", "Invalid value: 'high'. Supported values are: 'low' and 'auto'."),
    ({"n": 3}, "n", "Invalid 'n': integer above maximum value. Expected a value <= 2, but got 3 instead."),
])
async def test_operator_capabilities_override(tuned: Any, upstream: Any, fields: dict[str, Any], param: str,
                                              message: str) -> None:
    status, body = await generate(tuned, model="openai/gpt-image-1-mini", **fields)
    assert status == 400
    assert (body["error"]["param"], body["error"]["message"]) == (param, message)
    assert upstream.received == []


@pytest.fixture
async def sdk(tuned: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=str(tuned.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as c:
        yield c


async def test_alias_through_the_sdk(sdk: openai.AsyncOpenAI, upstream: Any) -> None:
    raw = await sdk.images.with_raw_response.generate(model="gpt-image-1", prompt=PROMPT)
    assert raw.parse().data and upstream.received[-1].body["model"] == "gpt-image-1"
    [attempt] = raw.http_response.json()["extra"]["routing"]["attempts"]
    assert attempt["model"] == "openai/gpt-image-1"


async def test_alias_as_a_fallback(tuned: Any, upstream: Any) -> None:
    upstream.script("gpt-image-1", error(503, None, "overloaded"))
    status, body = await generate(tuned, model="openai/gpt-image-1", extra={"fallbacks": ["cheap"]})
    assert status == 200, body
    assert upstream.received[-1].body["model"] == "gpt-image-1-mini"


async def test_alias_to_an_unknown_model_is_a_config_problem(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(EXTRA + "  typo: openai/gpt-image-9\n")  # appended to aliases
    [problem] = caught.value.problems
    assert (problem.path, problem.message) == ("$.aliases.typo", "no model 'openai/gpt-image-9' in models")
