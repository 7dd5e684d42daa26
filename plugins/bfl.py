"""The ``bfl`` provider: Black Forest Labs' FLUX models (FLUX.2 and FLUX1.1 [pro] / Ultra).

BFL's API is asynchronous: a submit (``POST /v1/<model>`` with ``x-key``) answers a task ``id``
and a ``polling_url``; the ``polling_url`` is polled until the task is ``Ready``, whose
``result.sample`` is a signed URL of the image, fetched into bytes. All of it happens within the
attempt's ``call.timeout_s``: polls are spaced by a growing interval and stop when the time runs
out, with a timeout that says how long the task was polled (the gateway never polls beyond the
attempt, as LiteLLM's 300 s loop inside one request does).

The ``polling_url`` (which gets the key) and the result URL are handed back by the upstream, so
both must be https under ``bfl.ai`` (the result also on BFL's Azure blob host when the operator
allows it) before anything is requested from them: a forged URL is refused, not requested.

The request is mapped with the gateway's shared pieces: ``size`` onto the model's width/height
grid or its nearest ``aspect_ratio``, ``n`` into concurrent tasks (one image per task),
``output_format`` sent as is (compression by re-encoding); each adjustment is a note. ``Request
Moderated`` / ``Content Moderated`` are OpenAI's 400 ``moderation_blocked``. Models, their rules
and prices are data: plugins/data/bfl.yaml.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
from typing import Annotated, Any, Sequence

import msgspec

from gateway.provider import (Batch, Call, Capabilities, GeneratedImage, GridRule, ImageRequest, ImageResult, Model,
                              Price, Provider, ProviderError, UpstreamHTTP, allowed_url, check_url, convert_images,
                              fan_out, image_format, images_result, nearest_aspect, snap_dimensions)
from plugins.bfl_wire import (FAILED, MODERATED, READY, bfl_error, finished_without_image, read_polled, read_submitted,
                              sample_url)

__all__ = ["BFLProvider", "BFLSettings"]

BFL_API_URL = "https://api.bfl.ai"
#: Where polling URLs and results may be: BFL's API hosts (api.bfl.ai, api.eu.bfl.ai, ...) and
#: delivery hosts (delivery-eu1.bfl.ai, ...) are all under bfl.ai; BFL asks integrators to allow
#: the wildcard rather than rely on any one host (https://help.bfl.ai/articles/9532536301).
BFL_DOMAINS = ("bfl.ai",)
#: The Azure blob host BFL's older examples deliver results from; only when the operator allows it
#: (any Azure storage account is someone's, so never the whole blob.core.windows.net).
AZURE_DELIVERY_HOST = "bfldeliveryprod.blob.core.windows.net"
#: Each poll waits this much longer than the one before, up to ``max_poll_interval_s``.
POLL_BACKOFF = 1.5


class Grid(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    multiple_of: int
    min_edge: int
    max_edge: int
    max_pixels: int | None = None


class BFLModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One entry of plugins/data/bfl.yaml: a width/height ``grid`` or ``aspect_ratios``."""

    grid: Grid | None = None
    aspect_ratios: list[str] = []
    capabilities: Capabilities
    price: Price | None = None

    def __post_init__(self) -> None:
        if (self.grid is None) == (not self.aspect_ratios):
            raise ValueError("a BFL model takes either grid or aspect_ratios")


def catalog() -> dict[str, BFLModel]:
    raw = importlib.resources.files("plugins").joinpath("data/bfl.yaml").read_bytes()
    return msgspec.yaml.decode(raw, type=dict[str, BFLModel])


class BFLSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: str
    #: ``https://api.bfl.ai`` (global), or a region's: ``https://api.eu.bfl.ai``, ``https://api.us.bfl.ai``.
    base_url: str = BFL_API_URL
    #: Gateway model ids served; default: every model in plugins/data/bfl.yaml.
    models: list[str] | None = None
    #: Tasks submitted at once for one request's ``n`` images (BFL runs 24 tasks per key at once).
    max_concurrent_calls: Annotated[int, msgspec.Meta(ge=1, le=24)] = 4
    #: When some of the ``n`` tasks fail: false (default) fails the attempt, saying how many
    #: images were made; true answers with the images that were made, and a note.
    return_partial: bool = False
    #: The first wait before polling a task, and the longest (each wait is 1.5 times the last).
    poll_interval_s: Annotated[float, msgspec.Meta(ge=0.01, le=10)] = 0.5
    max_poll_interval_s: Annotated[float, msgspec.Meta(ge=0.01, le=30)] = 3.0
    #: Also fetch results from bfldeliveryprod.blob.core.windows.net (BFL's older delivery host).
    allow_azure_delivery: bool = False
    #: More domains polling and result URLs may be on, http allowed (a proxy, a test double).
    extra_domains: list[str] = []

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key is required")
        try:
            check_url(self.base_url)
        except ValueError as exc:
            raise ValueError(f"base_url: {exc}") from None
        if self.max_poll_interval_s < self.poll_interval_s:
            raise ValueError("max_poll_interval_s must be at least poll_interval_s")
        unknown = set(self.models or ()) - set(catalog())
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; known: {', '.join(catalog())}")


class BFLProvider(Provider):
    api_version = 2
    Settings = BFLSettings
    bounds_its_time = True  # every request and every wait gets what is left of call.timeout_s

    def __init__(self, settings: BFLSettings, http: UpstreamHTTP) -> None:
        super().__init__(settings, http)
        table = catalog()
        self._models = {i: table[i] for i in (settings.models if settings.models is not None else table)}
        self.prefix = settings.base_url.rstrip("/") + "/v1/"
        self.key_header = {"x-key": settings.api_key}
        self.result_domains = BFL_DOMAINS + ((AZURE_DELIVERY_HOST,) if settings.allow_azure_delivery else ())

    def models(self) -> Sequence[Model]:
        return [Model(i, m.capabilities, m.price) for i, m in self._models.items()]

    async def generate(self, request: ImageRequest, call: Call) -> ImageResult:
        model = self._models[call.model]
        deadline = time.monotonic() + call.timeout_s
        fields: dict[str, Any] = {"prompt": request.prompt, **_size_fields(model, request.size, call)}
        if request.output_format is not None:
            fields["output_format"] = request.output_format  # BFL makes png, jpeg and webp itself
        fields.update(call.extra_fields)  # fields the operator allows, forwarded as they are
        body = msgspec.json.encode(fields)
        url = self.prefix + call.model.partition("/")[2]
        costs: dict[str, float | None] = {}

        async def one_task(count: int) -> Batch:
            return await self._task(url, body, call, deadline, costs)

        batches = await fan_out(request.image_count, 1, one_task, call, max_concurrent=self.settings.max_concurrent_calls,
                                return_partial=self.settings.return_partial)
        _note_cost(call, [costs.get(b.upstream_request_id or "") for b in batches])
        images = [image for b in batches for image in b.images]
        images = await convert_images(images, request.output_format, request.output_compression, call)
        return images_result(images, upstream_request_id=batches[0].upstream_request_id)

    async def _task(self, url: str, body: bytes, call: Call, deadline: float, costs: dict[str, float | None]) -> Batch:
        """One task: submit, poll until Ready, fetch the image."""
        answer = await self.http.post_json(url, body, {**self.key_header, "Content-Type": "application/json"},
                                           upstream="BFL", timeout_s=_left(deadline, call))
        if answer.status != 200:
            raise bfl_error(answer.status, answer.body, answer.headers, (self.settings.api_key,))
        task = read_submitted(answer.body)
        costs[task.id] = task.cost
        # The polling URL gets the key: checked before it is requested (and never rebuilt: BFL
        # routes each task to its region's host).
        polling_url = allowed_url(task.polling_url, BFL_DOMAINS, upstream="BFL", what="polling URL",
                                  operator_domains=self.settings.extra_domains)
        sample = await self._poll(polling_url, task.id, call, deadline)
        sample = allowed_url(sample, self.result_domains, upstream="BFL", what="result URL",
                             operator_domains=self.settings.extra_domains)
        return Batch(images=[await self._fetch(sample, call, deadline)], upstream_request_id=task.id)

    async def _poll(self, polling_url: str, task_id: str, call: Call, deadline: float) -> str:
        """The result URL of a Ready task; polled with growing waits, never past ``deadline``."""
        started, polls, status = time.monotonic(), 0, "Pending"
        wait_s = self.settings.poll_interval_s
        while True:
            left = deadline - time.monotonic()
            if left > 0:
                await asyncio.sleep(min(wait_s, left))
                left = deadline - time.monotonic()
            if left <= 0:
                raise ProviderError(
                    f"BFL task {task_id} was still '{status}' after {time.monotonic() - started:.3g} s and {polls} "
                    f"poll{'s' if polls != 1 else ''}: the attempt's {call.timeout_s:.3g} s ran out (BFL may still "
                    "finish, and bill, the task).", code="timeout", timeout=True, retryable=True)
            wait_s = min(wait_s * POLL_BACKOFF, self.settings.max_poll_interval_s)
            answer = await self.http.request("GET", polling_url, upstream="BFL", timeout_s=left,
                                             headers=self.key_header)
            polls += 1
            if answer.status != 200:
                raise bfl_error(answer.status, answer.body, answer.headers, (self.settings.api_key,))
            polled = read_polled(answer.body)
            if polled.status == READY:
                return sample_url(polled)
            if polled.status in FAILED or polled.status in MODERATED:
                raise finished_without_image(task_id, polled)
            status = polled.status

    async def _fetch(self, url: str, call: Call, deadline: float) -> GeneratedImage:
        # A signed URL: it carries its own credential, so the key is not sent.
        answer = await self.http.request("GET", url, upstream="BFL's result host", timeout_s=_left(deadline, call))
        if answer.status != 200:
            raise ProviderError(f"BFL's result URL answered HTTP {answer.status} (result URLs expire 10 minutes "
                                "after the task is ready).", status=502, code="upstream_result_unavailable",
                                retryable=True)
        if image_format(answer.body) is None:
            raise ProviderError("BFL's result URL answered with something that is not a PNG, JPEG or WebP image.",
                                status=502, code="invalid_upstream_response", retryable=True)
        return GeneratedImage(answer.body, answer.headers.get("content-type"))


