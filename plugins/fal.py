"""The ``fal`` provider: FLUX models on fal.ai through its synchronous endpoint
(``POST https://fal.run/<endpoint>``, ``Authorization: Key <key_id>:<key_secret>``).

The request is mapped with the gateway's shared pieces: ``size`` to ``image_size``
``{width, height}`` on the model's grid, ``n`` to ``num_images`` (split into concurrent calls
above the model's ``images_per_call``), ``output_format`` sent as fal's (``webp`` made from
``png`` by the gateway), ``enable_safety_checker`` on unless the operator turns it off; each
adjustment is a note. fal answers image URLs: each must be https under ``fal.media`` (fal's CDN)
before it is fetched into ``b64_json``. An image with ``has_nsfw_concepts: true`` is a refusal
(400 ``moderation_blocked``), never fetched, never a 200 with a black image; a 422
``content_policy_violation`` is one too. Models, their rules and prices are data:
plugins/data/fal.yaml.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
from typing import Annotated, Any, Sequence

import msgspec

from gateway.provider import (Batch, Call, Capabilities, GeneratedImage, GridRule, ImageRequest, ImageResult, Model,
                              Price, Provider, ProviderError, UpstreamHTTP, allowed_url, check_url, convert_images,
                              fan_out, image_format, images_result, snap_dimensions)
from plugins.fal_wire import blocked, fal_error, read_output

__all__ = ["FalProvider", "FalSettings"]

FAL_RUN_URL = "https://fal.run"
#: fal's CDN: results are on v3.fal.media, v3b.fal.media (https://fal.ai/docs/model-apis/data-retention).
FAL_MEDIA_DOMAINS = ("fal.media",)
#: The formats fal makes; another one asked is made from PNG by the gateway.
NATIVE_FORMATS = ("jpeg", "png")


class Grid(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    multiple_of: int
    min_edge: int
    max_edge: int
    max_pixels: int | None = None


class FalModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entry of plugins/data/fal.yaml."""

    endpoint: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)+$")]
    images_per_call: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    grid: Grid
    capabilities: Capabilities
    price: Price | None = None


def catalog() -> dict[str, FalModel]:
    raw = importlib.resources.files("plugins").joinpath("data/fal.yaml").read_bytes()
    return msgspec.yaml.decode(raw, type=dict[str, FalModel])


class FalSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: ``<key_id>:<key_secret>`` (FAL_KEY), sent as ``Authorization: Key ...``.
    api_key: str
    base_url: str = FAL_RUN_URL
    #: Gateway model ids served; default: every model in plugins/data/fal.yaml.
    models: list[str] | None = None
    #: Calls made at once for one request's ``n`` images.
    max_concurrent_calls: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4
    #: When some of the ``n`` images fail: false (default) fails the attempt, saying how many
    #: images were made; true answers with the images that were made, and a note.
    return_partial: bool = False
    #: fal's ``enable_safety_checker`` (fal's default is on). Off, fal flags nothing.
    enable_safety_checker: bool = True
    #: More domains result URLs may be on, http allowed (a proxy, a test double).
    extra_domains: list[str] = []

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key is required")
        try:
            check_url(self.base_url)
        except ValueError as exc:
            raise ValueError(f"base_url: {exc}") from None
        unknown = set(self.models or ()) - set(catalog())
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; known: {', '.join(catalog())}")


