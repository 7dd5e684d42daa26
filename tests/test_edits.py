"""``POST /v1/images/edits`` through the real app: multipart as the official SDK sends it (``image``,
``image[]``, ``mask``), the JSON form with data: URLs, validation in OpenAI's words before any
upstream call, the upload held once and resent by a retry, streaming edits, and the offline
provider's edit inside the mask.

Facts: the SDK sends a list of images as repeated ``image[]`` parts and one image as ``image``
(openai-python ``images.edit``: ``extract_files`` with ``array_format="brackets"``); up to 16
png/webp/jpg images; the mask is a PNG with alpha the size of the first image
(openai-openapi ``CreateImageEditRequest``, 2026-08-21).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest
from PIL import Image

from gateway.config import key_hash
from gateway.config_load import parse_config
from tests.conftest import AUTH, GATEWAY_KEY
from tests.fake_upstream import FakeUpstream, error

PROMPT = "Put a small red cube in the middle."


def png(width: int = 64, height: int = 64, colour: tuple[int, ...] = (30, 120, 200), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), colour).save(out, "PNG")
    return out.getvalue()


def mask_png(width: int = 64, height: int = 64) -> bytes:
    """Opaque everywhere but a transparent square in the middle: the area to edit."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def sdk(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0)


async def test_the_sdk_edits_one_image(client: Any, upstream: FakeUpstream) -> None:
    source = png()
    async with sdk(client) as api:
        raw = await api.images.with_raw_response.edit(model="openai/gpt-image-1", prompt=PROMPT,
                                                      image=("photo.png", source, "image/png"), size="1024x1024",
                                                      input_fidelity="high")
    result = raw.parse()
    assert result.data and result.data[0].b64_json
    [sent] = upstream.received
    assert sent.path == "/v1/images/edits"
    assert sent.body == {"model": "gpt-image-1", "prompt": PROMPT, "size": "1024x1024", "input_fidelity": "high"}
    assert sent.files == [("image", "photo.png", "image/png", source)]  # the same bytes, once
    body = msgspec.json.decode(await raw.http_response.aread())
    assert body["extra"]["routing"]["attempts"][0]["status"] == "succeeded"


async def test_several_images_and_a_mask(client: Any, upstream: FakeUpstream) -> None:
    images = [png(colour=(i * 20, 0, 0)) for i in range(3)]
    async with sdk(client) as api:
        await api.images.edit(model="openai/gpt-image-1", prompt=PROMPT, mask=("mask.png", mask_png(), "image/png"),
                              image=[(f"{i}.png", data, "image/png") for i, data in enumerate(images)])
    [sent] = upstream.received
    assert [f[0] for f in sent.files] == ["image[]"] * 3 + ["mask"]
    assert [f[3] for f in sent.files[:3]] == images


@pytest.mark.parametrize(("count", "status"), [(16, 200), (17, 400)])
async def test_at_most_16_images(client: Any, upstream: FakeUpstream, count: int, status: int) -> None:
    files = [("image[]", png(8, 8)) for _ in range(count)]
    resp = await post_form(client, {"model": "openai/gpt-image-1", "prompt": PROMPT}, files)
    assert resp.status == status, await resp.text()
    if status == 400:
        err = (await resp.json())["error"]
        assert (err["param"], err["code"]) == ("image", "array_above_max_length")
        assert "maximum length 16, but got an array with length 17" in err["message"]
        assert not upstream.received  # refused before any upstream call


@pytest.mark.parametrize(("files", "param", "code"), [
    ([("image", png(64, 64)), ("mask", mask_png(32, 32))], "mask", "invalid_image_dimensions"),
    ([("image", png(64, 64)), ("mask", png(64, 64))], "mask", "invalid_image"),  # no alpha channel
    ([("image", b"%PDF-1.7 not an image")], "image", "invalid_image_format"),
    ([("image", b"\x89PNG\r\n\x1a\n truncated")], "image", "invalid_image"),
    ([], "image", "missing_required_parameter"),
], ids=["mask of another size", "mask without alpha", "not an image", "broken png", "no image"])
async def test_bad_uploads_are_refused_in_openai_words(client: Any, upstream: FakeUpstream,
                                                       files: list[tuple[str, bytes]], param: str, code: str) -> None:
    resp = await post_form(client, {"model": "openai/gpt-image-1", "prompt": PROMPT}, files)
    body = await resp.json()
    assert resp.status == 400, body
    assert (body["error"]["param"], body["error"]["code"]) == (param, code)
    assert not upstream.received


