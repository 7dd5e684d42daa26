"""Outermost link: opens the request record, then counts and times what everything below did."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from aiohttp import web

from gateway import metrics
from gateway.keys import RECORD, RequestRecord
from gateway.middleware import Handler

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(request: web.Request) -> str:
    sent = request.headers.get("x-request-id")
    if sent is not None and _CLIENT_REQUEST_ID.match(sent):
        return sent
    return "req_" + uuid.uuid4().hex


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    record = request[RECORD] = RequestRecord(request_id=_request_id(request), route=route,
                                             method=request.method)
    metrics.IN_FLIGHT.inc()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away; nginx's convention
        raise
    finally:
        metrics.IN_FLIGHT.dec()
        record.status = status
        metrics.REQUESTS.labels(route, record.model or "none", str(status)).inc()
        metrics.REQUEST_DURATION.labels(route).observe(time.perf_counter() - started)
