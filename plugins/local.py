"""The embedded offline provider (plugin ``local``): real images, no network, no key.

The gateway serves ``openai/*`` with it when no provider key is configured, so the seed's curl
works offline. A prompt that names simple shapes, colours, counts, a background and places ("A
small red cube on a white background.") is drawn as it says (plugins/local_scene.py reads it,
plugins/local_paint.py draws it); any other is drawn from a hash of the prompt (a gradient, a few
shapes and the prompt's text). The same request always gets the same bytes; the body is
OpenAI's images response with gpt-image-1-style ``usage``, so metrics, cost and the usage log
see real numbers.

Demo and testing aid for retries, breakers and fallbacks: a prompt that contains the marker
``[local:fail-<status>]`` (e.g. ``[local:fail-503]``) fails with that HTTP status (400..599) and
OpenAI's error shape: 429 → type ``requests``, code ``rate_limit_exceeded``; 5xx →
``server_error``; 400 → type ``image_generation_user_error``, code ``moderation_blocked``.
``latency_s`` emulates a slow upstream; a call that would outlast ``timeout_s`` fails as a
timeout (``ProviderError(timeout=True)``) once ``timeout_s`` has passed.
"""

from __future__ import annotations

import asyncio
import base64
import colorsys
import functools
import hashlib
import io
import math
import re
import textwrap
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, Sequence

import msgspec

from gateway.provider import (Call, Capabilities, EditInputs, ImageRequest, ImageResult, Model, Provider,
                              ProviderError, StreamEvent, image_tokens, openai_image_models, stream_event)
from plugins.local_scene import read_scene

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FAILURES", "LocalProvider"]

#: What ``[local:fail-<status>]`` answers: status → (type, code, message), in OpenAI's words.
#: Any other 5xx answers like 500; any other 4xx is an ``invalid_request_error``.
FAILURES: dict[int, tuple[str, str | None, str]] = {
    400: ("image_generation_user_error", "moderation_blocked", "Rejected by the safety system"),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests"),
    500: ("server_error", None, "The server had an error while processing your request"),
}

_FAIL_MARKER = re.compile(r"\[local:fail-(\d{3})\]")
_SIZE = re.compile(r"([1-9]\d{0,4})x([1-9]\d{0,4})")
_MAX_PIXELS = 8_294_400  # gpt-image-2's ceiling; also bounds the CPU one request can cost
_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    # Speed over size: a demo image need not be small, and level 1 saves ~30% of the render.
    "png": ("PNG", {"compress_level": 1}),
    "jpeg": ("JPEG", {}),
    "webp": ("WEBP", {"method": 0}),  # libwebp's fastest method
}


