"""The ``google`` provider: Gemini image models (``generateContent``) and Imagen (``:predict``), on
the Gemini API (an API key) or on Vertex AI (a regional host, an OAuth bearer from a
service-account key).

The OpenAI request is mapped with the gateway's shared pieces (gateway/mapping/): ``size`` to the
model's nearest aspect ratio and size class (``imageConfig.aspectRatio`` / ``imageSize``, Imagen's
``aspectRatio`` / ``sampleImageSize``), ``n`` to concurrent calls (Gemini makes one image per
call; Imagen up to ``sampleCount`` 4, always sent because it defaults to 4), ``output_format`` by
conversion (Google answers PNG); each adjustment is a note in the attempt. Safety refusals are
OpenAI's 400 ``moderation_blocked``; a bad key (Google's 400 ``API_KEY_INVALID``) is 401. Models,
their capabilities and prices are data: plugins/data/google.yaml.
"""

from __future__ import annotations

import importlib.resources
import time
from typing import Annotated, Any, Literal, Sequence
from urllib.parse import quote

import msgspec

from gateway.provider import (K_CLASSES, AspectChoice, Batch, Call, Capabilities, ImageRequest, ImageResult, Model,
                              Price, Provider, ProviderError, UpstreamHTTP, check_url, convert_images, fan_out,
                              images_result, merged_usage, nearest_aspect)
from plugins.google_oauth import TokenSource
from plugins.google_wire import google_error, read_generate_content, read_predict

__all__ = ["GoogleProvider", "GoogleSettings"]

GEMINI_API_URL = "https://generativelanguage.googleapis.com/v1beta"


class GoogleModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entry of plugins/data/google.yaml."""

    api: Literal["generate_content", "predict"]
    aspect_ratios: list[str]
    image_sizes: list[str] = []
    images_per_call: Annotated[int, msgspec.Meta(ge=1, le=4)] = 1
    response_modalities: tuple[str, ...] = ("TEXT", "IMAGE")
    capabilities: Capabilities
    price: Price | None = None


def catalog() -> dict[str, GoogleModel]:
    raw = importlib.resources.files("plugins").joinpath("data/google.yaml").read_bytes()
    return msgspec.yaml.decode(raw, type=dict[str, GoogleModel])


class GoogleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: ``gemini``: the Gemini API with ``api_key``; ``vertex``: Vertex AI with a service account.
    api: Literal["gemini", "vertex"] = "gemini"
    api_key: str | None = None
    #: Vertex: the service-account key file's JSON (``${GOOGLE_SERVICE_ACCOUNT_KEY}``) or its path.
    service_account_key: str | None = None
    service_account_file: str | None = None
    #: Vertex: the project (default: the key's ``project_id``) and location (``global``, a region
    #: such as ``us-central1``, or the multi-regions ``us`` / ``eu``).
    project: str | None = None
    location: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]+$")] = "global"
    #: Default: the Gemini API's, or the Vertex location's host + ``/v1``.
    base_url: str | None = None
    #: Gateway model ids served; default: every model in plugins/data/google.yaml.
    models: list[str] | None = None
    #: Upstream calls made at once for one request's ``n`` images.
    max_concurrent_calls: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4
    #: When some of the ``n`` calls fail: false (default) fails the attempt, saying how many
    #: images were made; true answers with the images that were made, and a note.
    return_partial: bool = False

    def __post_init__(self) -> None:
        if self.api == "gemini":
            if not self.api_key or self.service_account_key or self.service_account_file:
                raise ValueError("api: gemini takes api_key (and no service account)")
        elif bool(self.service_account_key) == bool(self.service_account_file) or self.api_key:
            raise ValueError("api: vertex takes exactly one of service_account_key and service_account_file "
                             "(and no api_key)")
        unknown = set(self.models or ()) - set(catalog())
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; known: {', '.join(catalog())}")


def vertex_base_url(location: str) -> str:
    """Vertex AI's host for a location (python-genai ``_api_client``): global, multi-region, regional."""
    if location == "global":
        return "https://aiplatform.googleapis.com/v1"
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com/v1"
    return f"https://{location}-aiplatform.googleapis.com/v1"


