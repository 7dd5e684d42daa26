"""The official openai SDK, unmodified, as the client of the gateway."""

from __future__ import annotations

import base64
from typing import Any, AsyncIterator

import openai
import pytest

from tests.conftest import GATEWAY_KEY


@pytest.fixture
async def sdk(client: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=GATEWAY_KEY,
                                  max_retries=0) as sdk:
        yield sdk


async def test_generate_parses(sdk: openai.AsyncOpenAI, upstream: Any) -> None:
    result = await sdk.images.generate(model="openai/gpt-image-1", prompt="A small red cube",
                                       size="1024x1024", quality="low", n=2)
    assert len(result.data) == 2
    assert base64.b64decode(result.data[0].b64_json or "").startswith(b"\x89PNG")
    assert result.usage is not None and result.usage.total_tokens == 20 + 2 * 1056
    extra = result.model_extra or {}
    assert extra["extra"]["routing"]["attempts"][0]["status"] == "succeeded"


@pytest.mark.parametrize(("kwargs", "param", "code"), [
    ({"n": 11}, "n", "integer_above_max_value"),
    ({"quality": "hd"}, "quality", "invalid_value"),
    ({"size": "1792x1024"}, "size", "invalid_value"),
    ({"output_compression": 50}, "output_compression", "invalid_value"),
    ({"response_format": "url"}, "response_format", "unsupported_value"),
    ({"style": "vivid"}, "style", "unsupported_parameter"),
])
async def test_invalid_params_raise_bad_request(sdk: openai.AsyncOpenAI, kwargs: dict[str, Any], param: str,
                                                code: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.generate(model="openai/gpt-image-1", prompt="x", **kwargs)
    assert info.value.status_code == 400
    assert (info.value.param, info.value.code) == (param, code)


async def test_wrong_key_raises_authentication_error(client: Any) -> None:
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="og-wrong",
                                  max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as info:
            await sdk.images.generate(model="openai/gpt-image-1", prompt="x")
    assert info.value.code == "invalid_api_key"


async def test_unknown_model_raises_bad_request(sdk: openai.AsyncOpenAI) -> None:
    # As OpenAI's images endpoints answer it (tests/test_validation_table.py cites the sources).
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.generate(model="openai/gpt-image-9", prompt="x")
    assert (info.value.code, info.value.type) == ("invalid_value", "image_generation_user_error")


async def test_extra_body_and_extra_headers_reach_the_gateway(sdk: openai.AsyncOpenAI, upstream: Any) -> None:
    from tests.fake_upstream import error

    upstream.script("gpt-image-2", error(503, message="overloaded"))
    raw = await sdk.images.with_raw_response.generate(
        model="openai/gpt-image-2", prompt="x",
        extra_body={"extra": {"fallbacks": ["openai/gpt-image-1"]}},
        extra_headers={"x-opengateway-user-id": "sdk-user", "x-request-id": "sdk-req-1"})
    assert raw.headers["x-request-id"] == "sdk-req-1"
    result = raw.parse()
    attempts = (result.model_extra or {})["extra"]["routing"]["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "succeeded"]
    assert [a["model"] for a in attempts] == ["openai/gpt-image-2", "openai/gpt-image-1"]
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.generate(model="openai/gpt-image-1", prompt="x",
                                  extra_headers={"x-opengateway-user-id": "x" * 300})
    assert info.value.param == "x-opengateway-user-id"
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.generate(model="openai/gpt-image-1", prompt="x", extra_body={"extra": {"nope": 1}})
    assert info.value.param == "extra.nope"


async def test_models_list(sdk: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in sdk.models.list()]
    assert "openai/gpt-image-2" in ids