class LocalProvider(Provider):
    """Draws images in-process; used when no upstream is configured, and in demos and tests."""

    api_version = 2

    class Settings(msgspec.Struct, forbid_unknown_fields=True):
        #: Ids to serve; None serves every GPT Image model in the catalog.
        models: list[str] | None = None
        #: Artificial delay per request, to demo timeouts and latency metrics.
        latency_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def models(self) -> Sequence[Model]:
        catalog = openai_image_models()
        ids = list(catalog) if self.settings.models is None else self.settings.models
        # OpenAI's lifecycle: a demo on this provider behaves as OpenAI would (a shut-down model 404s).
        return [Model(i, catalog[i].capabilities, lifecycle=catalog[i].lifecycle.get("openai")) if i in catalog
                else Model(i, Capabilities()) for i in ids]

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        job = _Job.of(request, call)
        await self._wait(job, call)
        try:
            async with asyncio.timeout(call.timeout_s):
                # One thread per image: Pillow releases the GIL while drawing and encoding.
                renders = (asyncio.to_thread(_render, job.prompt, job.width, job.height, job.fmt, job.transparent,
                                             job.compression, index) for index in range(job.n))
                images = await asyncio.gather(*renders)
        except TimeoutError:
            raise _timeout(call) from None
        body = {
            "created": int(time.time()),
            "data": [{"b64_json": image} for image in images],  # msgspec writes bytes as base64, no copy
            **job.answer_fields(),
            "usage": job.usage(images=job.n, with_input=True),
        }
        return ImageResult(body=msgspec.json.encode(body), upstream_request_id=f"local-{uuid.uuid4().hex}")

    async def edit(self, request: ImageRequest, inputs: EditInputs, call: Call) -> ImageResult:
        """A visible, deterministic edit inside the mask's transparent area (the whole first image
        without a mask): the prompt's scene drawn there (plugins/local_paint.py ``apply_edit``)."""
        job = _Job.of(request, call, inputs)
        await self._wait(job, call)
        first, mask = inputs.images[0].read(), inputs.mask.read() if inputs.mask is not None else None

        def render(index: int) -> bytes:
            return _encode(_edited(first, mask, job, index), job.fmt, job.compression)

        try:
            async with asyncio.timeout(call.timeout_s):
                images = await asyncio.gather(*(asyncio.to_thread(render, index) for index in range(job.n)))
        except TimeoutError:
            raise _timeout(call) from None
        body = {"created": int(time.time()), "data": [{"b64_json": image} for image in images],
                **job.answer_fields(), "usage": job.usage(images=job.n, with_input=True)}
        return ImageResult(body=msgspec.json.encode(body), upstream_request_id=f"local-{uuid.uuid4().hex}")

    async def stream(self, request: ImageRequest, call: Call, inputs: EditInputs | None = None
                     ) -> AsyncIterator[StreamEvent]:
        """Progressive renders: each image is drawn once, then sent coarse to sharp as its partial
        images (plugins/local_paint.py ``partial``), then whole, with that image's usage (each
        partial image costs 100 output tokens more, as OpenAI bills them). An edit streams alike."""
        from plugins.local_paint import partial

        job = _Job.of(request, call, inputs)
        await self._wait(job, call)
        kind = "image_generation" if inputs is None else "image_edit"
        first = inputs.images[0].read() if inputs is not None else None
        mask = inputs.mask.read() if inputs is not None and inputs.mask is not None else None
        partials = request.partial_images or 0
        created = int(time.time())
        size, quality, background = f"{job.width}x{job.height}", job.quality, job.answer_fields()["background"]

        def coarse(image: Image.Image, step: int) -> bytes:
            return _encode(partial(image, step, partials), job.fmt, job.compression)

        for index in range(job.n):
            if first is None:
                image = await asyncio.to_thread(_draw, job.prompt, job.width, job.height, job.transparent, index)
            else:
                image = await asyncio.to_thread(_edited, first, mask, job, index)
            for step in range(partials):
                data = base64.b64encode(await asyncio.to_thread(coarse, image, step))
                yield stream_event(f"{kind}.partial_image", data, created_at=created, size=size,
                                   quality=quality, background=background, output_format=job.fmt,
                                   partial_image_index=step)
            data = base64.b64encode(await asyncio.to_thread(_encode, image, job.fmt, job.compression))
            yield stream_event(f"{kind}.completed", data, created_at=created, size=size, quality=quality,
                               background=background, output_format=job.fmt,
                               usage=job.usage(images=1, with_input=index == 0, partials=partials))

    async def _wait(self, job: _Job, call: Call) -> None:
        """The configured latency, then a simulated failure if the prompt asks for one."""
        if self.settings.latency_s:
            if self.settings.latency_s > call.timeout_s:
                await asyncio.sleep(call.timeout_s)
                raise _timeout(call)
            await asyncio.sleep(self.settings.latency_s)
        _raise_simulated_failure(job.prompt)


class _Job(msgspec.Struct, frozen=True):
    """What to draw for a request (the gateway has checked every value against the capabilities)."""

    prompt: str
    #: The model served (its token rule prices the answer).
    model: str
    width: int
    height: int
    fmt: str
    quality: str
    transparent: bool
    n: int
    compression: int
    #: An edit's input images, by their sizes (their input tokens).
    inputs: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, request: ImageRequest, call: Call, inputs: EditInputs | None = None) -> _Job:
        if inputs is not None and request.size in (None, "auto"):
            first = inputs.images[0]  # an edit keeps its image's size, within what this provider draws
            scale = min(1.0, math.sqrt(_MAX_PIXELS / (first.width * first.height)))
            width, height = max(1, int(first.width * scale)), max(1, int(first.height * scale))
        else:
            width, height = _parse_size(request.size)
        fmt = request.output_format or "png"
        return cls(prompt=request.prompt, model=call.model, width=width, height=height, fmt=fmt,
                   quality=request.quality if request.quality not in (None, "auto") else "medium",
                   transparent=request.background == "transparent" and fmt != "jpeg",  # JPEG has no alpha
                   n=request.image_count,
                   # OpenAI's output_compression defaults to 100 (best) and maps onto Pillow's quality.
                   compression=100 if request.output_compression is None else request.output_compression,
                   inputs=tuple((i.width, i.height) for i in inputs.images) if inputs is not None else ())

    def answer_fields(self) -> dict[str, str]:
        return {"background": "transparent" if self.transparent else "opaque", "output_format": self.fmt,
                "quality": self.quality, "size": f"{self.width}x{self.height}"}

    def usage(self, images: int, with_input: bool, partials: int = 0) -> dict[str, Any]:
        text_tokens = max(1, math.ceil(len(self.prompt) / 4)) if with_input else 0  # ~4 characters a token
        # An edit's input images: counted like a low-quality output of their size. OpenAI publishes
        # no formula for input image tokens; this is the demo provider's estimate.
        input_images = sum(_image_tokens(self.model, "low", w, h) for w, h in self.inputs) if with_input else 0
        input_tokens = text_tokens + input_images
        output_tokens = images * (_image_tokens(self.model, self.quality, self.width, self.height) + 100 * partials)
        return {"input_tokens": input_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": input_images},
                "output_tokens": output_tokens,
                "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
                "total_tokens": input_tokens + output_tokens}


