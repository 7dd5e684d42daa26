"""The shared mapping pieces (gateway/mapping/) that non-OpenAI plugins use: sizes, n split,
format conversion, the host rule, form bodies and the images response; and the operator's
``drop_unsupported`` and output-based prices through the real app."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any, Callable

import msgspec
import pytest
from aiohttp import web
from PIL import Image

from gateway.api import InputTokensDetails, OutputTokensDetails, Usage
from gateway.config import ConfigError
from gateway.config_load import parse_config
from gateway.cost import model_cost
from gateway.http_client import HTTPClient
from gateway.provider import (K_CLASSES, Batch, Call, FilePart, GeneratedImage, GridRule, Price, ProviderError,
                              UpstreamHTTP, allowed_url, convert_images, fan_out, image_format, images_result,
                              merged_usage, multipart_body, nearest_aspect, snap_dimensions)
from gateway.mapping import split_counts
from gateway.upstream import parse_upstream
from tests.conftest import AUTH, base_config_yaml

# Gemini's aspect ratios as python-genai documents ImageConfig.aspect_ratio (notes G-SDK-types):
# https://github.com/googleapis/python-genai/blob/main/google/genai/types.py
GEMINI_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9")


def png(width: int, height: int, mode: str = "RGB", color: Any = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


# -- sizes -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "ratio", "size_class", "exact"), [
    ("1024x1024", "1:1", "1K", True),
    ("1536x1024", "3:2", "1K", True),
    ("1024x1536", "2:3", "1K", True),
    ("2048x2048", "1:1", "2K", True),
    ("3840x2160", "16:9", "2K", True),     # 8.3 MP: nearer 4.2 MP (2K) than 16.8 MP (4K) by log
    ("4096x4096", "1:1", "4K", True),
    ("3072x1024", "21:9", "2K", False),    # 3:1 is offered by nobody here: the widest is 21:9
    ("1000x1100", "1:1", "1K", False),
])
def test_nearest_aspect_ratio_and_size_class(size: str, ratio: str, size_class: str, exact: bool) -> None:
    choice = nearest_aspect(size, GEMINI_RATIOS, K_CLASSES)
    assert (choice.aspect_ratio, choice.size_class) == (ratio, size_class)
    assert choice.note is not None and choice.note.startswith(f"size {size} sent as aspect ratio {ratio}, size class")
    assert ("nearest it offers" in choice.note) is (not exact)


def test_auto_or_absent_size_leaves_the_provider_its_default() -> None:
    assert nearest_aspect("auto", GEMINI_RATIOS, K_CLASSES) == (None, None, None)
    assert nearest_aspect(None, GEMINI_RATIOS) == (None, None, None)


def test_a_size_class_tie_goes_to_the_larger_class() -> None:
    # 2048x2048 is exactly between 1 MP and 16 MP classes by log: served at the larger.
    assert nearest_aspect("2048x2048", ("1:1",), {"small": 1 << 20, "large": 1 << 24}).size_class == "large"


@pytest.mark.parametrize(("size", "rule", "expected"), [
    ("1024x1024", GridRule(32, 256, 1440), (1024, 1024, False)),
    ("1000x700", GridRule(32, 256, 1440), (992, 704, True)),
    ("2048x2048", GridRule(32, 256, 1440), (1440, 1440, True)),
    ("3000x1000", GridRule(32, 256, 1440), (1440, 480, True)),
    ("1024x1024", GridRule(32, 256, 1440, max_pixels=1_000_000), (992, 992, True)),
    ("100x100", GridRule(64, 256, 2048), (256, 256, True)),
])
def test_snap_dimensions(size: str, rule: GridRule, expected: tuple[int, int, bool]) -> None:
    got = snap_dimensions(size, rule)
    assert (got.width, got.height, got.note is not None) == expected
    assert got.width % rule.multiple_of == 0 and got.height % rule.multiple_of == 0
    if got.note:
        assert got.note.startswith(f"size {size} sent as {got.width}x{got.height} (edges multiples of")


def test_snap_dimensions_auto() -> None:
    assert snap_dimensions("auto", GridRule()) == (None, None, None)
    assert snap_dimensions(None, GridRule(default=(1024, 768))) == (
        1024, 768, "size auto sent as 1024x768, the default for this model")


# -- n split -----------------------------------------------------------------------------------

def test_split_counts() -> None:
    assert split_counts(10, 4) == [4, 4, 2]
    assert split_counts(3, 1) == [1, 1, 1]
    assert split_counts(2, 4) == [2]


def batch(count: int, usage: Usage | None = None) -> Batch:
    return Batch(images=[GeneratedImage(png(2, 2)) for _ in range(count)], usage=usage)


async def test_fan_out_bounds_concurrency_and_keeps_every_batch() -> None:
    running = peak = 0
    asked: list[int] = []

    async def make(count: int) -> Batch:
        nonlocal running, peak
        asked.append(count)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return batch(count, Usage(input_tokens=10, output_tokens=100 * count, total_tokens=10 + 100 * count))

    call = Call("acme/m", 5.0)
    batches = await fan_out(7, 2, make, call, max_concurrent=3)
    assert sorted(asked) == [1, 2, 2, 2] and peak == 3
    assert sum(len(b.images) for b in batches) == 7
    assert merged_usage(batches) == Usage(input_tokens=40, output_tokens=700, total_tokens=740)
    assert call.notes == ["n=7 asked in 4 calls of at most 2 images (at most 3 at once); each call is billed "
                          "by the provider"]


async def test_one_call_needs_no_split_and_no_note() -> None:
    call = Call("acme/m", 5.0)

    async def make(count: int) -> Batch:
        return batch(count)

    assert len((await fan_out(3, 4, make, call))[0].images) == 3
    assert call.notes is None


async def test_a_failed_call_fails_the_attempt_with_its_classification_and_cancels_the_rest() -> None:
    cancelled = 0

    async def make(count: int) -> Batch:
        nonlocal cancelled
        if count == 1:  # the last, smaller call is refused at once
            raise ProviderError("Slow down.", status=429, code="rate_limit_exceeded", retry_after_s=3.0)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return batch(count)

    with pytest.raises(ProviderError) as caught:
        await fan_out(5, 2, make, Call("acme/m", 30.0))
    err = caught.value
    assert (err.status, err.code, err.retry_after_s) == (429, "rate_limit_exceeded", 3.0)
    assert err.message == "0 of 5 images were made before a call failed: Slow down."
    assert cancelled == 2


async def test_images_made_before_a_refusal_are_counted_and_the_refusal_stays_final() -> None:
    async def make(count: int) -> Batch:
        if count == 1:
            await asyncio.sleep(0.05)
            raise ProviderError("Blocked.", status=400, type="image_generation_user_error",
                                code="moderation_blocked", retryable=False)
        return batch(count)

    with pytest.raises(ProviderError) as caught:
        await fan_out(3, 2, make, Call("acme/m", 30.0))
    assert (caught.value.code, caught.value.retryable) == ("moderation_blocked", False)
    assert caught.value.message.startswith("2 of 3 images were made before a call failed (billed by the provider,")


async def test_return_partial_keeps_what_was_made_with_a_note() -> None:
    async def make(count: int) -> Batch:
        if count == 1:
            raise ProviderError("Upstream hiccup.", status=500)
        return batch(count)

    call = Call("acme/m", 30.0)
    batches = await fan_out(5, 2, make, call, return_partial=True)
    assert sum(len(b.images) for b in batches) == 4
    assert call.notes is not None and call.notes[-1] == (
        "only 4 of 5 images were made (returned as the operator allows): Upstream hiccup.")


async def test_a_short_batch_is_a_failure_unless_partial_sets_are_allowed() -> None:
    refusal = ProviderError("1 image was filtered.", status=400, code="moderation_blocked", retryable=False)

    async def make(count: int) -> Batch:
        return Batch(images=batch(count - 1).images, shortfall=refusal)

    with pytest.raises(ProviderError) as caught:
        await fan_out(3, 4, make, Call("acme/m", 30.0))
    assert caught.value.code == "moderation_blocked" and caught.value.message.startswith("2 of 3 images were made")
    call = Call("acme/m", 30.0)
    assert len((await fan_out(3, 4, make, call, return_partial=True))[0].images) == 2
    assert call.notes == ["only 2 of 3 images were made (returned as the operator allows): 1 image was filtered."]


async def test_the_calls_together_keep_to_the_attempt_time() -> None:
    async def make(count: int) -> Batch:
        await asyncio.sleep(0.3)  # each call alone fits; two waves do not
        return batch(count)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderError) as caught:
        await fan_out(4, 1, make, Call("acme/m", 0.45), max_concurrent=2)
    assert caught.value.timeout and caught.value.retryable
    assert loop.time() - started < 0.6


# -- output format -----------------------------------------------------------------------------

async def test_png_with_transparency_becomes_an_opaque_jpeg_off_the_loop() -> None:
    source = GeneratedImage(png(4, 3, "RGBA", (0, 0, 0, 0)), "image/png")
    call = Call("acme/m", 5.0)
    [out] = await convert_images([source], "jpeg", 60, call)
    assert image_format(out.data) == "jpeg" and out.mime_type == "image/jpeg"
    with Image.open(io.BytesIO(out.data)) as image:
        assert image.size == (4, 3) and image.getpixel((1, 1)) == (255, 255, 255)
    assert call.notes == ["1 image converted from png to jpeg at quality 60 by the gateway"]


async def test_no_conversion_when_the_format_matches_or_none_was_asked() -> None:
    images = [GeneratedImage(png(2, 2)), GeneratedImage(png(2, 2))]
    call = Call("acme/m", 5.0)
    assert await convert_images(images, "png", None, call) == images
    assert await convert_images(images, None, None, call) == images
    assert call.notes is None
    webp = await convert_images(images, "webp", None, call)
    assert [image_format(i.data) for i in webp] == ["webp", "webp"]
    assert call.notes == ["2 images converted from png to webp at quality 100 by the gateway"]


async def test_an_unreadable_image_is_the_upstreams_fault() -> None:
    with pytest.raises(ProviderError) as caught:
        await convert_images([GeneratedImage(b"not an image")], "jpeg", None, Call("acme/m", 5.0))
    assert (caught.value.status, caught.value.code) == (502, "invalid_upstream_response")


# -- host rule ---------------------------------------------------------------------------------

BFL = ("bfl.ai",)


@pytest.mark.parametrize("url", ["https://bfl.ai/x", "https://delivery-eu1.bfl.ai/results/a.png?sig=1",
                                 "https://API.EU.BFL.AI./v1/get_result?id=1"])
def test_urls_under_the_providers_domains_pass(url: str) -> None:
    assert allowed_url(url, BFL, upstream="BFL") == url


@pytest.mark.parametrize(("url", "shown"), [
    ("https://evilbfl.ai/x", "https://evilbfl.ai"),
    ("https://bfl.ai.attacker.example/x?sig=SECRET", "https://bfl.ai.attacker.example"),
    ("http://delivery.bfl.ai/x", "http://delivery.bfl.ai"),
    ("https://169.254.169.254/latest/meta-data", "https://169.254.169.254"),
    ("https://127.0.0.1:8080/admin", "https://127.0.0.1"),
    ("https://user:pw@bfl.ai/x", None),
    ("https://bfl.ai:port/x", None),
    ("file:///etc/passwd", None),
])
def test_urls_elsewhere_are_refused_naming_only_the_host(url: str, shown: str | None) -> None:
    with pytest.raises(ProviderError) as caught:
        allowed_url(url, BFL, upstream="BFL", what="polling URL")
    err = caught.value
    assert (err.status, err.code) == (502, "upstream_url_refused")
    assert "SECRET" not in err.message and "meta-data" not in err.message and "pw" not in err.message
    if shown:
        assert f"BFL handed back a polling URL on {shown}, outside the provider's domains" in err.message


def test_http_only_where_the_plugin_allows_it() -> None:
    assert allowed_url("http://127.0.0.1:9/x", ("127.0.0.1",), upstream="T", schemes=("https", "http"))


def test_domains_the_operator_added_take_http_and_nothing_else_does() -> None:
    assert allowed_url("http://127.0.0.1:9/x", BFL, upstream="BFL", operator_domains=("127.0.0.1",))
    assert allowed_url("https://proxy.internal/r", BFL, upstream="BFL", operator_domains=("proxy.internal",))
    for url in ("http://localhost:9/x", "http://delivery.bfl.ai/x", "ftp://127.0.0.1/x"):
        with pytest.raises(ProviderError):
            allowed_url(url, BFL, upstream="BFL", operator_domains=("127.0.0.1",))


# -- multipart ---------------------------------------------------------------------------------

async def test_multipart_body_is_read_back_by_a_real_server(aiohttp_server: Callable[..., Any]) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        for name, value in form.items():
            seen[name] = (value.filename, value.content_type, value.file.read()) if hasattr(value, "file") else value
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/form", handler)
    server = await aiohttp_server(app)
    image = png(3, 3)
    body, content_type = multipart_body({"prompt": "A cat — naïve", "seed": 42, "flag": True, "ratio": 1.5,
                                         'odd"name': "x", "image": FilePart(image, "in.png", "image/png")})
    assert content_type.startswith("multipart/form-data; boundary=opengateway-")
    client = HTTPClient()
    try:
        answer = await UpstreamHTTP(client).request("POST", str(server.make_url("/form")), upstream="T",
                                                    timeout_s=5, headers={"Content-Type": content_type}, body=body)
    finally:
        await client.close()
    assert answer.status == 200
    assert seen == {"prompt": "A cat — naïve", "seed": "42", "flag": "true", "ratio": "1.5", "odd%22name": "x",
                    "image": ("in.png", "image/png", image)}


# -- the images response -----------------------------------------------------------------------

def test_images_result_is_an_openai_body_the_gateway_accepts() -> None:
    first, second = png(3, 2), png(3, 2)
    usage = Usage(input_tokens=7, output_tokens=1290, total_tokens=1297,
                  input_tokens_details=InputTokensDetails(text_tokens=7),
                  output_tokens_details=OutputTokensDetails(image_tokens=1290))
    result = images_result([GeneratedImage(first), GeneratedImage(second)], usage=usage,
                           upstream_request_id="up-1", headers={"x-a": "b"})
    parsed = parse_upstream(result.body)
    assert len(parsed.data) == 2 and parsed.usage == usage
    body = msgspec.json.decode(result.body)
    assert base64.b64decode(body["data"][1]["b64_json"]) == second
    assert (body["output_format"], body["size"]) == ("png", "3x2")
    assert (result.upstream_request_id, result.headers, result.output_megapixels) == ("up-1", {"x-a": "b"}, 12e-6)


def test_images_result_never_invents_usage_and_refuses_no_images() -> None:
    body = msgspec.json.decode(images_result([GeneratedImage(png(1, 1))]).body)
    assert "usage" not in body and set(body) == {"created", "data", "output_format", "size"}
    with pytest.raises(ProviderError) as caught:
        images_result([])
    assert caught.value.status == 502


def test_merged_usage_is_unknown_when_any_call_reported_none() -> None:
    known = Usage(input_tokens=1, output_tokens=2, total_tokens=3)
    assert merged_usage([batch(1, known), batch(1, None)]) is None
    assert merged_usage([batch(1, known)]) == known


# -- output-based prices -----------------------------------------------------------------------

@pytest.mark.parametrize(("price", "images", "megapixels", "expected", "details"), [
    (Price(per_image=0.04), 3, None, 0.12, {"images": 0.12}),
    (Price(per_megapixel=0.025), 2, 2.097152, 0.0524288, {"megapixels": 0.0524288}),
    (Price(per_image=0.01, per_megapixel=0.02), 1, 1.5, 0.04, {"images": 0.01, "megapixels": 0.03}),
    (Price(per_megapixel=0.025), 1, None, None, None),
    # A per-image price ignores the tokens a provider reports anyway.
    (Price(per_image=0.05, text_input=1.0), 1, None, 0.05, {"images": 0.05}),
])
def test_output_prices(price: Price, images: int, megapixels: float | None, expected: float | None,
                       details: dict[str, float] | None) -> None:
    usage = Usage(input_tokens=10, output_tokens=0, total_tokens=10)
    tokens, cost = model_cost(usage, price, "plugin", "acme/m", images, megapixels)
    assert tokens is not None and tokens.text_input == 10
    assert (cost.cost_usd, cost.cost_usd_details) == (expected, details)
    if expected is None:
        assert cost.reason == "the model 'acme/m' is priced per megapixel but the size of its images is unknown"


async def test_per_image_price_from_config_through_the_app(make_client: Callable[..., Any]) -> None:
    client = await make_client("""
