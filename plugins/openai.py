"""The ``openai`` provider: OpenAI's Images API (or any server that speaks it) over HTTP.

Sends the request with the bare model name (``openai/gpt-image-2`` -> ``gpt-image-2``) through
the gateway's pooled upstream client (``Provider.http``), and turns every non-2xx answer into a
ProviderError in OpenAI's error shape.
"""

from __future__ import annotations

from typing import Sequence

import aiohttp
import msgspec

from gateway.catalog import openai_image_models
from gateway.provider import (Capabilities, ImageRequest, ImageResult, Model, Provider, check_url,
                              error_from_openai, pass_through, post_json)


class OpenAISettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: str
    base_url: str = "https://api.openai.com/v1"
    organization: str | None = None
    project: str | None = None
    #: Model ids served; default: every GPT Image model in the bundled catalogue.
    models: list[str] | None = None


class OpenAIProvider(Provider):
    Settings = OpenAISettings
    bounds_its_time = True  # post_json gets timeout_s

    def __init__(self, settings: OpenAISettings, session: aiohttp.ClientSession) -> None:
        super().__init__(settings, session)
        if not settings.api_key:
            raise ValueError("api_key is empty")
        self.url = check_url(settings.base_url.rstrip("/") + "/images/generations")
        self.headers = {"Authorization": f"Bearer {settings.api_key}", "Content-Type": "application/json"}
        if settings.organization:
            self.headers["OpenAI-Organization"] = settings.organization
        if settings.project:
            self.headers["OpenAI-Project"] = settings.project

    def models(self) -> Sequence[Model]:
        catalog = openai_image_models()
        ids = self.settings.models if self.settings.models is not None else list(catalog)
        return [Model(i, catalog[i].capabilities if i in catalog else Capabilities()) for i in ids]

    async def generate(self, request: ImageRequest, timeout_s: float) -> ImageResult:
        body = request.openai_body(request.model.partition("/")[2])
        status, headers, raw = await post_json(self.http, self.url, body, self.headers, upstream="OpenAI", timeout_s=timeout_s)
        if not 200 <= status < 300:
            raise error_from_openai(status, raw, headers)
        return ImageResult(body=raw, upstream_request_id=headers.get("x-request-id"), headers=pass_through(headers))