def _timeout(call: Call) -> ProviderError:
    return ProviderError(f"The local provider did not answer within {call.timeout_s:g} s.", status=None,
                         timeout=True)


#: The token rule for a model the catalogue does not know (gpt-image-1's table).
_DEFAULT_RULE = "openai/gpt-image-1"


def _image_tokens(model: str, quality: str, width: int, height: int) -> int:
    """Output tokens of one image, by the catalogue's rule for ``model`` (gateway/tokens.py):
    gpt-image-2's formula for gpt-image-2, the published table for the older models."""
    catalog = openai_image_models()
    rule = (catalog.get(model) or catalog[_DEFAULT_RULE]).tokens
    count = image_tokens(rule, f"{width}x{height}", quality) if rule is not None else None
    return count if count is not None else 0


def _parse_size(size: str | None) -> tuple[int, int]:
    if size is None or size == "auto":
        return 1024, 1024
    match = _SIZE.fullmatch(size)
    if match and int(match[1]) * int(match[2]) <= _MAX_PIXELS:
        return int(match[1]), int(match[2])
    # Only reachable when an operator's `capabilities` allow more than this provider can draw:
    # the bound keeps one request's CPU and memory in check.
    raise ProviderError(f"The local provider draws at most {_MAX_PIXELS:,} pixels; '{size}' is more.",
                        status=400, type="invalid_request_error", code="invalid_value", param="size",
                        retryable=False)


def _raise_simulated_failure(prompt: str) -> None:
    match = _FAIL_MARKER.search(prompt)
    if match is None or not 400 <= (status := int(match[1])) <= 599:
        return
    default = FAILURES[500] if status >= 500 else ("invalid_request_error", None, f"HTTP {status}")
    type_, code, message = FAILURES.get(status, default)
    raise ProviderError(f"{message} (simulated by {match[0]}).", status=status, type=type_, code=code)


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


# Bounded (a 1024x1024 image is 30-150 KB): a repeated demo prompt is served from memory.
@functools.lru_cache(maxsize=32)
def _render(
    prompt: str, width: int, height: int, fmt: str, transparent: bool, compression: int, index: int
) -> bytes:
    return _encode(_draw(prompt, width, height, transparent, index), fmt, compression)


def _draw(prompt: str, width: int, height: int, transparent: bool, index: int) -> Image.Image:
    """The picture: the scene the prompt names, or, when it names no shape, the abstract one."""
    # Imported here: Pillow and its codecs are ~8 MB of RSS that a gateway which never uses the
    # local provider (every plugin module is imported at start-up) should not carry.
    from plugins.local_paint import paint

    scene = read_scene(prompt)
    if scene.objects:
        return paint(scene, width, height, transparent=transparent, index=index)
    return _abstract(prompt, width, height, transparent, index)


def _edited(first: bytes, mask: bytes | None, job: _Job, index: int) -> Image.Image:
    """The edit of an input image (its bytes; the mask's), at the job's size and alpha."""
    from PIL import Image as PILImage

    from plugins.local_paint import apply_edit

    with PILImage.open(io.BytesIO(first)) as source:
        source.load()
        mask_image = PILImage.open(io.BytesIO(mask)) if mask is not None else None
        edited = apply_edit(source, mask_image, job.prompt, index=index)
    if edited.size != (job.width, job.height):
        edited = edited.resize((job.width, job.height), PILImage.Resampling.LANCZOS)
    if not job.transparent and edited.mode == "RGBA":
        flat = PILImage.new("RGB", edited.size, (255, 255, 255))
        flat.paste(edited, mask=edited.getchannel("A"))
        edited = flat
    return edited


