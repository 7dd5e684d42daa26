"""msgspec Structs of the gateway's public API: the request body and the response pieces.

The request Struct is the fast path: a valid body decodes in one pass. Values whose allowed set
depends on the model (size, quality, background, output_format, moderation, n's maximum) are
plain strings here and are checked against the target model's capabilities afterwards.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

ModelId = Annotated[str, Meta(description="A model id in owner/model form, e.g. openai/gpt-image-2")]


class RequestExtra(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """OpenGateway's own request options, under ``extra``."""

    fallbacks: list[ModelId] | None | UnsetType = UNSET
    #: A deadline for the whole request, shorter than the gateway's configured one.
    deadline_s: Annotated[float, Meta(gt=0, le=3600)] | None | UnsetType = UNSET


class ImageGenerationRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /v1/images/generations`` as the product page documents it."""

    model: ModelId
    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    n: Annotated[int, Meta(ge=1, le=10)] | None | UnsetType = UNSET
    size: str | None | UnsetType = UNSET
    quality: str | None | UnsetType = UNSET
    background: str | None | UnsetType = UNSET
    output_format: str | None | UnsetType = UNSET
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None | UnsetType = UNSET
    moderation: str | None | UnsetType = UNSET
    user: str | None | UnsetType = UNSET
    stream: bool | None | UnsetType = UNSET
    partial_images: int | None | UnsetType = UNSET
    response_format: str | None | UnsetType = UNSET
    style: str | None | UnsetType = UNSET
    extra: RequestExtra | None | UnsetType = UNSET
    #: Alias of ``extra.fallbacks`` accepted at the top level.
    fallbacks: list[ModelId] | None | UnsetType = UNSET


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
    status: str  # succeeded | failed | timeout | skipped
    model: str
    target: str
    latency_ms: float = 0.0
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