async def test_an_upload_over_the_limit_is_413(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("server: {max_upload_bytes: 20000}\n")
    resp = await post_form(client, {"model": "openai/gpt-image-1", "prompt": PROMPT},
                           [("image", png(64, 64) + b"\0" * 30_000)])
    body = await resp.json()
    assert resp.status == 413 and body["error"]["code"] == "request_too_large"
    assert not upstream.received


async def test_a_field_the_model_lacks_is_refused(client: Any, upstream: FakeUpstream) -> None:
    resp = await post_form(client, {"model": "openai/gpt-image-1-mini", "prompt": PROMPT, "input_fidelity": "high"},
                           [("image", png())])
    body = await resp.json()
    assert resp.status == 400 and (body["error"]["param"], body["error"]["code"]) == (
        "input_fidelity", "unsupported_parameter")
    resp = await client.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": PROMPT, "input_fidelity": "high"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "unknown_parameter"


async def test_an_edit_is_retried_on_a_second_target_with_the_same_upload(
        make_client: Any, upstream: FakeUpstream, tmp_path: Path) -> None:
    client = await make_client("""
server: {upload_memory_bytes: 1024}
router: {max_attempts_per_target: 1}
models:
  openai/gpt-image-1: {targets: [openai-main], fallbacks: [openai/gpt-image-1.5]}
  openai/gpt-image-1.5: {targets: [openai-main]}
""")
    source = png(256, 256)  # above upload_memory_bytes: held in a temporary file
    upstream.script("gpt-image-1", error(503, message="The engine is currently overloaded."))
    async with sdk(client) as api:
        raw = await api.images.with_raw_response.edit(model="openai/gpt-image-1", prompt=PROMPT,
                                                      image=("a.png", source, "image/png"))
    attempts = msgspec.json.decode(await raw.http_response.aread())["extra"]["routing"]["attempts"]
    assert [(a["model"], a["status"]) for a in attempts] == [("openai/gpt-image-1", "failed"),
                                                              ("openai/gpt-image-1.5", "succeeded")]
    assert [r.files[0][3] for r in upstream.received] == [source, source]  # resent whole, from the held copy


async def test_a_streaming_edit(client: Any, upstream: FakeUpstream) -> None:
    async with sdk(client) as api:
        stream = await api.images.edit(model="openai/gpt-image-1", prompt=PROMPT, image=("a.png", png(), "image/png"),
                                       stream=True, partial_images=1)
        events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[-1].model_extra["extra"]["routing"]["attempts"][0]["status"] == "succeeded"
    assert upstream.received[-1].body["stream"] is True


async def test_the_json_form_with_a_data_url(client: Any, upstream: FakeUpstream) -> None:
    source = png()
    url = "data:image/png;base64," + base64.b64encode(source).decode()
    resp = await client.post("/v1/images/edits", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": PROMPT, "images": [{"image_url": url}]})
    assert resp.status == 200, await resp.text()
    assert upstream.received[-1].files == [("image", "images[0]", "image/png", source)]
    for ref in ({"image_url": "https://example.com/a.png"}, {"file_id": "file-abc123"}):
        resp = await client.post("/v1/images/edits", headers=AUTH, json={
            "model": "openai/gpt-image-1", "prompt": PROMPT, "images": [ref]})
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "unsupported_value", body


async def test_the_offline_provider_edits_inside_the_mask(make_client: Any) -> None:
    client = await make_client(config=parse_config(f"""
keys: [{{name: t, hash: "{key_hash(GATEWAY_KEY)}"}}]
providers: [{{id: local, plugin: local, region: local}}]
""", env={}))
    source = png(256, 256, (30, 120, 200))
    async with sdk(client) as api:
        result = await api.images.edit(model="openai/gpt-image-1", prompt="a red cube", mask=("m.png", mask_png(256, 256), "image/png"),
                                       image=("a.png", source, "image/png"))
    edited = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).convert("RGB")
    assert edited.size == (256, 256)
    assert edited.getpixel((5, 5)) == (30, 120, 200)  # outside the mask: as it was
    inside = [edited.getpixel((x, y)) for x in range(80, 176, 8) for y in range(80, 176, 8)]
    assert any(p != (30, 120, 200) for p in inside)  # inside: edited, visibly
    assert result.usage is not None and result.usage.input_tokens_details.image_tokens > 0


async def post_form(client: Any, fields: dict[str, str], files: list[tuple[str, bytes]]) -> Any:
    import aiohttp

    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        form.add_field(name, value)
    for name, data in files:
        form.add_field(name, data, filename=f"{name}.png", content_type="image/png")
    return await client.post("/v1/images/edits", data=form, headers=AUTH)


async def test_models_are_retrieved_by_their_slashed_id_with_capabilities(client: Any) -> None:
    async with sdk(client) as api:
        model = await api.models.retrieve("openai/gpt-image-2")
        listed = [m async for m in api.models.list()]
    assert model.id == "openai/gpt-image-2" and model.owned_by == "openai"
    caps = model.model_extra["capabilities"]
    assert caps["streaming"] is True and caps["edits"] is True and caps["max_n"] == 10
    assert caps["flexible_sizes"]["multiple_of"] == 16
    assert all(m.model_extra["capabilities"]["edits"] for m in listed)
    resp = await client.get("/v1/models/openai/gpt-image-9", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
    # A model the key may not use does not exist for it (the mini-only key of the base config).
    from tests.conftest import OTHER_KEY
    resp = await client.get("/v1/models/openai/gpt-image-2", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert resp.status == 404
    resp = await client.get("/v1/models/openai/gpt-image-1-mini", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert resp.status == 200