class GoogleProvider(Provider):
    api_version = 2
    Settings = GoogleSettings
    bounds_its_time = True  # every upstream call gets what is left of call.timeout_s

    def __init__(self, settings: GoogleSettings, http: UpstreamHTTP) -> None:
        super().__init__(settings, http)
        table = catalog()
        self._models = {i: table[i] for i in (settings.models if settings.models is not None else table)}
        self.tokens: TokenSource | None = None
        if settings.api == "gemini":
            base = settings.base_url or GEMINI_API_URL
            self.headers = {"x-goog-api-key": settings.api_key or "", "Content-Type": "application/json"}
            self.prefix = check_url(base.rstrip("/")) + "/models/"
        else:
            key_text = settings.service_account_key
            if key_text is None:
                with open(settings.service_account_file or "", encoding="utf-8") as f:
                    key_text = f.read()
            self.tokens = TokenSource(key_text, http)
            project = settings.project or self.tokens.key.project_id
            if not project:
                raise ValueError("api: vertex needs project (the key file names none)")
            base = settings.base_url or vertex_base_url(settings.location)
            self.headers = {"Content-Type": "application/json"}
            self.prefix = (check_url(base.rstrip("/")) + f"/projects/{quote(project, safe='')}/locations/"
                           f"{settings.location}/publishers/google/models/")

    def models(self) -> Sequence[Model]:
        return [Model(i, m.capabilities, m.price) for i, m in self._models.items()]

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        model = self._models[call.model]
        deadline = time.monotonic() + call.timeout_s
        classes = {c: K_CLASSES[c] for c in model.image_sizes if c in K_CLASSES}
        shape = nearest_aspect(request.size, model.aspect_ratios, classes or None)
        if shape.note:
            call.note(shape.note)
        name = call.model.partition("/")[2]

        async def one_call(count: int) -> Batch:
            return await self._call(model, name, request, shape, count, call, deadline)

        per_call = model.images_per_call if model.api == "predict" else 1
        batches = await fan_out(request.image_count, per_call, one_call, call,
                                max_concurrent=self.settings.max_concurrent_calls,
                                return_partial=self.settings.return_partial)
        images = [image for b in batches for image in b.images]
        images = await convert_images(images, request.output_format, request.output_compression, call)
        request_id = next((b.upstream_request_id for b in batches if b.upstream_request_id), None)
        return images_result(images, usage=merged_usage(batches), upstream_request_id=request_id)

    async def _call(self, model: GoogleModel, name: str, request: ImageRequest, shape: AspectChoice, count: int,
                    call: Call, deadline: float) -> Batch:
        headers = self.headers
        if self.tokens is not None:
            token = await self.tokens.token(_left(deadline, call))
            headers = {**headers, "Authorization": f"Bearer {token}"}
        if model.api == "generate_content":
            url, body = self.prefix + f"{quote(name, safe='.-_')}:generateContent", _gemini_body(model, request, shape)
        else:
            url, body = self.prefix + f"{quote(name, safe='.-_')}:predict", _imagen_body(request, shape, count)
        body.update(call.extra_fields)  # fields the operator allows, forwarded as they are
        status, answer_headers, raw = await self.http.post_json(url, msgspec.json.encode(body), headers,
                                                                upstream="Google", timeout_s=_left(deadline, call))
        if status != 200:
            secrets = (self.settings.api_key or "", self.tokens.current or "" if self.tokens else "")
            raise google_error(status, raw, answer_headers, secrets)
        if model.api == "generate_content":
            return read_generate_content(raw, count)
        return read_predict(raw, count)


def _left(deadline: float, call: Call) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProviderError(f"Google did not answer within {call.timeout_s:.3g} s.", code="timeout", timeout=True,
                            retryable=True)
    return left


def _gemini_body(model: GoogleModel, request: ImageRequest, shape: AspectChoice) -> dict[str, Any]:
    image_config = {}
    if shape.aspect_ratio is not None:
        image_config["aspectRatio"] = shape.aspect_ratio
    if shape.size_class is not None:
        image_config["imageSize"] = shape.size_class
    config: dict[str, Any] = {"responseModalities": model.response_modalities}
    if image_config:  # nested under imageConfig: Google refuses aspectRatio directly in generationConfig
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": [{"text": request.prompt}]}], "generationConfig": config}


def _imagen_body(request: ImageRequest, shape: AspectChoice, count: int) -> dict[str, Any]:
    # sampleCount always: it defaults to 4, and four images would be billed (LiteLLM #3482).
    parameters: dict[str, Any] = {"sampleCount": count, "includeRaiReason": True}
    if shape.aspect_ratio is not None:
        parameters["aspectRatio"] = shape.aspect_ratio
    if shape.size_class is not None:
        parameters["sampleImageSize"] = shape.size_class
    return {"instances": [{"prompt": request.prompt}], "parameters": parameters}
