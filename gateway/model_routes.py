"""``GET /v1/models`` and ``GET /v1/models/{model}``: OpenAI's list and retrieve shapes, with each
model's capabilities (what the gateway checks requests against) as an extension field and its
``shutdown_date``. A model past its shutdown (and not pinned) is neither listed nor retrieved."""

from __future__ import annotations

import msgspec
from aiohttp import web

from gateway.appkeys import PRINCIPAL, RUNTIME
from gateway.catalog import Capabilities
from gateway.errors import GatewayError, model_not_found
from gateway.keyring import may_use
from gateway.model_lifecycle import retired, shutdown_day
from gateway.registry import ModelRoute


class ModelObject(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""
    #: OpenGateway's extension: sizes, qualities, formats, n, streaming, edits (gateway/catalog.py).
    capabilities: Capabilities | None = None
    #: ``YYYY-MM-DD`` from which no deployment serves the model, or null (OpenAI's field of the name).
    shutdown_date: str | None = None


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"


def _object(route: ModelRoute) -> ModelObject:
    day = shutdown_day(route)
    return ModelObject(route.id, owned_by=route.id.partition("/")[0], capabilities=route.capabilities,
                       shutdown_date=day.isoformat() if day is not None else None)


async def list_models(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    registry, today = runtime.registry, runtime.today()
    ids = registry.visible_models(request[PRINCIPAL])
    body = ModelList([_object(registry.models[i]) for i in ids if retired(registry.models[i], today) is None])
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    """One model, by the id a client would send (``owner/model``, an alias, a bare id); a model the
    key may not use does not exist for it (404, as OpenAI answers)."""
    asked = request.match_info["model"]
    try:
        route = request[RUNTIME].registry.resolve(asked)
    except GatewayError:
        raise model_not_found(asked) from None
    if not may_use(request[PRINCIPAL], route.id) or retired(route, request[RUNTIME].today()) is not None:
        raise model_not_found(asked)
    return web.Response(body=msgspec.json.encode(_object(route)), content_type="application/json")
