"""The provider plugin contract: everything a plugin imports from the gateway.

A provider plugin is a class registered in the ``opengateway.providers`` entry-point group.
The gateway builds one instance per configured provider instance, with that instance's
``Settings`` and the app's shared ``aiohttp.ClientSession``, then gives it ``http``, the
gateway's lean pooled HTTP/1.1 client (gateway/http_client.py) for ``post_json``. A plugin translates one
``ImageRequest`` into one upstream call: it never retries, never falls back and never
touches metrics (the router and the middleware do).
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, ClassVar, Mapping, Sequence

import aiohttp
import msgspec

from gateway.catalog import Capabilities, Model, SizeRule, openai_image_models
from gateway.http_client import HTTPClient, ResponseTooLarge, UpstreamProtocolError, check_url
from gateway.upstream_json import decode

# The public plugin API: a plugin needs nothing from the gateway beyond these names, and they
# keep working across releases that keep API_VERSION (tests/test_plugins_contract.py).
__all__ = [
    "API_VERSION",
    "PASS_THROUGH_HEADERS",
    "Capabilities",
    "ImageRequest",
    "ImageResult",
    "Model",
    "Provider",
    "ProviderError",
    "SizeRule",
    "check_url",
    "error_from_openai",
    "openai_image_models",
    "pass_through",
    "post_json",
    "read_body",
    "retry_after_s",
]

#: Bumped when the contract changes incompatibly; the gateway skips plugins built for another.
API_VERSION = 1

_UNSET = msgspec.UNSET


class ImageRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A validated image-generation request, as a plugin receives it.

    ``model`` is the gateway id (``owner/model``); fields the client did not send are UNSET
    and are not encoded. ``extra_fields`` holds operator-allowed fields beyond the contract.
    """

    model: str
    prompt: str
    n: int | msgspec.UnsetType = _UNSET
    size: str | msgspec.UnsetType = _UNSET
    quality: str | msgspec.UnsetType = _UNSET
    background: str | msgspec.UnsetType = _UNSET
    output_format: str | msgspec.UnsetType = _UNSET
    output_compression: int | msgspec.UnsetType = _UNSET
    moderation: str | msgspec.UnsetType = _UNSET
    user: str | msgspec.UnsetType = _UNSET
    extra_fields: dict[str, Any] = {}

    def openai_body(self, upstream_model: str) -> bytes:
        """The JSON body for an OpenAI-compatible upstream, with ``upstream_model`` as model."""
        if not self.extra_fields:  # the usual case: unset fields and the empty dict are omitted
            return msgspec.json.encode(msgspec.structs.replace(self, model=upstream_model))
        fields = msgspec.structs.asdict(self)
        extra = fields.pop("extra_fields")
        fields["model"] = upstream_model
        body = {k: v for k, v in fields.items() if v is not _UNSET}
        if extra:
            body.update(extra)
        return msgspec.json.encode(body)


class ImageResult(msgspec.Struct, kw_only=True):
    """One successful upstream answer.

    ``body`` is the upstream JSON, unchanged, in OpenAI's images response shape: the gateway
    validates it, reads ``usage`` from it and splices its own ``extra`` in without re-encoding
    the base64 payload. ``headers`` are upstream headers worth passing to the client
    (``x-ratelimit-*``, ``openai-processing-ms``).
    """

    body: bytes
    upstream_request_id: str | None = None
    headers: dict[str, str] = {}


