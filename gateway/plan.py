"""The request plan: one function turns (request, key, runtime) into the targets to try, in order.

Everything the gateway decides about a request before any upstream call is decided here, once:
the model it names (aliases, bare ids, unknown ids: ``Registry.resolve``), whether the key may use
it, whether it is past its shutdown (gateway/model_lifecycle.py), whether the model can take
the request (gateway/validation.py, against its capabilities), which fields beyond the contract it
allows, the fallback models (asked for or configured, allowed, deduplicated, bounded), the
deadline, the order of weighted deployments, and which deployment cannot take the request (an
Azure deployment without webp beside OpenAI, a deployment its provider has shut down). The
router (gateway/router.py) only walks the candidates; plugins never validate again.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import msgspec

from gateway.api import ImageRequest
from gateway.catalog import Capabilities
from gateway.config import KeyConfig
from gateway.errors import GatewayError, InvalidRequest, model_shut_down
from gateway.keyring import forbidden, may_use
from gateway.model_lifecycle import is_shut, retired, skip_reason
from gateway.registry import ModelRoute, Registry
from gateway.router import Candidate
from gateway.uploads import EditInputs
from gateway.validation import capability_error, operation_error, unknown_field_error, unsupported_error

if TYPE_CHECKING:
    from gateway.runtime import Runtime


class Plan(msgspec.Struct, frozen=True):
    request: ImageRequest
    #: The model asked for, resolved (its id is a bounded metric label).
    route: ModelRoute
    #: Every deployment of the model asked, then of each fallback model, in the order to try them.
    candidates: tuple[Candidate, ...]
    deadline_s: float
    #: An edit's input images (POST /v1/images/edits); None for a generation.
    inputs: EditInputs | None = None


def make_plan(request: ImageRequest, unknown: dict[str, Any], key: KeyConfig, runtime: Runtime,
              inputs: EditInputs | None = None) -> Plan:
    """The plan for a decoded request (an edit's, with its held ``inputs``), or the error OpenAI
    would answer it with."""
    problem = unsupported_error(request) or operation_error(request, inputs)
    if problem is not None:
        raise problem
    if request.stream is False or request.response_format is not None:
        # ``stream: false`` and ``response_format: "b64_json"`` ask for what GPT Image models do
        # anyway; the models refuse the latter, so neither is sent upstream.
        request = msgspec.structs.replace(request, stream=request.stream or None, response_format=None)
    if request.output_compression == 100 and (request.output_format or "png") == "png":
        # 100 is OpenAI's documented default, and a PNG has no compression level: accepted, not sent.
        request = msgspec.structs.replace(request, output_compression=None)
    registry = runtime.registry
    route = registry.resolve(request.model)
    if not may_use(key, route.id):
        raise forbidden(route.id, key)
    today = runtime.today()
    gone = retired(route, today)
    if gone is not None:
        raise model_shut_down(request.model, gone.shutdown.isoformat(), gone.successors)
    fitted = _fit(request, route.capabilities, _droppable(runtime, route.id), route.id, inputs)
    problem = fitted.problem or unknown_field_error(unknown, route.capabilities)
    if problem is not None:
        raise problem
    fallbacks = _fallbacks(registry, route, _requested_fallbacks(request), key, runtime.config.router.max_fallbacks)
    deadline_s = runtime.config.router.deadline_s
    if request.extra is not None and request.extra.deadline_s is not None:
        deadline_s = min(deadline_s, request.extra.deadline_s)
    candidates = list(_candidates(route, fitted, unknown, runtime, inputs, today))
    for fallback in fallbacks:
        # A fallback model that cannot take this request is reported as skipped, not refused.
        fitted = _fit(request, fallback.capabilities, _droppable(runtime, fallback.id), fallback.id, inputs)
        if fitted.problem is None:
            fitted = fitted._replace(problem=unknown_field_error(unknown, fallback.capabilities))
        candidates.extend(_candidates(fallback, fitted, unknown, runtime, inputs, today))
    return Plan(request, route, tuple(candidates), deadline_s, inputs)


class _Fitted(NamedTuple):
    """A request as one model (or deployment) can take it: fields dropped as the operator allows,
    with a note each, or the problem that remains."""

    request: ImageRequest
    notes: tuple[str, ...]
    problem: InvalidRequest | None


def _droppable(runtime: Runtime, model_id: str) -> frozenset[str]:
    model = runtime.config.models.get(model_id)
    return frozenset(model.drop_unsupported) if model is not None else frozenset()


def _fit(request: ImageRequest, caps: Capabilities, droppable: frozenset[str], model_id: str,
         inputs: EditInputs | None, notes: tuple[str, ...] = ()) -> _Fitted:
    """``request`` checked against ``caps``; a field it cannot take is dropped (and noted) when
    ``droppable`` names it, and the rest checked again."""
    problem = capability_error(request, caps, inputs)
    while problem is not None and problem.param in droppable and getattr(request, problem.param) is not None:
        value = getattr(request, problem.param)
        notes += (f"{problem.param}={value} dropped: {model_id} cannot honour it here "
                  f"(models.{model_id}.drop_unsupported allows this)",)
        request = msgspec.structs.replace(request, **{problem.param: None})
        problem = capability_error(request, caps, inputs)
    return _Fitted(request, notes, problem)


def _candidates(route: ModelRoute, fitted: _Fitted, unknown: dict[str, Any], runtime: Runtime,
                inputs: EditInputs | None, today: date) -> Iterator[Candidate]:
    droppable = None
    for target in runtime.router.order(route.targets, route.weighted):
        if not route.pinned and is_shut(target, today):  # its provider retired the model
            yield Candidate(target, unsupported=skip_reason(target))
            continue
        own = fitted
        caps = route.capabilities
        if own.problem is None and target.capabilities is not None:  # a deployment that differs from its model
            caps = target.capabilities
            droppable = _droppable(runtime, route.id) if droppable is None else droppable
            own = _fit(fitted.request, caps, droppable, route.id, inputs, fitted.notes)
            if own.problem is None:
                own = own._replace(problem=unknown_field_error(unknown, caps))
        if own.problem is not None:
            yield Candidate(target, unsupported=own.problem.message)
            continue
        streams = bool(own.request.stream) and caps.streaming
        if own.notes:
            yield Candidate(target, unknown, request=own.request, notes=own.notes, streams=streams)
        else:  # the usual case: the deployment takes the client's request as it is
            yield Candidate(target, unknown, streams=streams)


def _requested_fallbacks(request: ImageRequest) -> list[str] | None:
    in_extra = request.extra.fallbacks if request.extra is not None else None
    top = request.fallbacks
    if in_extra is not None and top is not None and in_extra != top:
        raise InvalidRequest("'fallbacks' and 'extra.fallbacks' were both given and differ; send one.",
                             param="fallbacks", code="conflicting_parameters")
    return in_extra if in_extra is not None else top


def _fallbacks(registry: Registry, primary: ModelRoute, requested: list[str] | None, key: KeyConfig,
               max_fallbacks: int) -> list[ModelRoute]:
    """The request's fallbacks (or the model's configured ones): known, allowed, deduplicated."""
    names = requested if requested is not None else list(primary.fallbacks)
    routes: list[ModelRoute] = []
    seen = {primary.id}
    for i, name in enumerate(names):
        try:
            route = registry.resolve(name)
        except GatewayError as exc:  # unknown or malformed id: a client mistake in the fallbacks
            raise InvalidRequest(f"Invalid fallback '{name}': {exc.message}", param=f"extra.fallbacks[{i}]",
                                 code=exc.code) from None
        if not may_use(key, route.id, as_fallback=True):
            raise forbidden(route.id, key, as_fallback=True)
        if route.id not in seen:
            seen.add(route.id)
            routes.append(route)
    if len(routes) > max_fallbacks:
        raise InvalidRequest(f"Too many fallbacks: at most {max_fallbacks} distinct models are allowed, "
                             f"but got {len(routes)}.", param="extra.fallbacks", code="too_many_fallbacks")
    return routes
