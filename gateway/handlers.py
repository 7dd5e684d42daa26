"""Route handlers: the images endpoint, the model list, health and readiness."""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiohttp import web

from gateway import streaming
from gateway.api import Usage
from gateway.appkeys import CAPTURE, LIFECYCLE, PLAN, RECORD, RUNTIME
from gateway.cost import estimate_usd, model_cost, possibly_billed
from gateway.errors import GatewayError
from gateway.middleware import public
from gateway.middleware.body import expects_edit_request, expects_images_request
from gateway.plan import Plan
from gateway.provider import ProviderError
from gateway.record import RequestRecord
from gateway.registry import ModelRoute
from gateway.response import images_response
from gateway.router import Routed
from gateway.runtime import Runtime


@expects_images_request
async def create_image(request: web.Request) -> web.StreamResponse:
    runtime, plan, record = request[RUNTIME], request[PLAN], request[RECORD]
    started = time.perf_counter()
    try:
        # The router appends to record.attempts, so a failed request's attempts are recorded too.
        routed = await runtime.router.walk(plan.request, plan.candidates, plan.deadline_s, record.attempts,
                                           plan.inputs)
    except GatewayError as exc:
        if _doubt(runtime, plan, record) and exc.extra is not None:
            exc.extra["usage"] = {"possibly_billed_attempts": record.possibly_billed,
                                  "possibly_billed_usd": record.possibly_billed_usd}
        raise
    except asyncio.CancelledError:  # the client left: the attempt cut short may have been billed
        _doubt(runtime, plan, record)
        raise
    finally:
        record.upstream_s = time.perf_counter() - started
    target = routed.target
    record.model_served = target.model
    record.provider, record.region = target.plugin, target.region
    served = runtime.registry.models.get(target.model, plan.route)
    headers: dict[str, str] = {}
    if routed.result is not None:
        headers.update(routed.result.headers)  # what the plugin chose to pass on (provider.pass_through)
        if routed.result.upstream_request_id:
            headers["x-upstream-request-id"] = routed.result.upstream_request_id
    if routed.first is not None:
        return await _relay(request, runtime, plan, record, routed, served, headers)
    assert routed.result is not None and routed.parsed is not None
    record.usage = routed.parsed.usage
    record.images = len(routed.parsed.data)
    record.tokens, record.cost = model_cost(record.usage, served.price, served.price_source, served.id,
                                            record.images, routed.result.output_megapixels)
    if _doubt(runtime, plan, record):
        record.cost = msgspec.structs.replace(record.cost, possibly_billed_attempts=record.possibly_billed,
                                              possibly_billed_usd=record.possibly_billed_usd)
    extra_out = {"routing": {"attempts": routed.attempts}, "usage": record.cost}  # Structs encode as they are
    response = await images_response(request, routed.result.body, routed.parsed, extra_out, headers)
    record.response_bytes = response.content_length or 0
    return response


def _doubt(runtime: Runtime, plan: Plan, record: RequestRecord) -> int:
    """The attempts that may have been billed without an answer (gateway/cost.py), on the record."""
    for attempt in record.attempts:
        if attempt.possibly_billed:
            break
    else:
        return 0  # the usual case, at the cost of a loop over one attempt
    models = runtime.registry.models

    def estimate(model: str) -> float | None:
        route = models.get(model)
        return estimate_usd(plan.request, route.price, route.tokens) if route is not None else None
    record.possibly_billed, record.possibly_billed_usd = possibly_billed(record.attempts, estimate)
    return record.possibly_billed


@expects_edit_request
async def create_edit(request: web.Request) -> web.StreamResponse:
    """``POST /v1/images/edits``: the same path as a generation, with the edit's images in the plan."""
    return await create_image(request)


async def _relay(request: web.Request, runtime: Runtime, plan: Plan, record: RequestRecord, routed: Routed,
                 served: ModelRoute, headers: dict[str, str]) -> web.StreamResponse:
    """A streaming answer (gateway/streaming.py): the first event is in hand, the rest follow.
    Usage, cost and the record settle from the completed events."""
    record.stream = True
    out = await streaming.Out.open(request, headers, request.get(CAPTURE))
    record.first_event_s = routed.first_event_at - record.arrived_at
    usage: Usage | None = None
    written = 0
    event, head = routed.first, routed.first_head  # the first was read by the router
    rest = runtime.router.follow(routed)
    doubt = _doubt(runtime, plan, record)  # attempts before this one that may have been billed
    try:
        while event is not None:
            head = head or streaming.read_event(event)
            if streaming.is_completed(event.type):
                usage = streaming.add_usage(usage, head.usage)
                record.images += 1
                record.usage = usage
                record.tokens, record.cost = model_cost(usage, served.price, served.price_source, served.id,
                                                        record.images)
                if doubt:
                    record.cost = msgspec.structs.replace(record.cost, possibly_billed_attempts=doubt,
                                                          possibly_billed_usd=record.possibly_billed_usd)
                extra = {"routing": {"attempts": routed.attempts}, "usage": record.cost}
                written += await out.event(event.type, event.data, extra, keep=True)
            else:
                record.partial_images += 1
                written += await out.event(event.type, event.data)
            event, head = await anext(rest, None), None
    except ProviderError as exc:  # an invalid event: the upstream's fault, after the stream began
        await rest.aclose()
        attempt = routed.attempt
        attempt.status, attempt.http_status, attempt.error_code = "failed", exc.status, exc.code
        attempt.error_message = runtime.redactor(exc.message)
        attempt.possibly_billed = True
        _doubt(runtime, plan, record)
        written += await _stream_error(out, record, GatewayError(
            f"The stream failed after it started: {attempt.error_message}", status=502, code=exc.code),
            routed)
    except GatewayError as exc:
        _doubt(runtime, plan, record)  # the attempt that broke off may have been billed
        written += await _stream_error(out, record, exc, routed)
    except (asyncio.CancelledError, ConnectionResetError):
        await rest.aclose()
        raise
    record.response_bytes = written
    await out.end()
    return out.response


async def _stream_error(out: streaming.Out, record: RequestRecord, error: GatewayError,
                        routed: Routed) -> int:
    record.error_code = error.code
    usage: object = record.cost
    if record.possibly_billed:
        usage = {**msgspec.to_builtins(record.cost or {}), "possibly_billed_attempts": record.possibly_billed,
                 "possibly_billed_usd": record.possibly_billed_usd}
    return await out.error(error, {"routing": {"attempts": routed.attempts}, "usage": usage})


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
