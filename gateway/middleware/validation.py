"""The one entry into validation: a route's body decoded into the one request type, then the
request plan (gateway/plan.py) made from it, before the handler runs."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.errors import InvalidRequest, RequestTimeout
from gateway.appkeys import PLAN, PRINCIPAL, RECORD, RUNTIME
from gateway.middleware import Handler, Next
from gateway.plan import make_plan
from gateway.validation import decode_request


def expects_images_request(handler: Handler) -> Handler:
    """Mark a route handler as taking an ``ImageRequest`` body: it finds the plan in ``request[PLAN]``."""
    handler.takes_images_request = True  # type: ignore[attr-defined]
    return handler


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


@web.middleware
def validation_middleware(request: web.Request, handler: Handler) -> Next:
    if not getattr(request.match_info.handler, "takes_images_request", False):
        return handler(request)
    # A missing Content-Type is tolerated; a different one is refused as OpenAI does.
    if "Content-Type" in request.headers and not _is_json(request.content_type):
        raise InvalidRequest(
            f"Unsupported content type: '{request.headers['Content-Type']}'. This API method only "
            "accepts 'application/json' requests.", code="unsupported_content_type")
    if not request.content.is_eof():
        return _after_slow_body(request, handler)
    # The usual case: the whole body came with the headers. One bytes object, where read()
    # would join and copy it twice.
    body = request.content.read_nowait()
    if len(body) > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size, actual_size=len(body))
    _decode(request, body)
    return handler(request)


async def _after_slow_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    timeout_s = request[RUNTIME].config.server.body_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):  # aiohttp itself never times out a slow body
            body = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {timeout_s:g} seconds.") from None
    _decode(request, body)
    return await handler(request)


def _decode(request: web.Request, body: bytes) -> None:
    record = request[RECORD]
    record.request_bytes = len(body)
    if not body:
        raise InvalidRequest("The request body is empty: send a JSON object.", code="invalid_json")
    decoded, unknown = decode_request(body)
    record.model_asked = decoded.model
    plan = request[PLAN] = make_plan(decoded, unknown, request[PRINCIPAL], request[RUNTIME])
    record.model = plan.route.id