models:
  openai/gpt-image-1:
    targets: [openai-main]
    price: {per_image: 0.25}
""")
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": "openai/gpt-image-1", "prompt": "x", "n": 3})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["extra"]["usage"] == {"cost_usd": 0.75, "cost_usd_details": {"images": 0.75},
                                      "price_source": "config"}


# -- drop_unsupported --------------------------------------------------------------------------

ONLY_AUTO_QUALITY = """
models:
  openai/gpt-image-1:
    targets: [openai-main]
    capabilities: {{qualities: [auto], moderation: [auto]}}
{drop}
"""


async def test_a_field_the_model_cannot_honour_is_refused_before_any_call(make_client: Callable[..., Any],
                                                                          upstream: Any) -> None:
    client = await make_client(ONLY_AUTO_QUALITY.format(drop=""))
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": "openai/gpt-image-1", "prompt": "x", "quality": "high"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "quality"
    assert upstream.received == []


async def test_drop_unsupported_drops_with_a_note_in_the_attempt(make_client: Callable[..., Any],
                                                                 upstream: Any) -> None:
    client = await make_client(ONLY_AUTO_QUALITY.format(drop="    drop_unsupported: [quality, moderation]"))
    resp = await client.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": "x", "quality": "high", "moderation": "low", "size": "1024x1024"})
    body = await resp.json()
    assert resp.status == 200, body
    [sent] = upstream.received
    assert "quality" not in sent.body and "moderation" not in sent.body and sent.body["size"] == "1024x1024"
    [attempt] = body["extra"]["routing"]["attempts"]
    assert attempt["notes"] == [
        "quality=high dropped: openai/gpt-image-1 cannot honour it here "
        "(models.openai/gpt-image-1.drop_unsupported allows this)",
        "moderation=low dropped: openai/gpt-image-1 cannot honour it here "
        "(models.openai/gpt-image-1.drop_unsupported allows this)"]


def test_n_is_never_droppable() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(base_config_yaml("http://127.0.0.1:9/v1", """
models:
  openai/gpt-image-1: {targets: [openai-main], drop_unsupported: [n]}
"""), env={})
    assert caught.value.problems[0].path.startswith("$.models.openai/gpt-image-1")
