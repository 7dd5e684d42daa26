"""The ``openai`` provider: OpenAI's Images API (or any server that speaks it) over HTTP.

Sends the request with the bare model name (``openai/gpt-image-2`` -> ``gpt-image-2``) through
the gateway's upstream interface (``Provider.http``), and turns every non-2xx answer into a
ProviderError in OpenAI's error shape.
"""

from __future__ import annotations

from typing import AsyncIterator, Sequence

import msgspec

from gateway.provider import (Call, Capabilities, EditInputs, Form, ImageRequest, ImageResult, Model, Provider,
                              StreamEvent, UpstreamHTTP, check_url, error_from_openai, openai_form,
                              openai_image_models, openai_stream, pass_through)


class OpenAISettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: str
    base_url: str = "https://api.openai.com/v1"
    organization: str | None = None
    project: str | None = None
    #: Model ids served; default: every GPT Image model in the bundled catalogue.
    models: list[str] | None = None


class OpenAIProvider(Provider):
    Settings = OpenAISettings
    api_version = 2
    bounds_its_time = True  # http gets call.timeout_s

    def __init__(self, settings: OpenAISettings, http: UpstreamHTTP) -> None:
        super().__init__(settings, http)
        if not settings.api_key:
            raise ValueError("api_key is empty")
        self.url = check_url(settings.base_url.rstrip("/") + "/images/generations")
        self.edits_url = check_url(settings.base_url.rstrip("/") + "/images/edits")
        self.headers = {"Authorization": f"Bearer {settings.api_key}", "Content-Type": "application/json"}
        if settings.organization:
            self.headers["OpenAI-Organization"] = settings.organization
        if settings.project:
            self.headers["OpenAI-Project"] = settings.project

    def models(self) -> Sequence[Model]:
        catalog = openai_image_models()
        ids = self.settings.models if self.settings.models is not None else list(catalog)
        return [Model(i, catalog[i].capabilities if i in catalog else Capabilities()) for i in ids]

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        body = request.openai_body(call.model.partition("/")[2], call.extra_fields)
        status, headers, raw = await self.http.post_json(self.url, body, self.headers, upstream="OpenAI",
                                                         timeout_s=call.timeout_s)
        if not 200 <= status < 300:
            raise error_from_openai(status, raw, headers)
        return ImageResult(body=raw, upstream_request_id=headers.get("x-request-id"), headers=pass_through(headers))

    async def edit(self, request: ImageRequest, inputs: EditInputs, call: Call) -> ImageResult:
        form = openai_form(request, inputs, call.model.partition("/")[2], call.extra_fields)
        status, headers, raw = await self.http.request("POST", self.edits_url, upstream="OpenAI",
                                                       timeout_s=call.timeout_s, body=form,
                                                       headers=self._form_headers(form.content_type))
        if not 200 <= status < 300:
            raise error_from_openai(status, raw, headers)
        return ImageResult(body=raw, upstream_request_id=headers.get("x-request-id"), headers=pass_through(headers))

    def _form_headers(self, content_type: str) -> dict[str, str]:
        return {**self.headers, "Content-Type": content_type}

    async def stream(self, request: ImageRequest, call: Call, inputs: EditInputs | None = None
                     ) -> AsyncIterator[StreamEvent]:
        model = call.model.partition("/")[2]
        body: bytes | Form
        if inputs is None:
            url, body, headers = self.url, request.openai_body(model, call.extra_fields, stream=True), self.headers
        else:
            form = openai_form(request, inputs, model, call.extra_fields, stream=True)
            url, body, headers = self.edits_url, form, self._form_headers(form.content_type)
        async with self.http.stream("POST", url, upstream="OpenAI", timeout_s=call.timeout_s, headers=headers,
                                    body=body) as answer:
            async for event in openai_stream(answer):
                yield event
