"""An OpenGateway provider plugin, as small as one can be: ``example/solid-color``.

Everything a plugin needs from the gateway comes from ``gateway.provider``. The gateway builds
one ``ExampleProvider`` per configured instance (``providers: [{plugin: example, settings:
{...}}]``), with its ``Settings`` decoded from the config and ``http``, the gateway's interface to
an upstream (this plugin draws its images itself and needs none).
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import Annotated, Sequence

import msgspec
from PIL import Image, ImageColor

from gateway.provider import Call, Capabilities, ImageRequest, ImageResult, Model, Provider, ProviderError

__all__ = ["ExampleProvider", "ExampleSettings"]
__version__ = "0.2.0"

MODEL_ID = "example/solid-color"


class ExampleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One instance's ``settings:`` block; a bad value is reported by ``opengateway check-config``."""

    #: The colour painted when the prompt names none (``#rrggbb``).
    color: Annotated[str, msgspec.Meta(pattern=r"^#[0-9a-fA-F]{6}$")] = "#3366ff"


class ExampleProvider(Provider):
    # Declared, not inherited: the gateway compares it with the contract version it speaks.
    api_version = 2
    Settings = ExampleSettings

    def models(self) -> Sequence[Model]:
        # The gateway checks every request against these before calling generate(), with
        # OpenAI's wording ("Invalid value: '2048x2048'. Supported values are: ...").
        return [Model(MODEL_ID, Capabilities(
            sizes=("auto", "256x256", "512x512", "1024x1024"),
            qualities=("auto",),
            output_formats=("png",),
            compression_formats=(),
            transparent_formats=(),
            moderation=("auto", "low"),
            max_n=4,
        ))]

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        # A real plugin makes one upstream call here with self.http and call.timeout_s, and turns
        # a failed answer into ProviderError(status=..., code=..., retry_after_s=...). It never
        # validates (the gateway checked the request against models()), retries or falls back.
        size = 256 if request.size in (None, "auto") else int(request.size.partition("x")[0])
        color = _color_in(request.prompt) or ImageColor.getrgb(self.settings.color)[:3]
        n = request.image_count
        try:
            async with asyncio.timeout(call.timeout_s):
                png = await asyncio.to_thread(_solid_png, size, color)  # keep the event loop free
        except TimeoutError:
            raise ProviderError("The example provider ran out of time.", timeout=True, code="timeout") from None
        body = {
            "created": int(time.time()),
            "data": [{"b64_json": png} for _ in range(n)],  # msgspec encodes bytes as base64
            "background": "opaque",
            "output_format": "png",
            "quality": "auto",
            "size": f"{size}x{size}",
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        }
        return ImageResult(body=msgspec.json.encode(body), upstream_request_id=f"example-{uuid.uuid4().hex}")


def _color_in(prompt: str) -> tuple[int, int, int] | None:
    """The first CSS colour name in the prompt ("a red square" -> red), if any."""
    for word in prompt.lower().replace(",", " ").replace(".", " ").split():
        try:
            return ImageColor.getrgb(word)[:3]
        except ValueError:
            continue
    return None


def _solid_png(size: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()
