"""The embedded offline provider: real images, OpenAI's response shape, simulated failures."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import msgspec
import pytest
from PIL import Image

from gateway.catalog import Capabilities, openai_image_models
from gateway.http_client import HTTPClient
from gateway.provider import Call, ImageRequest, ImageResult, ProviderError, UpstreamHTTP
from plugins import local
from plugins.local import LocalProvider

PROMPT = "A small red cube on a white background."  # 39 characters → 10 input tokens


def generate(
    prompt: str = PROMPT,
    *,
    timeout_s: float = 30.0,
    settings: LocalProvider.Settings | None = None,
    **fields: Any,
) -> tuple[dict[str, Any], ImageResult]:
    async def call() -> ImageResult:
        provider = LocalProvider(settings or LocalProvider.Settings(), UpstreamHTTP(HTTPClient()))
        request = ImageRequest(model="openai/gpt-image-2", prompt=prompt, **fields)
        return await provider.generate(request, Call("openai/gpt-image-2", timeout_s))

    result = asyncio.run(call())
    return msgspec.json.decode(result.body), result


def images_of(body: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in body["data"]]


def decode(raw: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(raw))
    image.load()  # a truncated or corrupt payload fails here
    return image


def test_the_seed_request_gets_openai_shaped_answer() -> None:
    body, result = generate(size="1024x1024", quality="medium")
    assert set(body) == {"created", "data", "background", "output_format", "quality", "size", "usage"}
    assert isinstance(body["created"], int)
    assert [set(item) for item in body["data"]] == [{"b64_json"}]
    assert (body["background"], body["output_format"], body["quality"], body["size"]) == (
        "opaque",
        "png",
        "medium",
        "1024x1024",
    )
    assert body["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
        "output_tokens": 1756,  # gpt-image-2's formula at 1024x1024 medium (gateway/tokens.py)
        "output_tokens_details": {"image_tokens": 1756, "text_tokens": 0},
        "total_tokens": 1766,
    }
    image = decode(images_of(body)[0])
    assert (image.format, image.size, image.mode) == ("PNG", (1024, 1024), "RGB")
    assert result.upstream_request_id is not None and result.upstream_request_id.startswith("local-")
    assert len(result.upstream_request_id) == len("local-") + 32


def test_defaults_are_auto_size_png_opaque_medium() -> None:
    body, _ = generate()
    assert (body["size"], body["output_format"], body["background"], body["quality"]) == (
        "1024x1024",
        "png",
        "opaque",
        "medium",
    )
    assert decode(images_of(body)[0]).size == (1024, 1024)


@pytest.mark.parametrize(
    ("output_format", "background", "pil_format", "mode", "answered_background"),
    [
        ("png", "transparent", "PNG", "RGBA", "transparent"),
        ("webp", "transparent", "WEBP", "RGBA", "transparent"),
        ("png", "opaque", "PNG", "RGB", "opaque"),
        ("jpeg", "auto", "JPEG", "RGB", "opaque"),
        ("webp", "auto", "WEBP", "RGB", "opaque"),
    ],
)
def test_formats_and_backgrounds(
    output_format: str, background: str, pil_format: str, mode: str, answered_background: str
) -> None:
    body, _ = generate(size="1536x1024", output_format=output_format, background=background)
    assert (body["output_format"], body["background"]) == (output_format, answered_background)
    image = decode(images_of(body)[0])
    assert (image.format, image.size, image.mode) == (pil_format, (1536, 1024), mode)
    if mode == "RGBA":
        alpha = image.getchannel("A")
        assert alpha.getpixel((0, 0)) == 0  # the corner is background: fully transparent
        assert alpha.getextrema() == (0, 255)  # and the picture is opaque


def test_n_images_are_siblings_not_copies() -> None:
    body, _ = generate(n=3, size="1024x1536")
    images = images_of(body)
    assert len(images) == 3 and len(set(images)) == 3
    assert all(decode(raw).size == (1024, 1536) for raw in images)


def test_same_request_same_pixels_and_another_prompt_another_picture() -> None:
    first, _ = generate(output_format="webp", n=2)
    local._render.cache_clear()  # the second call must draw again, not read the cache
    again, _ = generate(output_format="webp", n=2)
    other, _ = generate("A large blue sphere.", output_format="webp", n=2)
    assert images_of(first) == images_of(again)
    assert not set(images_of(first)) & set(images_of(other))


def test_output_compression_is_the_jpeg_quality() -> None:
    small, _ = generate(output_format="jpeg", output_compression=10)
    large, _ = generate(output_format="jpeg", output_compression=95)
    assert len(images_of(small)[0]) < len(images_of(large)[0])
    assert decode(images_of(small)[0]).format == "JPEG"


@pytest.mark.parametrize(
    ("prompt", "fields", "input_tokens", "output_tokens"),
    [
        # gpt-image-2's formula (OpenAI's token calculator; the values OpenAI's guide tabulates):
        ("a", {}, 1, 1756),  # auto quality answers as medium, 1024x1024
        ("x" * 9, {"quality": "low", "size": "1024x1536", "n": 2}, 3, 2 * 158),
        ("x" * 400, {"quality": "high", "size": "1536x1024"}, 100, 5488),
        ("abcd", {"quality": "medium", "size": "2048x1152", "n": 2}, 1, 2 * 1413),
        # u = round(16 * 720 / 1280) = 9; ceil(16 * 9 * (2,000,000 + 921,600) / 4,000,000) = 106
        ("abcde", {"quality": "low", "size": "1280x720"}, 2, 106),
    ],
)
def test_usage_arithmetic(prompt: str, fields: dict[str, Any], input_tokens: int, output_tokens: int) -> None:
    body, _ = generate(prompt, **fields)
    usage = body["usage"]
    assert usage["input_tokens"] == usage["input_tokens_details"]["text_tokens"] == input_tokens
    assert usage["output_tokens"] == usage["output_tokens_details"]["image_tokens"] == output_tokens
    assert usage["total_tokens"] == input_tokens + output_tokens
    width, height = map(int, body["size"].split("x"))
    assert all(decode(raw).size == (width, height) for raw in images_of(body))


def test_each_model_is_billed_by_its_own_token_rule() -> None:
    """gpt-image-1 by OpenAI's published table, gpt-image-2 by its formula (gateway/tokens.py)."""
    async def usage(model: str) -> dict[str, Any]:
        provider = LocalProvider(LocalProvider.Settings(), UpstreamHTTP(HTTPClient()))
        request = ImageRequest(model=model, prompt="p", size="1024x1024", quality="high")
        return msgspec.json.decode((await provider.generate(request, Call(model, 30))).body)["usage"]
    assert asyncio.run(usage("openai/gpt-image-1"))["output_tokens"] == 4160
    assert asyncio.run(usage("openai/gpt-image-2"))["output_tokens"] == 7024
    gpt_image_1 = openai_image_models()["openai/gpt-image-1"]
    assert gpt_image_1.tokens is not None and gpt_image_1.tokens.table is not None
    for sizes in gpt_image_1.tokens.table.values():  # the table covers every fixed size
        assert set(sizes) == set(gpt_image_1.capabilities.sizes) - {"auto"}


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
        (503, "server_error", None),
        (400, "image_generation_user_error", "moderation_blocked"),
    ],
)
def test_fail_marker(status: int, error_type: str, code: str | None) -> None:
    with pytest.raises(ProviderError) as caught:
        generate(f"a cat [local:fail-{status}] on a mat")
    error = caught.value
    assert (error.status, error.type, error.code, error.timeout) == (status, error_type, code, False)
    assert error.message