def _encode(canvas: Image.Image, fmt: str, compression: int) -> bytes:
    pil_format, options = _FORMATS[fmt]
    if fmt != "png":
        options = {**options, "quality": compression}
    out = io.BytesIO()
    canvas.save(out, pil_format, **options)
    return out.getvalue()


def _abstract(prompt: str, width: int, height: int, transparent: bool, index: int) -> Image.Image:
    """A gradient, shapes and the prompt as a caption, all seeded from the prompt's hash."""
    from PIL import Image, ImageDraw, ImageFont

    seed = hashlib.blake2b(prompt.encode(), digest_size=32).digest()
    # The index only nudges the shapes, so the n images of one request look like siblings.
    nudge = hashlib.blake2b(index.to_bytes(2, "big"), key=seed, digest_size=16).digest()
    hue, unit = seed[0] / 256, min(width, height)

    # A 2x2 image upscaled bilinearly is a four-corner gradient in a few ms, with no pixel loop;
    # the box maps the source pixel centres onto the output's corners.
    corners = Image.new("RGB", (2, 2))
    corners.putdata([_rgb(hue + 0.08 * k, 0.25 + seed[1 + k] / 850, 0.97) for k in range(4)])
    canvas = corners.resize((width, height), Image.Resampling.BILINEAR, box=(0.5, 0.5, 1.5, 1.5))
    draw = ImageDraw.Draw(canvas, "RGBA")  # "RGBA" on an RGB image blends translucent fills
    # With a transparent background, everything drawn is drawn again into the alpha mask.
    mask = Image.new("L", (width, height), 0) if transparent else None
    targets = [(draw, None)] + ([(ImageDraw.Draw(mask), 255)] if mask is not None else [])

    for k in range(4):
        x, y, r, tint = seed[8 + 4 * k : 12 + 4 * k]
        cx = width * (0.15 + 0.7 * x / 255) + unit * (nudge[2 * k] - 128) / 2560
        cy = height * (0.12 + 0.5 * y / 255) + unit * (nudge[2 * k + 1] - 128) / 2560
        radius = unit * (0.08 + 0.14 * r / 255)
        colour = (*_rgb(hue + 0.4 + 0.1 * k, 0.55 + tint / 1000, 0.85), 210)
        # Circles, triangles and squares. Single-fill primitives only: rounded_rectangle draws
        # overlapping pieces, which show as seams under a translucent fill.
        sides = (0, 3, 4)[(seed[7] + k) % 3]
        for target, fill in targets:
            if sides:
                target.regular_polygon((cx, cy, radius), sides, rotation=x, fill=fill or colour)
            else:
                target.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill or colour)

    # The prompt, wrapped on a light panel at the bottom, so each image says what it was asked.
    font_size = max(10, unit // 28)
    font = ImageFont.load_default(size=font_size)
    margin, pad, line_height = round(unit * 0.05), round(unit * 0.025), round(font_size * 1.3)
    text = " ".join(prompt.split())[:600]  # collapses newlines; bounds the work for 32k prompts
    avail = width - 2 * (margin + pad)
    max_lines = min(4, height // 2 // line_height)  # the panel never covers more than half
    if text and max_lines and avail > 4 * font_size:
        char_width = font.getlength(text[:100]) / len(text[:100])
        columns = max(1, int(avail / char_width))
        lines = textwrap.wrap(text, columns, max_lines=max_lines, placeholder=" ...")
        top = height - margin - 2 * pad - len(lines) * line_height
        box = (margin, top, width - margin, height - margin)
        # Pasted through its own small mask: seamless, unlike a translucent rounded_rectangle.
        panel = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
        ImageDraw.Draw(panel).rounded_rectangle((0, 0, *panel.size), radius=pad, fill=190)
        canvas.paste((255, 255, 255), box, panel)
        if mask is not None:
            mask.paste(255, box, panel)
        for target, fill in targets:
            for i, line in enumerate(lines):
                xy = (margin + pad, top + pad + i * line_height)
                target.text(xy, line, font=font, fill=fill or _rgb(hue, 0.6, 0.25))
    if mask is not None:
        canvas.putalpha(mask)
    return canvas
