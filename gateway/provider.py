"""The provider plugin contract: everything a plugin imports from the gateway.

A provider plugin is a class registered in the ``opengateway.providers`` entry-point group. The
gateway builds one instance per configured provider instance, with that instance's ``Settings``
and ``http``, the one interface to the upstream (gateway/upstream_http.py: a pooled HTTP/1.1
client whose transport failures are already ProviderErrors). For each attempt the router calls
``generate(request, call)``: ``request`` is the client's validated request, the same object for
every target the router tries; ``call`` says which model this attempt serves, the time it has
and the operator-allowed extra fields, and collects notes on what the plugin adjusted. A plugin
translates one request into one upstream call: it never validates the request again (the gateway
checked it against the capabilities ``models()`` declares), never retries, never falls back and
never touches metrics (the router and the middleware do).

A plugin for an API that is not OpenAI's maps the request with the shared pieces of
gateway/mapping/, exported here: ``size`` to an aspect ratio and size class or to width/height
(``nearest_aspect``, ``snap_dimensions``), ``n`` split into concurrent calls (``fan_out``),
``output_format`` converted (``convert_images``), URLs it is handed checked against the
provider's domains (``allowed_url``), form bodies (``multipart_body``), and the images turned
into OpenAI's response body (``images_result``). Every adjustment goes to ``call.note()``.

Version 2 of the contract (this one) replaced version 1's ``generate(request, timeout_s)``, the
aiohttp session handed to ``__init__``, and the module-level ``post_json`` / ``read_body``.
"""

from __future__ import annotations

import abc
from typing import Any, AsyncIterator, Callable, ClassVar, Mapping, Sequence

import msgspec

from gateway.api import ImageRequest, InputTokensDetails, OutputTokensDetails, Usage
from gateway.catalog import Capabilities, Model, Price, SizeRule, openai_image_models
from gateway.http_client import check_url
from gateway.mapping import (K_CLASSES, AspectChoice, Batch, Dimensions, FilePart, GeneratedImage, GridRule,
                             allowed_url, convert_images, fan_out, host_allowed, image_format, image_size,
                             images_result, merged_usage, multipart_body, nearest_aspect, parse_size,
                             snap_dimensions)
from gateway.form import Form
from gateway.provider_error import ProviderError
from gateway.tokens import TokenRule, image_tokens
from gateway.upstream import skeleton
from gateway.uploads import EditInputs, InputImage
from gateway.upstream_http import Answer, StreamingAnswer, UpstreamHTTP
from gateway.upstream_json import decode
from gateway.upstream_json import decode as decode_json

# The public plugin API: a plugin needs nothing from the gateway beyond these names, and they
# keep working across releases that keep API_VERSION (tests/test_plugins_contract.py).
__all__ = [
    "API_VERSION",
    "PASS_THROUGH_HEADERS",
    "Answer",
    "Call",
    "Capabilities",
    "EditInputs",
    "Form",
    "ImageRequest",
    "ImageResult",
    "InputImage",
    "InputTokensDetails",
    "Model",
    "OutputTokensDetails",
    "Provider",
    "ProviderError",
    "SizeRule",
    "StreamEvent",
    "TokenRule",
    "StreamingAnswer",
    "UpstreamHTTP",
    "Usage",
    "answered",
    "check_url",
    "decode_json",
    "error_from_openai",
    "image_tokens",
    "openai_image_models",
    "openai_form",
    "openai_stream",
    "pass_through",
    "retry_after_s",
    "scrub",
    "status_error",
    "stream_event",
    # Mapping OpenAI's request onto other APIs (gateway/mapping/).
    "AspectChoice",
    "Batch",
    "Dimensions",
    "FilePart",
    "GeneratedImage",
    "GridRule",
    "K_CLASSES",
    "Price",
    "allowed_url",
    "convert_images",
    "fan_out",
    "host_allowed",
    "image_format",
    "image_size",
    "images_result",
    "merged_usage",
    "multipart_body",
    "nearest_aspect",
    "parse_size",
    "snap_dimensions",
]

