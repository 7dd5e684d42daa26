"""Route handlers: the images endpoint, the model list, health and readiness."""

from __future__ import annotations

import fnmatch
import time

import msgspec
from aiohttp import web

from gateway.config import KeyConfig
from gateway.cost import model_cost
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied
from gateway.keys import BODY, LIFECYCLE, PRINCIPAL, RECORD, STATE, UNKNOWN_FIELDS
from gateway.middleware import public
from gateway.middleware.validation import expects_images_request
from gateway.registry import ModelRoute, Registry
from gateway.response import images_response
from gateway.validation import check_capabilities, reject_unknown, reject_unsupported



def _allowed(model: str, globs: list[str]) -> bool:
    return "*" in globs or any(fnmatch.fnmatchcase(model, g) for g in globs)  # "*" is the default


def _forbidden(model: str, key: KeyConfig, as_fallback: bool = False) -> PermissionDenied:
    role = "as a fallback " if as_fallback else ""
    return PermissionDenied(f"The API key '{key.name}' is not allowed to use the model '{model}' {role}"
                            "through this gateway.", param="extra.fallbacks" if as_fallback else "model",
                            code="model_not_allowed")


def resolve_fallbacks(registry: Registry, primary: ModelRoute, requested: list[str] | None,
                      key: KeyConfig, max_fallbacks: int) -> list[ModelRoute]:
    """The request's fallbacks (or the model's configured ones): known, allowed, deduplicated."""
    names = requested if requested is not None else list(primary.fallbacks)
    globs = key.fallback_models if key.fallback_models is not None else key.models
    routes: list[ModelRoute] = []
    seen = {primary.id}
    for i, name in enumerate(names):
        try:
            route = registry.resolve(name)
        except GatewayError as exc:  # unknown or malformed id: a client mistake in the fallbacks
            raise InvalidRequest(f"Invalid fallback '{name}': {exc.message}", param=f"extra.fallbacks[{i}]",
                                 code=exc.code) from None
        if not _allowed(route.id, globs):
            raise _forbidden(route.id, key, as_fallback=True)
        if route.id not in seen:
            seen.add(route.id)
            routes.append(route)
    if len(routes) > max_fallbacks:
        raise InvalidRequest(f"Too many fallbacks: at most {max_fallbacks} distinct models are allowed, "
                             f"but got {len(routes)}.", param="extra.fallbacks", code="too_many_fallbacks")
    return routes


@expects_images_request
async def create_image(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body, key, record = request[BODY], request[PRINCIPAL], request[RECORD]
    reject_unsupported(body)
    route = state.registry.resolve(body.model)
    record.model = route.id
    if not _allowed(route.id, key.models):
        raise _forbidden(route.id, key)
    check_capabilities(body, route.capabilities)
    reject_unknown(request[UNKNOWN_FIELDS], route.capabilities)

    extra = body.extra or None
    in_extra = extra.fallbacks if extra is not None and extra.fallbacks is not msgspec.UNSET else None
    top = body.fallbacks if body.fallbacks is not msgspec.UNSET else None
    if in_extra is not None and top is not None and in_extra != top:
        raise InvalidRequest("'fallbacks' and 'extra.fallbacks' were both given and differ; send one.",
                             param="fallbacks", code="conflicting_parameters")
    fallbacks = resolve_fallbacks(state.registry, route, in_extra if in_extra is not None else top,
                                  key, state.config.router.max_fallbacks)
    deadline_s = state.config.router.deadline_s
    if extra is not None and extra.deadline_s not in (msgspec.UNSET, None):
        deadline_s = min(deadline_s, extra.deadline_s)  # type: ignore[type-var]

    started = time.perf_counter()
    try:
        # The router appends to record.attempts, so a failed request's attempts are recorded too.
        routed = await state.router.generate(
            state.router.candidates(route, fallbacks, body, request[UNKNOWN_FIELDS]), deadline_s,
            record.attempts)
    finally:
        record.upstream_s = time.perf_counter() - started
    record.model_served = routed.target.model
    record.provider, record.region = routed.target.plugin, routed.target.region
    record.usage = routed.parsed.usage
    record.images = len(routed.parsed.data)
    served = state.registry.models.get(routed.target.model, route)
    record.tokens, record.cost = model_cost(record.usage, served.price, served.price_source, served.id)
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
    registry = request.app[STATE].registry
    ids = registry.visible_models(request[PRINCIPAL].models)
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
    state = request.app[STATE]
    targets = state.router.snapshot(t for route in state.registry.models.values() for t in route.targets)
    return web.Response(body=msgspec.json.encode({"status": status, "targets": targets}), status=code,
                        content_type="application/json")
