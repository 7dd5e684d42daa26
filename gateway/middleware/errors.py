"""Turns every failure below it into OpenAI's error JSON; the only place exceptions are mapped."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway import errors
from gateway.appkeys import RECORD
from gateway.middleware import Handler

log = logging.getLogger("opengateway.errors")

_HTTP_ERRORS: dict[int, type[errors.GatewayError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


def _from_http(request: web.Request, exc: web.HTTPException) -> errors.GatewayError:
    """aiohttp's own HTTP exceptions (unknown route, wrong method, body too large)."""
    if exc.status == 404:
        return errors.NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return errors.MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.path}; allowed: {allowed}.",
            headers={"Allow": allowed} if allowed else None)
    if exc.status == 413:
        return errors.PayloadTooLarge(
            f"Request body too large: the limit is {request.client_max_size} bytes.")
    cls = _HTTP_ERRORS.get(exc.status, errors.GatewayError)
    return cls(exc.reason, status=exc.status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.GatewayError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client went away (mid-response, too): nothing to answer, aiohttp drops it
    except Exception:
        record = request[RECORD]
        log.exception("unhandled error in request %s", record.request_id)
        error = errors.internal_error(record.request_id)
    request[RECORD].error_code = error.code
    return error.to_response()
