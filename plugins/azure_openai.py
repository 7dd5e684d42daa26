"""The ``azure_openai`` provider: GPT Image models deployed on Azure OpenAI.

Two URL forms: the deployment form
``{endpoint}/openai/deployments/{deployment}/images/generations?api-version=2025-04-01-preview``
and the v1 form ``{endpoint}/openai/v1/images/generations?api-version=preview`` (there the body's
``model`` names the deployment). Each instance maps gateway model ids to its deployments
(``deployments: {openai/gpt-image-1: my-gpt-image-1}``) and authenticates with an ``api-key``
or an Entra ID bearer token. Azure's own differences (no webp, compression for jpeg only) are
declared as capabilities, so the gateway refuses such requests before any call; Azure's error
dialect (``inner_error``, ``ResponsibleAIPolicyViolation``, "retry after N seconds") is
translated to OpenAI's shape and retryability here.
"""

from __future__ import annotations

import re
from typing import AsyncIterator, Literal, Mapping, Sequence
from urllib.parse import quote

import msgspec

from gateway.provider import (Call, Capabilities, EditInputs, Form, ImageRequest, ImageResult, Model, Provider,
                              ProviderError, StreamEvent, UpstreamHTTP, check_url, decode_json, openai_form,
                              openai_image_models, openai_stream, pass_through, retry_after_s)

__all__ = ["AzureOpenAIProvider", "AzureOpenAISettings", "azure_error"]

DEFAULT_API_VERSION = {"deployments": "2025-04-01-preview", "v1": "preview"}

#: Azure's names for a prompt or image stopped by its content filters.
_FILTER_CODES = frozenset({"responsibleaipolicyviolation", "content_filter", "content_policy_violation",
                           "contentfilter", "moderation_blocked"})
#: "Please retry after 7 seconds." / "Try again in 7 seconds." in 429 messages.
_RETRY_TEXT = re.compile(r"(?:retry after|try again in)\s+(\d+(?:\.\d+)?)\s*seconds?", re.IGNORECASE)
#: Numeric or PascalCase codes are Azure's; OpenAI clients expect OpenAI's snake_case codes.
_OPENAI_CODE = re.compile(r"^[a-z][a-z0-9_]*$")


class AzureOpenAISettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: The resource endpoint, e.g. ``https://my-resource.openai.azure.com``.
    endpoint: str
    #: Gateway model id -> deployment name; the models this instance serves.
    deployments: dict[str, str]
    #: One of the two credentials: a resource key (sent as ``api-key``) ...
    api_key: str | None = None
    #: ... or an Entra ID access token (sent as ``Authorization: Bearer``).
    bearer_token: str | None = None
    url_form: Literal["deployments", "v1"] = "deployments"
    #: Default: 2025-04-01-preview for the deployment form, preview for the v1 form.
    api_version: str | None = None

    def __post_init__(self) -> None:
        # Raised as a ValidationError located at this instance's settings by the config loader.
        if bool(self.api_key) == bool(self.bearer_token):
            raise ValueError("set exactly one of api_key and bearer_token")
        if not self.endpoint.startswith(("https://", "http://")):
            raise ValueError("endpoint must be an http(s) URL, e.g. https://my-resource.openai.azure.com")
        if not self.deployments:
            raise ValueError("deployments must map at least one model id to a deployment name")


def azure_capabilities(model_id: str) -> Capabilities:
    """The catalogue's capabilities for ``model_id``, less what Azure does not offer."""
    catalog = openai_image_models()
    caps = catalog[model_id].capabilities if model_id in catalog else Capabilities()
    return msgspec.structs.replace(
        caps,
        output_formats=tuple(f for f in caps.output_formats if f != "webp"),
        compression_formats=tuple(f for f in caps.compression_formats if f == "jpeg"),
        transparent_formats=tuple(f for f in caps.transparent_formats if f != "webp"),
    )