#: Bumped when the contract changes incompatibly; the gateway skips plugins built for another.
API_VERSION = 2

_NO_FIELDS: Mapping[str, Any] = {}


class Call:
    """One attempt on one target, as the router hands it to a plugin beside the request.

    ``model`` is the gateway id (``owner/model``) this attempt serves: the model asked, or a
    fallback model. ``timeout_s`` bounds the attempt (hand it to ``http``). ``extra_fields`` are
    the request fields beyond the contract that the operator allows for this model, to forward as
    they are. ``note()`` records an adjustment the plugin made to serve the request (a size mapped
    to an aspect ratio, say); notes are reported in the attempt, so nothing changes silently.
    """

    __slots__ = ("model", "timeout_s", "extra_fields", "notes")

    def __init__(self, model: str, timeout_s: float, extra_fields: Mapping[str, Any] = _NO_FIELDS) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.extra_fields = extra_fields
        self.notes: list[str] | None = None

    def note(self, text: str) -> None:
        if self.notes is None:
            self.notes = []
        self.notes.append(text)


class ImageResult(msgspec.Struct, kw_only=True):
    """One successful upstream answer.

    ``body`` is the upstream JSON, unchanged, in OpenAI's images response shape: the gateway
    validates it, reads ``usage`` from it and splices its own ``extra`` in without re-encoding
    the base64 payload. ``headers`` are upstream headers worth passing to the client
    (``x-ratelimit-*``, ``openai-processing-ms``). ``output_megapixels`` is the area of all the
    images made, for models priced per megapixel (``images_result`` measures it); None if unknown.
    """

    body: bytes
    upstream_request_id: str | None = None
    headers: dict[str, str] = {}
    output_megapixels: float | None = None


class StreamEvent(msgspec.Struct, frozen=True):
    """One event of an image stream, as the client receives it.

    ``type`` is the event's type: ``image_generation.partial_image`` and
    ``image_generation.completed`` (``image_edit.`` for edits). ``data`` is the event's JSON object,
    ``{"type": ..., "b64_json": ..., "created_at", "size", "quality", "background",
    "output_format"}`` plus ``partial_image_index`` (partial) or ``usage`` (completed), relayed to
    the client byte for byte: its base64 is never decoded. ``stream_event`` builds one.
    """

    type: str
    data: bytes


def stream_event(type: str, b64_json: bytes, *, created_at: int, size: str, quality: str, background: str,
                 output_format: str, partial_image_index: int | None = None,
                 usage: Mapping[str, Any] | None = None) -> StreamEvent:
    """A stream event from an image's base64 (for plugins that make the images themselves)."""
    fields: dict[str, Any] = {"created_at": created_at, "size": size, "quality": quality,
                              "background": background, "output_format": output_format}
    if partial_image_index is not None:
        fields["partial_image_index"] = partial_image_index
    if usage is not None:
        fields["usage"] = usage
    rest = msgspec.json.encode(fields)
    return StreamEvent(type, b'{"type":' + msgspec.json.encode(type) + b',"b64_json":"' + b64_json + b'",' + rest[1:])


