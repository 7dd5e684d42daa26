"""Images made by a provider that does not answer in OpenAI's shape, turned into OpenAI's images
response body (``ImageResult.body``): base64 encoded once, here; ``usage`` only when reported."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Mapping, Sequence

import msgspec

from gateway.api import InputTokensDetails, OutputTokensDetails, Usage
from gateway.provider_error import ProviderError

if TYPE_CHECKING:
    from gateway.provider import ImageResult

#: Magic numbers of the formats OpenAI's ``output_format`` names.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"))


class GeneratedImage(msgspec.Struct, frozen=True):
    """One image as the provider sent it: the encoded file (decoded from the provider's base64,
    or fetched) and the MIME type it declared, if any (the bytes are what count)."""

    data: bytes
    mime_type: str | None = None


class Batch(msgspec.Struct, kw_only=True):
    """What one upstream call made. ``usage`` is None unless the provider reported tokens.
    ``shortfall`` explains a batch with fewer images than asked (Imagen filters some images out
    and answers with the rest): ``fan_out`` reports it, and raises it unless the operator takes
    partial sets."""

    images: list[GeneratedImage]
    usage: Usage | None = None
    upstream_request_id: str | None = None
    shortfall: ProviderError | None = None


def image_format(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``webp`` from the file's first bytes; None for anything else."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the image's header (Pillow reads no pixels for this)."""
    from PIL import Image, UnidentifiedImageError  # imported on first use: ~8 MB the gateway may never need

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def merged_usage(batches: Sequence[Batch]) -> Usage | None:
    """The sum of every batch's usage; None when any batch reported none (a partial sum would
    understate what was billed)."""
    usages = [b.usage for b in batches]
    if not usages or any(u is None for u in usages):
        return None
    known = [u for u in usages if u is not None]
    if len(known) == 1:
        return known[0]
    ins = [u.input_tokens_details for u in known]
    outs = [u.output_tokens_details for u in known]
    return Usage(
        input_tokens=sum(u.input_tokens for u in known), output_tokens=sum(u.output_tokens for u in known),
        total_tokens=sum(u.total_tokens for u in known),
        input_tokens_details=None if any(d is None for d in ins) else InputTokensDetails(
            text_tokens=sum(d.text_tokens for d in ins if d), image_tokens=sum(d.image_tokens for d in ins if d),
            cached_tokens=sum(d.cached_tokens for d in ins if d)),
        output_tokens_details=None if any(d is None for d in outs) else OutputTokensDetails(
            image_tokens=sum(d.image_tokens for d in outs if d), text_tokens=sum(d.text_tokens for d in outs if d)))


class _Datum(msgspec.Struct):
    b64_json: bytes  # msgspec writes bytes as base64: the one encoding of the image


class _Body(msgspec.Struct, omit_defaults=True):
    created: int
    data: list[_Datum]
    output_format: str | None = None
    size: str | None = None
    usage: Usage | None = None


def images_result(images: Sequence[GeneratedImage], *, usage: Usage | None = None,
                  upstream_request_id: str | None = None, headers: Mapping[str, str] | None = None
                  ) -> ImageResult:
    """An ``ImageResult`` in OpenAI's images response shape: ``created``, ``data[].b64_json``,
    ``output_format`` and ``size`` as read from the images themselves (``size`` when they all
    share one), ``usage`` only when given (it is never made up), and ``output_megapixels``
    measured from the images for per-megapixel prices (None if one cannot be read).
    Raises a 502 ProviderError when there is no image: a success without images is not one."""
    from gateway.provider import ImageResult  # gateway.provider re-exports this module

    if not images:
        raise ProviderError("The upstream answered without any image.", status=502,
                            code="invalid_upstream_response")
    formats = {image_format(i.data) for i in images}
    sizes = [image_size(i.data) for i in images]
    megapixels = None if any(s is None for s in sizes) else sum(w * h for w, h in filter(None, sizes)) / 1e6
    shared = set(sizes)
    body = _Body(created=int(time.time()), data=[_Datum(i.data) for i in images],
                 output_format=formats.pop() if len(formats) == 1 else None,
                 size=f"{sizes[0][0]}x{sizes[0][1]}" if len(shared) == 1 and sizes[0] else None,
                 usage=usage)
    return ImageResult(body=msgspec.json.encode(body), upstream_request_id=upstream_request_id,
                       headers=dict(headers or {}), output_megapixels=megapixels)