class AzureOpenAIProvider(Provider):
    api_version = 2
    Settings = AzureOpenAISettings
    bounds_its_time = True  # http gets call.timeout_s

    def __init__(self, settings: AzureOpenAISettings, http: UpstreamHTTP) -> None:
        super().__init__(settings, http)
        self.base = check_url(settings.endpoint.rstrip("/") + "/openai")
        self.params = {"api-version": settings.api_version or DEFAULT_API_VERSION[settings.url_form]}
        self.headers = {"Content-Type": "application/json"}
        if settings.api_key:
            self.headers["api-key"] = settings.api_key
        else:
            self.headers["Authorization"] = f"Bearer {settings.bearer_token}"
        self._secret = settings.api_key or settings.bearer_token or ""
        self._models = [Model(m, azure_capabilities(m)) for m in settings.deployments]

    def models(self) -> Sequence[Model]:
        return self._models

    def url(self, deployment: str, operation: str = "generations") -> str:
        """``operation``: ``generations`` or ``edits``."""
        if self.settings.url_form == "v1":
            return f"{self.base}/v1/images/{operation}"
        return f"{self.base}/deployments/{quote(deployment, safe='')}/images/{operation}"

    def _deployment(self, call: Call) -> str:
        deployment = self.settings.deployments.get(call.model)
        if deployment is None:
            raise ProviderError(f"This Azure OpenAI instance has no deployment for '{call.model}'.",
                                status=404, type="invalid_request_error", code="model_not_found")
        return deployment

    async def stream(self, request: ImageRequest, call: Call, inputs: EditInputs | None = None
                     ) -> AsyncIterator[StreamEvent]:
        """Azure streams as OpenAI does: ``stream`` and ``partial_images`` in the body (or the
        edit's form), Server-Sent Events back, on the same endpoints and api-version."""
        deployment = self._deployment(call)
        body: bytes | Form
        if inputs is None:
            url, body, headers = self.url(deployment), request.openai_body(deployment, call.extra_fields,
                                                                            stream=True), self.headers
        else:
            form = openai_form(request, inputs, deployment, call.extra_fields, stream=True)
            url, body, headers = self.url(deployment, "edits"), form, self._form_headers(form.content_type)
        async with self.http.stream("POST", url, upstream="Azure OpenAI", timeout_s=call.timeout_s,
                                    headers=headers, body=body, params=self.params) as answer:
            async for event in openai_stream(answer, self._error):
                yield event

    def _form_headers(self, content_type: str) -> dict[str, str]:
        return {**self.headers, "Content-Type": content_type}

    async def edit(self, request: ImageRequest, inputs: EditInputs, call: Call) -> ImageResult:
        deployment = self._deployment(call)
        form = openai_form(request, inputs, deployment, call.extra_fields)
        status, headers, raw = await self.http.request("POST", self.url(deployment, "edits"), upstream="Azure OpenAI",
                                                       timeout_s=call.timeout_s, body=form, params=self.params,
                                                       headers=self._form_headers(form.content_type))
        if not 200 <= status < 300:
            raise self._error(status, raw, headers)
        request_id = headers.get("apim-request-id") or headers.get("x-request-id")
        return ImageResult(body=raw, upstream_request_id=request_id, headers=pass_through(headers))

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        error = azure_error(status, body, headers)
        if self._secret and self._secret in error.message:  # never echo our credential onwards
            error.message = error.message.replace(self._secret, "[redacted]")
        return error

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        deployment = self._deployment(call)
        # The deployment form ignores the body's model; the v1 form needs the deployment there.
        body = request.openai_body(deployment, call.extra_fields)
        status, headers, raw = await self.http.post_json(self.url(deployment), body, self.headers,
                                                         upstream="Azure OpenAI", params=self.params,
                                                         timeout_s=call.timeout_s)
        if not 200 <= status < 300:
            raise self._error(status, raw, headers)
        request_id = headers.get("apim-request-id") or headers.get("x-request-id")
        return ImageResult(body=raw, upstream_request_id=request_id, headers=pass_through(headers))


class _InnerError(msgspec.Struct):
    code: str | None = None


class _AzureErrorObject(msgspec.Struct):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None
    inner_error: _InnerError | None = None
    innererror: _InnerError | None = None


class _AzureErrorBody(msgspec.Struct):
    error: _AzureErrorObject | None = None
    # API Management's own answers (throttling, bad keys at the gateway) are flat.
    statusCode: int | None = None  # noqa: N815 - Azure's spelling
    message: str | None = None


_error_decoder = msgspec.json.Decoder(_AzureErrorBody)


def azure_error(status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
    """A ProviderError in OpenAI's shape from a non-2xx Azure OpenAI answer."""
    try:
        parsed = decode_json(body, _error_decoder)
    except msgspec.DecodeError:  # not JSON, not this shape, or nested too deeply
        parsed = _AzureErrorBody()
    err = parsed.error or _AzureErrorObject(message=parsed.message or "")
    message = err.message
    if not message:
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"Azure OpenAI answered HTTP {status}" + (f": {snippet}" if snippet else ".")
    code = None if err.code is None else str(err.code)
    inner = err.inner_error or err.innererror
    inner_code = inner.code if inner is not None else None
    wait_s = retry_after_s(headers)
    if {(code or "").lower(), (inner_code or "").lower()} & _FILTER_CODES:
        # A safety block: OpenAI's moderation_blocked, final (another region filters alike).
        return ProviderError(message, status=400, type="image_generation_user_error",
                             code="moderation_blocked", param=err.param, retryable=False)
    if status == 429:
        if wait_s is None and (match := _RETRY_TEXT.search(message)):
            wait_s = float(match[1])
        quota = "quota" in (code or "").lower()
        return ProviderError(message, status=429, type="insufficient_quota" if quota else "requests",
                             code="insufficient_quota" if quota else "rate_limit_exceeded",
                             retry_after_s=wait_s)
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    if code is None or not _OPENAI_CODE.match(code):
        code = {401: "invalid_api_key", 403: "permission_denied", 404: "deployment_not_found",
                408: "timeout"}.get(status)
    return ProviderError(message, status=status, type=err.type or default_type, code=code,
                         param=err.param, retry_after_s=wait_s)