class ProviderError(Exception):
    """An upstream call that did not produce images.

    ``status`` is the upstream HTTP status, or None when no HTTP answer arrived (connection
    refused or reset). ``body`` is the error object in OpenAI's shape (message, type, param,
    code), already translated from the upstream's dialect and with no secrets in it.
    ``retryable`` None lets the router decide from ``status``; ``retry_after_s`` carries the
    upstream's ``retry-after`` / ``retry-after-ms``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str = "server_error",
        code: str | None = None,
        param: str | None = None,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        timeout: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ProviderError(status={self.status}, code={self.code!r}, message={self.message!r})"


class Provider(abc.ABC):
    """Base class of every provider plugin (built-in or third party)."""

    #: True when ``generate`` never outlives its ``timeout_s`` (it hands it to ``post_json``): the
    #: router then sets no timer of its own around the call. Leave it False if unsure.
    bounds_its_time: ClassVar[bool] = False
    #: The contract version the plugin was written against. Third-party plugins declare it as a
    #: literal (``api_version = 1``): an inherited value would always match, defeating the check.
    api_version: ClassVar[int] = API_VERSION
    #: msgspec Struct describing one configured instance's ``settings:`` block.
    Settings: ClassVar[type[msgspec.Struct]]

    #: The gateway's pooled HTTP/1.1 client, set by the gateway right after ``__init__``: pass
    #: it to ``post_json``. ``session`` (aiohttp) stays for calls that need more than a POST.
    http: HTTPClient

    def __init__(self, settings: Any, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session

    @abc.abstractmethod
    def models(self) -> Sequence[Model]:
        """The ``owner/model`` ids this instance can serve, with their capabilities."""

    @abc.abstractmethod
    async def generate(self, request: ImageRequest, timeout_s: float) -> ImageResult:
        """Make one upstream call within ``timeout_s`` seconds, or raise ProviderError."""

    async def close(self) -> None:
        """Release what the instance holds (the shared session is the gateway's to close)."""


#: The largest upstream body ``read_body`` accepts; the gateway sets it from its config.
max_upstream_body_bytes = 268_435_456
#: ``read_body`` lets the event loop run at least once per this many bytes read.
_YIELD_EVERY_BYTES = 1 << 20


async def read_body(response: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """Read an upstream body, refusing one larger than the configured limit (a 502, not an OOM)."""
    limit = max_upstream_body_bytes if limit is None else limit
    if response.content_length is not None and response.content_length > limit:
        raise ProviderError(f"The upstream answer ({response.content_length} bytes) exceeds the "
                            f"gateway's limit of {limit} bytes.", status=502,
                            code="upstream_response_too_large", retryable=False)
    chunks: list[bytes] = []
    size = yielded = 0
    # iter_chunks hands over each buffered socket read as it is (iter_any would join them first):
    # the body is copied once, by the final join.
    async for chunk, _ in response.content.iter_chunks():
        size += len(chunk)
        if size > limit:
            raise ProviderError(f"The upstream answer exceeds the gateway's limit of {limit} bytes.",
                                status=502, code="upstream_response_too_large", retryable=False)
        chunks.append(chunk)
        if size - yielded >= _YIELD_EVERY_BYTES:
            # A buffered reader answers without suspending, and each read inflates the next piece
            # of a compressed body: without this, a gzip bomb inflated to the limit in one go.
            yielded = size
            await asyncio.sleep(0)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


async def post_json(client: HTTPClient | aiohttp.ClientSession, url: str, body: bytes,
                    headers: Mapping[str, str], *, upstream: str, params: Mapping[str, str] | None = None,
                    timeout_s: float | None = None) -> tuple[int, Mapping[str, str], bytes]:
    """POST a JSON body and read the whole answer, bounded by ``server.max_upstream_body_bytes``:
    the status, headers (case-insensitive) and body. ``client`` is ``Provider.http`` (or an
    aiohttp session). ``timeout_s`` (``generate``'s) bounds the call. A transport failure or a
    timeout becomes a retryable ProviderError naming ``upstream``."""
    try:
        if isinstance(client, HTTPClient):
            return await client.post(url, body, headers, params, timeout_s)
        async with client.post(url, params=params, data=body, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, resp.headers, await read_body(resp)
    except ResponseTooLarge as exc:
        size = f" ({exc.size} bytes)" if exc.size is not None else ""
        raise ProviderError(f"The {upstream} answer{size} exceeds the gateway's limit of {exc.limit} bytes.",
                            status=502, code="upstream_response_too_large", retryable=False) from None
    except asyncio.TimeoutError:
        within = f" within {timeout_s:.3g} s" if timeout_s is not None else " in time"
        raise ProviderError(f"{upstream} did not answer{within}.", code="timeout", timeout=True,
                            retryable=True) from None
    except UpstreamProtocolError as exc:
        raise ProviderError(f"{upstream} sent an invalid HTTP answer: {exc}", code="connection_error",
                            retryable=True) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ProviderError(f"Could not reach {upstream}: {type(exc).__name__}.", code="connection_error",
                            retryable=True) from None
