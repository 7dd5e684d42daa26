"""Route handlers: the images endpoint, the model list, health and readiness."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from gateway.appkeys import LIFECYCLE, PLAN, PRINCIPAL, RECORD, RUNTIME
from gateway.cost import model_cost
from gateway.middleware import public
from gateway.middleware.validation import expects_images_request
from gateway.response import images_response


@expects_images_request
async def create_image(request: web.Request) -> web.StreamResponse:
    runtime, plan, record = request[RUNTIME], request[PLAN], request[RECORD]
    started = time.perf_counter()
    try:
        # The router appends to record.attempts, so a failed request's attempts are recorded too.
        routed = await runtime.router.walk(plan.request, plan.candidates, plan.deadline_s, record.attempts)
    finally:
        record.upstream_s = time.perf_counter() - started
    target = routed.target
    record.model_served = target.model
    record.provider, record.region = target.plugin, target.region
    record.usage = routed.parsed.usage
    record.images = len(routed.parsed.data)
    served = runtime.registry.models.get(target.model, plan.route)
    record.tokens, record.cost = model_cost(record.usage, served.price, served.price_source, served.id,
                                            record.images, routed.result.output_megapixels)
    headers = dict(routed.result.headers)  # what the plugin chose to pass on (provider.pass_through)
    if routed.result.upstream_request_id:
        headers["x-upstream-request-id"] = routed.result.upstream_request_id
    extra_out = {"routing": {"attempts": routed.attempts}, "usage": record.cost}  # Structs encode as they are
    response = await images_response(request, routed.result.body, routed.parsed, extra_out, headers)
    record.response_bytes = response.content_length or 0
    return response


class ModelObject(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"


async def list_models(request: web.Request) -> web.Response:
    ids = request[RUNTIME].registry.visible_models(request[PRINCIPAL])
    body = ModelList([ModelObject(i, owned_by=i.partition("/")[0]) for i in ids])
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


@public
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@public
async def readyz(request: web.Request) -> web.Response:
    status, code = ("draining", 503) if request.app[LIFECYCLE].draining else ("ready", 200)
    if request.query.get("verbose") not in ("1", "true"):
        return web.json_response({"status": status}, status=code)
    # Breaker state per target: which deployments this process is routing around, and until when.
    runtime = request[RUNTIME]
    targets = runtime.router.snapshot(t for route in runtime.registry.models.values() for t in route.targets)
    return web.Response(body=msgspec.json.encode({"status": status, "targets": targets}), status=code,
                        content_type="application/json")