class Provider(abc.ABC):
    """Base class of every provider plugin (built-in or third party)."""

    #: True when ``generate`` never outlives ``call.timeout_s`` (it hands it to ``http``): the
    #: router then sets no timer of its own around the call. Leave it False if unsure.
    bounds_its_time: ClassVar[bool] = False
    #: The contract version the plugin was written against. Third-party plugins declare it as a
    #: literal (``api_version = 2``): an inherited value would always match, defeating the check.
    api_version: ClassVar[int] = API_VERSION
    #: msgspec Struct describing one configured instance's ``settings:`` block.
    Settings: ClassVar[type[msgspec.Struct]]

    def __init__(self, settings: Any, http: UpstreamHTTP) -> None:
        self.settings = settings
        #: The one way to the upstream; the gateway's pool, shared by every plugin.
        self.http = http

    @abc.abstractmethod
    def models(self) -> Sequence[Model]:
        """The ``owner/model`` ids this instance can serve, with their capabilities."""

    @abc.abstractmethod
    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        """Make one upstream call for ``call.model`` within ``call.timeout_s``, or raise ProviderError."""

    async def edit(self, request: ImageRequest, inputs: EditInputs, call: Call) -> ImageResult:
        """Optional, for models whose capabilities say ``edits``: one upstream edit of
        ``inputs.images`` (and ``inputs.mask``) as ``request`` asks, within ``call.timeout_s``.
        The images are held by the gateway for the whole request: send them with ``Form.file``
        (streamed from where they are held) or read them with ``InputImage.read``."""
        raise NotImplementedError(f"{type(self).__name__} does not edit images")

    def stream(self, request: ImageRequest, call: Call, inputs: EditInputs | None = None
               ) -> AsyncIterator[StreamEvent]:
        """Optional, for models whose capabilities say ``streaming``: an async generator of the
        request's events, partial images then the completed image(s) (``image_edit.`` events when
        ``inputs`` is an edit's). Failing before the first event (ProviderError) lets the router
        try the next target; after it, the client gets an error event. ``call.timeout_s`` bounds
        the wait for each event; closing the generator (the client left) must cancel the upstream
        call."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    async def close(self) -> None:
        """Release what the instance holds (the HTTP pool is the gateway's to close)."""


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` (OpenAI), then ``retry-after`` in seconds; None when absent or unusable."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if 0 <= seconds < 86_400:
                return seconds
    return None


def status_error(status: int, message: str, headers: Mapping[str, str], *, retry_after: float | None = None,
                 retryable: bool | None = None) -> ProviderError:
    """What an upstream's HTTP error status usually means, in OpenAI's words, for a plugin to fall
    back on once it has handled its vendor's own cases (a content refusal, a billing status): 401
    a refused key, 403 a key without permission (both: the router moves to the next target), 404
    a model the upstream lacks, 429 a rate limit (``retry_after``, or the ``retry-after`` header),
    5xx the upstream's failure (retried), any other 4xx the request's fault (400 ``invalid_value``).
    ``message`` should already be scrubbed of credentials (``scrub``)."""
    if status == 401:
        return ProviderError(message, status=401, type="invalid_request_error", code="invalid_api_key")
    if status == 403:
        return ProviderError(message, status=403, type="invalid_request_error", code="permission_denied")
    if status == 404:
        return ProviderError(message, status=404, type="invalid_request_error", code="model_not_found")
    if status == 429:
        return ProviderError(message, status=429, type="requests", code="rate_limit_exceeded",
                             retry_after_s=retry_after if retry_after is not None else retry_after_s(headers))
    if status >= 500:
        return ProviderError(message, status=status, type="server_error", retryable=retryable,
                             retry_after_s=retry_after_s(headers))
    return ProviderError(message, status=400, type="invalid_request_error", code="invalid_value")


def answered(upstream: str, status: int, raw: bytes) -> str:
    """A message for an error answer whose body says nothing readable: its status and the start
    of its body ("Acme answered HTTP 502: <html>...")."""
    snippet = raw[:200].decode("utf-8", "replace").strip()
    return f"{upstream} answered HTTP {status}" + (f": {snippet}" if snippet else ".")


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with the plugin's own credentials replaced (an upstream may quote the key it was
    sent). The gateway redacts everything again before any client or log sees it; this keeps the
    plugin's own messages clean too."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


class _OpenAIErrorObject(msgspec.Struct):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class _OpenAIErrorBody(msgspec.Struct):
    error: _OpenAIErrorObject | None = None


_openai_error_decoder = msgspec.json.Decoder(_OpenAIErrorBody)


def error_from_openai(status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
    """A ProviderError from a non-2xx answer in OpenAI's error dialect (or anything else)."""
    try:
        err = decode(body, _openai_error_decoder).error
    except msgspec.DecodeError:  # not JSON, not this shape, or nested too deeply
        err = None
    if err is None or not err.message:
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"The upstream answered HTTP {status}" + (f": {snippet}" if snippet else ".")
        return ProviderError(message, status=status, type="server_error" if status >= 500 else
                             "invalid_request_error", retry_after_s=retry_after_s(headers))
    return ProviderError(
        err.message, status=status, type=err.type or ("server_error" if status >= 500 else "invalid_request_error"),
        code=None if err.code is None else str(err.code), param=err.param,
        retry_after_s=retry_after_s(headers))


#: Upstream headers worth handing to the client (``ImageResult.headers``).
PASS_THROUGH_HEADERS = ("openai-processing-ms", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                        "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                        "x-ratelimit-reset-tokens")


def pass_through(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream headers a plugin should put in ``ImageResult.headers``."""
    return {k: v for k in PASS_THROUGH_HEADERS if (v := headers.get(k)) is not None}


class _EventHead(msgspec.Struct):
    type: str = ""
    error: _OpenAIErrorObject | None = None


_event_head = msgspec.json.Decoder(_EventHead)


async def openai_stream(answer: StreamingAnswer,
                        errors: Callable[[int, bytes, Mapping[str, str]], ProviderError] = error_from_openai,
                        ) -> AsyncIterator[StreamEvent]:
    """The events of an image stream in OpenAI's dialect (OpenAI, Azure OpenAI, compatible
    servers), for ``Provider.stream``: a non-2xx answer becomes ``errors(status, body, headers)``;
    an error event becomes a ProviderError; each image event is handed on as it came."""
    if not 200 <= answer.status < 300:
        raise errors(answer.status, await answer.read(), answer.headers)
    async for name, data in answer.events():
        if data == b"[DONE]":
            return
        try:  # its base64 is checked by the gateway, once (gateway/streaming.py read_event)
            head = _event_head.decode(skeleton(data, check=False))
        except (msgspec.DecodeError, RecursionError):
            raise ProviderError("The upstream sent a stream event that is not a JSON object.", status=502,
                                code="invalid_upstream_response", retryable=True) from None
        if head.error is not None or name == "error":
            err = head.error or _OpenAIErrorObject(message="The upstream reported an error in its stream.")
            client_fault = err.type in ("invalid_request_error", "image_generation_user_error")
            raise ProviderError(err.message or "The upstream reported an error in its stream.",
                                status=400 if client_fault else 502, type=err.type or "server_error",
                                code=None if err.code is None else str(err.code), param=err.param)
        yield StreamEvent(head.type or name, data)


def openai_form(request: ImageRequest, inputs: EditInputs, model: str,
                extra_fields: Mapping[str, Any] = _NO_FIELDS, stream: bool = False) -> Form:
    """An edit for an OpenAI-compatible ``/images/edits``: the request's fields as form fields
    (``model`` the upstream's name), the images as ``image`` (one) or ``image[]`` (several), the
    mask as ``mask``; the images streamed from where the gateway holds them."""
    fields = msgspec.to_builtins(msgspec.structs.replace(
        request, model=model, extra=None, fallbacks=None, images=None, mask=None,
        stream=True if stream else None, partial_images=request.partial_images if stream else None))
    fields.update(extra_fields)
    form = Form()
    for name, value in fields.items():
        form.field(name, value if isinstance(value, (str, int, float, bool)) else msgspec.json.encode(value).decode())
    name = "image" if len(inputs.images) == 1 else "image[]"
    for image in inputs.images:
        form.file(name, image)
    if inputs.mask is not None:
        form.file("mask", inputs.mask)
    return form
