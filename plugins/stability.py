"""The ``stability`` provider: Stability AI's stable-image generate endpoints (Ultra, Core and the
SD3.5 models), ``POST {base_url}/v2beta/stable-image/generate/{ultra|core|sd3}``.

Each call is a multipart/form-data request (``Authorization: Bearer``, ``Accept:
application/json``) for one image, answered as base64 JSON. The OpenAI request is mapped with the
gateway's shared pieces (gateway/mapping/): ``size`` to the nearest of Stability's nine aspect
ratios (there is no 4:3), ``n`` to concurrent calls, ``output_compression`` (and any format the
model is not asked for) by conversion; each adjustment is a note in the attempt. A blurred image
(``finish_reason: CONTENT_FILTERED``) and a 403 ``content_moderation`` are OpenAI's 400
``moderation_blocked``. Models, capabilities and credits are data: plugins/data/stability.yaml.
Stability bills credits; their dollar value is the operator's ``usd_per_credit``.
"""

from __future__ import annotations

import importlib.resources
import math
import time
from typing import Annotated, Iterator, Literal, Sequence

import msgspec

from gateway.provider import (Batch, Call, Capabilities, ImageRequest, ImageResult, Model, Price, Provider,
                              ProviderError, UpstreamHTTP, check_url, convert_images, fan_out, images_result,
                              multipart_body, nearest_aspect, parse_size)
from plugins.stability_wire import UPSTREAM, read_generation, stability_error

__all__ = ["StabilityProvider", "StabilitySettings"]

#: The aspect ratios every generate endpoint takes (``aspect_ratio`` enum).
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
#: ``seed`` range: 0 asks for a random seed.
MAX_SEED = 4_294_967_294

#: A form field's value (Stability's fields are text; numbers are sent as their text).
FieldValue = str | int | float


class StabilityModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entry of plugins/data/stability.yaml."""

    endpoint: Literal["ultra", "core", "sd3"]
    model: str | None = None
    aspect_ratios: tuple[str, ...] = ASPECT_RATIOS
    upstream_formats: tuple[str, ...] = ("png", "jpeg", "webp")
    megapixels: Annotated[float, msgspec.Meta(gt=0)]
    credits: Annotated[float, msgspec.Meta(ge=0)]
    capabilities: Capabilities


def catalog() -> dict[str, StabilityModel]:
    raw = importlib.resources.files("plugins").joinpath("data/stability.yaml").read_bytes()
    return msgspec.yaml.decode(raw, type=dict[str, StabilityModel])


class StabilitySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: str
    base_url: str = "https://api.stability.ai"
    #: Gateway model ids served; default: every model in plugins/data/stability.yaml.
    models: list[str] | None = None
    #: What one Stability credit costs you in USD; models are then priced per image at their
    #: credits times this. Unset: no price (the cost is null with the reason) unless the config
    #: gives a model a ``price:``.
    usd_per_credit: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: Upstream calls made at once for one request's ``n`` images.
    max_concurrent_calls: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4
    #: When some of the ``n`` calls fail: false (default) fails the attempt, saying how many
    #: images were made; true answers with the images that were made, and a note.
    return_partial: bool = False

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key is empty")
        unknown = set(self.models or ()) - set(catalog())
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; known: {', '.join(catalog())}")


class StabilityProvider(Provider):
    api_version = 2
    Settings = StabilitySettings
    bounds_its_time = True  # every upstream call gets what is left of call.timeout_s

    def __init__(self, settings: StabilitySettings, http: UpstreamHTTP) -> None:
        super().__init__(settings, http)
        table = catalog()
        self._models = {i: table[i] for i in (settings.models if settings.models is not None else table)}
        self.prefix = check_url(settings.base_url.rstrip("/")) + "/v2beta/stable-image/generate/"
        self.headers = {"Authorization": f"Bearer {settings.api_key}", "Accept": "application/json"}

    def models(self) -> Sequence[Model]:
        rate = self.settings.usd_per_credit
        return [Model(i, m.capabilities, None if rate is None else Price(per_image=round(m.credits * rate, 10)))
                for i, m in self._models.items()]

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        model = self._models[call.model]
        deadline = time.monotonic() + call.timeout_s
        fields = _form(model, request, call)
        seeds = _seeds(fields.get("seed"), request.image_count, call)
        url = self.prefix + model.endpoint

        async def one_call(count: int) -> Batch:
            form = fields if seeds is None else {**fields, "seed": next(seeds)}
            body, content_type = multipart_body(form)
            answer = await self.http.request("POST", url, upstream=UPSTREAM, timeout_s=_left(deadline, call),
                                             headers={**self.headers, "Content-Type": content_type}, body=body)
            if answer.status != 200:
                raise stability_error(answer.status, answer.body, answer.headers, self.settings.api_key)
            return read_generation(answer.body, answer.headers)

        batches = await fan_out(request.image_count, 1, one_call, call, max_concurrent=self.settings.max_concurrent_calls,
                                return_partial=self.settings.return_partial)
        images = [image for b in batches for image in b.images]
        images = await convert_images(images, request.output_format, request.output_compression, call)
        request_id = next((b.upstream_request_id for b in batches if b.upstream_request_id), None)
        return images_result(images, upstream_request_id=request_id)


def _form(model: StabilityModel, request: ImageRequest, call: Call) -> dict[str, FieldValue]:
    """The form fields of every call for ``request``, the adjustments noted."""
    fields: dict[str, FieldValue] = {"prompt": request.prompt}
    if model.model is not None:
        fields["model"] = model.model
    shape = nearest_aspect(request.size, model.aspect_ratios)
    if shape.aspect_ratio is not None:
        fields["aspect_ratio"] = shape.aspect_ratio
    if shape.note:
        call.note(shape.note)
    wanted = parse_size(request.size)
    if wanted is not None and abs(math.log(wanted[0] * wanted[1] / 1e6 / model.megapixels)) > math.log(1.5):
        call.note(f"size {wanted[0]}x{wanted[1]} is {wanted[0] * wanted[1] / 1e6:.2g} megapixels; this model makes "
                  f"about {model.megapixels:g} at any aspect ratio")
    wanted_format = request.output_format or "png"  # OpenAI's default, and Stability's
    fields["output_format"] = wanted_format if wanted_format in model.upstream_formats else model.upstream_formats[0]
    for name, value in call.extra_fields.items():  # fields the operator allows, forwarded as they are
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ProviderError(f"Invalid type for '{name}': {UPSTREAM} takes a string or a number.", status=400,
                                type="invalid_request_error", code="invalid_type", param=name)
        fields[name] = value
    return fields


def _seeds(seed: FieldValue | None, n: int, call: Call) -> Iterator[int] | None:
    """One seed per call when the client fixed one and asked for several images: the same seed
    would make the same image n times, each billed."""
    if n == 1 or not isinstance(seed, int) or isinstance(seed, bool) or not 0 < seed <= MAX_SEED:
        return None
    seeds = [1 + (seed - 1 + i) % MAX_SEED for i in range(n)]
    call.note(f"seeds {seeds[0]} to {seeds[-1]} sent, one per call (one seed would make the same image {n} times)")
    return iter(seeds)


def _left(deadline: float, call: Call) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProviderError(f"{UPSTREAM} did not answer within {call.timeout_s:.3g} s.", code="timeout",
                            timeout=True, retryable=True)
    return left