def test_a_marker_outside_the_error_range_is_just_text() -> None:
    body, _ = generate("[local:fail-200]")
    assert len(body["data"]) == 1


def test_latency_beyond_the_timeout_is_a_timeout() -> None:
    with pytest.raises(ProviderError) as caught:
        generate(timeout_s=0.05, settings=LocalProvider.Settings(latency_s=30.0))
    assert caught.value.timeout is True and caught.value.status is None


def test_latency_within_the_timeout_answers() -> None:
    body, _ = generate(timeout_s=30.0, settings=LocalProvider.Settings(latency_s=0.01))
    assert len(body["data"]) == 1


def test_invalid_size_is_a_400_not_a_crash() -> None:
    with pytest.raises(ProviderError) as caught:
        generate(size="99999x99999")
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "size", "invalid_value")


def test_models_default_to_the_catalog() -> None:
    provider = LocalProvider(LocalProvider.Settings(), None)  # type: ignore[arg-type]  # no network
    catalog = openai_image_models()
    assert [(m.id, m.capabilities) for m in provider.models()] == [
        (model_id, entry.capabilities) for model_id, entry in catalog.items()
    ]
    assert "openai/gpt-image-2" in catalog


def test_models_setting_picks_ids_and_unknown_ids_get_defaults() -> None:
    settings = msgspec.convert({"models": ["openai/gpt-image-2", "acme/painter"]}, LocalProvider.Settings)
    provider = LocalProvider(settings, None)  # type: ignore[arg-type]
    models = {m.id: m.capabilities for m in provider.models()}
    assert models["openai/gpt-image-2"] == openai_image_models()["openai/gpt-image-2"].capabilities
    assert models["acme/painter"] == Capabilities()


@pytest.mark.parametrize("raw", [{"latency_s": -1}, {"latency": 1}])
def test_settings_reject_bad_config(raw: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, LocalProvider.Settings)