def _size_fields(model: BFLModel, size: str | None, call: Call) -> dict[str, Any]:
    """BFL's size fields for ``size``: ``aspect_ratio`` or ``width``/``height`` (none for auto)."""
    if model.grid is None:
        shape = nearest_aspect(size, model.aspect_ratios)
        if shape.note:
            call.note(shape.note)
        return {} if shape.aspect_ratio is None else {"aspect_ratio": shape.aspect_ratio}
    g = model.grid
    dims = snap_dimensions(size, GridRule(g.multiple_of, g.min_edge, g.max_edge, g.max_pixels))
    if dims.note:
        call.note(dims.note)
    return {} if dims.width is None else {"width": dims.width, "height": dims.height}


def _note_cost(call: Call, costs: list[float | None]) -> None:
    """BFL's own figure for the tasks, beside the gateway's (which comes from the price table)."""
    if costs and all(c is not None for c in costs):
        credits = sum(c for c in costs if c is not None)
        tasks = f"{len(costs)} task{'s' if len(costs) > 1 else ''}"
        call.note(f"BFL reported a cost of {credits:g} credits (USD {credits / 100:.4g}) for {tasks}")


def _left(deadline: float, call: Call) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProviderError(f"BFL did not finish within {call.timeout_s:.3g} s.", code="timeout", timeout=True,
                            retryable=True)
    return left
