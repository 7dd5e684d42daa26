"""Output format conversion for providers that cannot produce the format a client asked for
(Gemini answers PNG whatever ``output_format`` says): Pillow re-encodes in a worker thread so the
event loop keeps serving, and the attempt gets a note saying so."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Sequence

from gateway.mapping.result import GeneratedImage, image_format
from gateway.provider_error import ProviderError

if TYPE_CHECKING:
    from gateway.provider import Call

_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_NAME = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
#: OpenAI's default ``output_compression`` (percent), used when the client sent none.
DEFAULT_QUALITY = 100


async def convert_images(images: Sequence[GeneratedImage], output_format: str | None, compression: int | None,
                         call: Call) -> list[GeneratedImage]:
    """``images`` in ``output_format`` (``png``, ``jpeg`` or ``webp``): those already in it are
    kept as they are, unless ``compression`` asks a lossy format for a quality the provider did
    not apply. With no ``output_format`` nothing is converted (the response's ``output_format``
    says what the provider made). Transparent pixels become white in a JPEG. One note per call
    says how many images were converted and from what."""
    if output_format is None:
        return list(images)
    lossy = output_format in ("jpeg", "webp")
    todo = [i for i, image in enumerate(images)
            if image_format(image.data) != output_format or (lossy and compression is not None)]
    if not todo:
        return list(images)
    quality = DEFAULT_QUALITY if compression is None else compression
    sources = sorted({image_format(images[i].data) or "an unknown format" for i in todo})
    try:
        converted = await asyncio.to_thread(_convert_all, [images[i].data for i in todo], output_format, quality)
    except OSError as exc:  # Pillow could not read what the provider sent
        raise ProviderError(f"The upstream's image could not be converted to {output_format}: {exc}",
                            status=502, code="invalid_upstream_response") from None
    out = list(images)
    for i, data in zip(todo, converted):
        out[i] = GeneratedImage(data, _MIME[output_format])
    what = f"{len(todo)} image{'s' if len(todo) > 1 else ''}"
    quality_note = f" at quality {quality}" if lossy else ""
    call.note(f"{what} converted from {' and '.join(sources)} to {output_format}{quality_note} by the gateway")
    return out


def _convert_all(items: list[bytes], output_format: str, quality: int) -> list[bytes]:
    from PIL import Image  # imported on first use (see gateway/mapping/result.py)

    out = []
    for data in items:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if output_format == "jpeg" and (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info):
                rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                picture = flat
            elif output_format == "jpeg" and image.mode != "RGB":
                picture = image.convert("RGB")
            else:
                picture = image
            buffer = io.BytesIO()
            options = {"quality": quality} if output_format in ("jpeg", "webp") else {}
            picture.save(buffer, _PIL_NAME[output_format], **options)
            out.append(buffer.getvalue())
    return out
