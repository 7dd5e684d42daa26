"""Reads the body of the image routes from the client, bounded in size and time, before anything
is judged of it: a JSON body as one bytes object; an edit's multipart form as its text fields and
its files, held once (gateway/uploads.py) and let go when the request ends.

A compressed body (``Content-Encoding`` other than ``identity``) is refused with 415 before a
byte of it is read: a megabyte of gzip can inflate to a gigabyte, and no OpenAI SDK compresses
its requests. The server never inflates one either (gateway/server.py runs aiohttp with
``auto_decompress=False``), so the refusal costs nothing, whoever sends it, key or not."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.appkeys import BODY, RECORD, RUNTIME
from gateway.body import Body
from gateway.edit_form import read_multipart
from gateway.errors import GatewayError, InvalidRequest, RequestTimeout
from gateway.middleware import Handler, Next
from gateway.uploads import UploadLimits


def expects_images_request(handler: Handler) -> Handler:
    """Mark a route handler as taking an ``ImageRequest`` body: it finds the plan in ``request[PLAN]``."""
    handler.takes_images_request = True  # type: ignore[attr-defined]
    return handler


def expects_edit_request(handler: Handler) -> Handler:
    """Mark a route handler as taking an edit (multipart or JSON): the plan carries its images."""
    handler.takes_edit_request = True  # type: ignore[attr-defined]
    return handler


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


@web.middleware
def body_middleware(request: web.Request, handler: Handler) -> Next:
    route_handler = request.match_info.handler
    edit = getattr(route_handler, "takes_edit_request", False)
    if not edit and not getattr(route_handler, "takes_images_request", False):
        return handler(request)
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() != "identity":
        raise GatewayError(
            f"Unsupported Content-Encoding: '{encoding[:64]}'. Send the request body uncompressed.",
            status=415, type="invalid_request_error", code="unsupported_content_encoding",
            headers={"Accept-Encoding": "identity"})
    if edit:
        return _edit(request, handler)
    # A missing Content-Type is tolerated; a different one is refused as OpenAI does.
    if "Content-Type" in request.headers and not is_json(request.content_type):
        raise InvalidRequest(
            f"Unsupported content type: '{request.headers['Content-Type']}'. This API method only "
            "accepts 'application/json' requests.", code="unsupported_content_type")
    if not request.content.is_eof():
        return _after_slow_body(request, handler)
    # The usual case: the whole body came with the headers. One bytes object, where read()
    # would join and copy it twice.
    raw = request.content.read_nowait()
    if len(raw) > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size, actual_size=len(raw))
    _keep(request, raw)
    return handler(request)


def _keep(request: web.Request, raw: bytes, edit: bool = False) -> Body:
    request[RECORD].request_bytes = len(raw)
    if not raw:
        raise InvalidRequest("The request body is empty: send a JSON object.", code="invalid_json")
    body = request[BODY] = Body(raw=raw, edit=edit)
    return body


async def _after_slow_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    timeout_s = request[RUNTIME].config.server.body_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):  # aiohttp itself never times out a slow body
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {timeout_s:g} seconds.") from None
    _keep(request, raw)
    return await handler(request)


async def _edit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An edit: a multipart form read as it arrives (its images held), or a JSON body; the images
    are let go when the request ends, whatever happened."""
    server = request[RUNTIME].config.server
    content_type = request.content_type
    try:
        async with asyncio.timeout(server.body_read_timeout_s):
            if content_type == "multipart/form-data":
                limits = UploadLimits(server.max_upload_bytes, server.max_upload_total_bytes, server.upload_memory_bytes)
                fields, inputs = await read_multipart(request, limits)
                body = request[BODY] = Body(fields=fields, inputs=inputs, edit=True)
                request[RECORD].request_bytes = inputs.size + sum(len(v) for v in fields.values())
            elif "Content-Type" not in request.headers or is_json(content_type):
                body = _keep(request, await request.read(), edit=True)
            else:
                raise InvalidRequest(
                    f"Unsupported content type: '{request.headers['Content-Type']}'. This API method only accepts "
                    "'multipart/form-data' and 'application/json' requests.", code="unsupported_content_type")
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {server.body_read_timeout_s:g} "
                             "seconds.") from None
    try:
        return await handler(request)
    finally:
        body.close()
