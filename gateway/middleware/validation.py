"""The one entry into validation: a route's body decoded into the one request type, then the
request plan (gateway/plan.py) made from it, before the handler runs. An edit's body (multipart,
or JSON with data: URLs) also yields its input images, held for the request and removed after
it (gateway/edit_form.py, gateway/uploads.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.appkeys import PLAN, PRINCIPAL, RECORD, RUNTIME
from gateway.edit_form import inputs_from_json, read_multipart
from gateway.errors import InvalidRequest, RequestTimeout
from gateway.middleware import Handler, Next
from gateway.plan import make_plan
from gateway.uploads import UploadLimits
from gateway.validation import decode_request


def expects_images_request(handler: Handler) -> Handler:
    """Mark a route handler as taking an ``ImageRequest`` body: it finds the plan in ``request[PLAN]``."""
    handler.takes_images_request = True  # type: ignore[attr-defined]
    return handler


def expects_edit_request(handler: Handler) -> Handler:
    """Mark a route handler as taking an edit (multipart or JSON): the plan carries its images."""
    handler.takes_edit_request = True  # type: ignore[attr-defined]
    return handler


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


@web.middleware
def validation_middleware(request: web.Request, handler: Handler) -> Next:
    route_handler = request.match_info.handler
    if getattr(route_handler, "takes_edit_request", False):
        return _edit(request, handler)
    if not getattr(route_handler, "takes_images_request", False):
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


async def _edit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An edit: its images read and held (bounded by the upload limits and the body timeout), the
    plan made, the handler run, the images let go."""
    runtime = request[RUNTIME]
    server = runtime.config.server
    limits = UploadLimits(server.max_upload_bytes, server.max_upload_total_bytes, server.upload_memory_bytes)
    content_type = request.content_type
    try:
        async with asyncio.timeout(server.body_read_timeout_s):
            if content_type == "multipart/form-data":
                decoded, unknown, inputs = await read_multipart(request, limits)
            elif "Content-Type" not in request.headers or _is_json(content_type):
                body = await request.read()
                request[RECORD].request_bytes = len(body)
                if not body:
                    raise InvalidRequest("The request body is empty.", code="invalid_json")
                decoded, unknown = decode_request(body)
                inputs = inputs_from_json(decoded, limits)
            else:
                raise InvalidRequest(
                    f"Unsupported content type: '{request.headers['Content-Type']}'. This API method only accepts "
                    "'multipart/form-data' and 'application/json' requests.", code="unsupported_content_type")
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {server.body_read_timeout_s:g} "
                             "seconds.") from None
    try:
        record = request[RECORD]
        record.model_asked = decoded.model
        record.request_bytes = max(record.request_bytes, inputs.size)
        plan = request[PLAN] = make_plan(decoded, unknown, request[PRINCIPAL], runtime, inputs)
        record.model = plan.route.id
        return await handler(request)
    finally:
        inputs.close()