class FalProvider(Provider):
    api_version = 2
    Settings = FalSettings
    bounds_its_time = True  # every request gets what is left of call.timeout_s

    def __init__(self, settings: FalSettings, http: UpstreamHTTP) -> None:
        super().__init__(settings, http)
        table = catalog()
        self._models = {i: table[i] for i in (settings.models if settings.models is not None else table)}
        self.base = settings.base_url.rstrip("/") + "/"
        self.headers = {"Authorization": f"Key {settings.api_key}", "Content-Type": "application/json"}

    def models(self) -> Sequence[Model]:
        return [Model(i, m.capabilities, m.price) for i, m in self._models.items()]

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        model = self._models[call.model]
        deadline = time.monotonic() + call.timeout_s
        fields: dict[str, Any] = {"prompt": request.prompt,
                                  "enable_safety_checker": self.settings.enable_safety_checker}
        g = model.grid
        dims = snap_dimensions(request.size, GridRule(g.multiple_of, g.min_edge, g.max_edge, g.max_pixels))
        if dims.note:
            call.note(dims.note)
        if dims.width is not None:
            fields["image_size"] = {"width": dims.width, "height": dims.height}
        if request.output_format is not None:
            fields["output_format"] = request.output_format if request.output_format in NATIVE_FORMATS else "png"
        fields.update(call.extra_fields)  # fields the operator allows, forwarded as they are
        url = self.base + model.endpoint

        async def one_call(count: int) -> Batch:
            return await self._call(url, {**fields, "num_images": count}, count, call, deadline)

        batches = await fan_out(request.image_count, model.images_per_call, one_call, call,
                                max_concurrent=self.settings.max_concurrent_calls,
                                return_partial=self.settings.return_partial)
        images = [image for b in batches for image in b.images]
        images = await convert_images(images, request.output_format, request.output_compression, call)
        request_id = next((b.upstream_request_id for b in batches if b.upstream_request_id), None)
        return images_result(images, upstream_request_id=request_id)

    async def _call(self, url: str, fields: dict[str, Any], count: int, call: Call, deadline: float) -> Batch:
        answer = await self.http.post_json(url, msgspec.json.encode(fields), self.headers, upstream="fal",
                                           timeout_s=_left(deadline, call))
        if answer.status != 200:
            raise fal_error(answer.status, answer.body, answer.headers, (self.settings.api_key,))
        output = read_output(answer.body)
        flags = output.has_nsfw_concepts
        kept = [image for i, image in enumerate(output.images) if not (i < len(flags) and flags[i])]
        flagged = len(output.images) - len(kept)
        refusal = None
        if flagged:
            refusal = blocked(f"fal's safety checker flagged {flagged} of {len(output.images)} image"
                              f"{'s' if len(output.images) > 1 else ''} (has_nsfw_concepts).")
            if not kept:
                raise refusal
        if not kept:
            raise ProviderError("fal answered without any image.", status=502, code="invalid_upstream_response",
                                retryable=True)
        # Every URL is checked before any is fetched: one forged URL means none is requested.
        urls = [allowed_url(i.url, FAL_MEDIA_DOMAINS, upstream="fal", what="result URL",
                            operator_domains=self.settings.extra_domains) for i in kept]
        fetched = await asyncio.gather(*(self._fetch(u, call, deadline) for u in urls), return_exceptions=True)
        failure = next((f for f in fetched if isinstance(f, BaseException)), None)
        if failure is not None:
            raise failure
        images = [f for f in fetched if isinstance(f, GeneratedImage)][:count]
        shortfall = None
        if len(images) < count:  # fan_out fails the attempt with it, unless the operator takes partial sets
            shortfall = refusal or ProviderError(f"fal made {len(images)} of the {count} images asked.",
                                                 status=502, code="invalid_upstream_response")
        return Batch(images=images, upstream_request_id=answer.headers.get("x-fal-request-id"), shortfall=shortfall)

    async def _fetch(self, url: str, call: Call, deadline: float) -> GeneratedImage:
        # fal's CDN files are public by default: the key is not sent.
        answer = await self.http.request("GET", url, upstream="fal's CDN", timeout_s=_left(deadline, call))
        if answer.status != 200:
            raise ProviderError(f"fal's result URL answered HTTP {answer.status}.", status=502,
                                code="upstream_result_unavailable", retryable=True)
        if image_format(answer.body) is None:
            raise ProviderError("fal's result URL answered with something that is not a PNG, JPEG or WebP image.",
                                status=502, code="invalid_upstream_response", retryable=True)
        return GeneratedImage(answer.body, answer.headers.get("content-type"))


def _left(deadline: float, call: Call) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProviderError(f"fal did not answer within {call.timeout_s:.3g} s.", code="timeout", timeout=True,
                            retryable=True)
    return left
