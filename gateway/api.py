"""msgspec Structs of the gateway's public API: the request body and the response pieces.

``ImageRequest`` is the one request type: the body is decoded into it once (gateway/validation.py),
the request plan (gateway/plan.py) checks it against the target models, and the router hands the
same object to every provider plugin it tries. Values whose allowed set depends on the model
(size, quality, background, output_format, moderation, n's maximum) are plain strings here and
are checked against each target model's capabilities by the plan.

A field the client did not send, or sent as ``null``, is ``None``: OpenAI treats the two alike,
and ``omit_defaults`` leaves both out when the request is encoded for an upstream.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping

import msgspec
from msgspec import Meta

ModelId = Annotated[str, Meta(description="A model id in owner/model form, e.g. openai/gpt-image-2")]

_NO_FIELDS: Mapping[str, Any] = {}


class RequestExtra(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """OpenGateway's own request options, under ``extra``."""

    fallbacks: list[ModelId] | None = None
    #: A deadline for the whole request, shorter than the gateway's configured one.
    deadline_s: Annotated[float, Meta(gt=0, le=3600)] | None = None


class ImageRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """An input image of a JSON edit: a URL (the gateway takes ``data:`` URLs) or an OpenAI file id."""

    image_url: str | None = None
    file_id: str | None = None


class ImageRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """``POST /v1/images/generations`` as the product page documents it, and ``/v1/images/edits``
    (whose input images are held apart: gateway/uploads.py)."""

    model: ModelId
    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    n: Annotated[int, Meta(ge=1, le=10)] | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None = None
    moderation: str | None = None
    user: str | None = None
    stream: bool | None = None
    #: Partial images to stream before the completed one (``stream: true`` only).
    partial_images: Annotated[int, Meta(ge=0, le=3)] | None = None
    response_format: str | None = None
    style: str | None = None
    #: Edits only: how closely to keep the input images' features (``high``, ``low``).
    input_fidelity: str | None = None
    #: Edits sent as JSON only: the input images and mask, by reference (gateway/edit_form.py).
    images: list[ImageRef] | None = None
    mask: ImageRef | None = None
    #: Gateway options; never sent upstream.
    extra: RequestExtra | None = None
    #: Alias of ``extra.fallbacks`` accepted at the top level; never sent upstream.
    fallbacks: list[ModelId] | None = None

    @property
    def image_count(self) -> int:
        """How many images the request asks for (``n``, 1 when absent)."""
        return 1 if self.n is None else self.n

    def openai_body(self, model: str, extra_fields: Mapping[str, Any] = _NO_FIELDS, stream: bool = False) -> bytes:
        """The JSON body for an OpenAI-compatible upstream: ``model`` as the model (the upstream's
        own name for it), the operator-allowed ``extra_fields`` added, the gateway's options left
        out; ``stream`` and ``partial_images`` only for a streaming call (``stream=True``)."""
        if stream:
            upstream = msgspec.structs.replace(self, model=model, extra=None, fallbacks=None, images=None,
                                               mask=None)
        else:
            upstream = msgspec.structs.replace(self, model=model, extra=None, fallbacks=None, stream=None,
                                               partial_images=None, images=None, mask=None)
        if not extra_fields:  # the usual case
            return msgspec.json.encode(upstream)
        body = msgspec.to_builtins(upstream)
        body.update(extra_fields)
        return msgspec.json.encode(body)


class InputTokensDetails(msgspec.Struct, omit_defaults=True):
    text_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, omit_defaults=True):
    image_tokens: int = 0
    text_tokens: int = 0


class Usage(msgspec.Struct, omit_defaults=True):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None


class UpstreamImagesResponse(msgspec.Struct):
    """What the gateway reads of an upstream answer. ``data`` items stay raw JSON: the base64
    payload is scanned, never decoded into Python strings."""

    data: list[msgspec.Raw]
    created: int | None = None
    usage: Usage | None = None
    extra: dict[str, Any] | None = None


class Attempt(msgspec.Struct, omit_defaults=True):
    """One upstream attempt, as reported in ``extra.routing.attempts``."""

    provider: str
    region: str
    status: str  # succeeded | failed | timeout | skipped | cancelled (the client left mid-stream)
    model: str
    target: str
    latency_ms: float = 0.0
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: What the plugin adjusted to serve the request (a size mapped to an aspect ratio, say).
    notes: list[str] | None = None
    #: The attempt failed after the whole request reached the upstream, with no answer back (a
    #: timeout, a reset, a client that left): the upstream may have generated, and billed, it.
    possibly_billed: bool = False
