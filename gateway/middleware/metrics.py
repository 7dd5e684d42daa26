"""Outermost link: pins the request to the current runtime (everything reloadable it reads comes
from there), opens the request record, keeps the in-flight gauge, and once everything below has
answered hands the record to the observers (gateway/observers.py: metrics, dashboard figures,
access log), which take it up after the response has gone out."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time

from aiohttp import web

from gateway import metrics
from gateway.forwarded import client_ip
from gateway.appkeys import DETACHED, OBSERVERS, PLAN, RECORD, RUNTIME, RUNTIME_REF
from gateway.record import RequestRecord
from gateway.runtime import Runtime
from gateway.middleware import Handler

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# A random per-process prefix and a counter: unique across workers and restarts, with no
# system call per request (uuid4 reads the kernel's random source every time).
_ID_PREFIX = "req_" + os.urandom(8).hex()
_ids = itertools.count(1)


def _request_id(request: web.Request) -> str:
    sent = request.headers.get("x-request-id")
    if sent is not None and _CLIENT_REQUEST_ID.match(sent):
        return sent
    return f"{_ID_PREFIX}{next(_ids):012x}"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    runtime = request[RUNTIME] = app[RUNTIME_REF].current
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    record = request[RECORD] = RequestRecord(request_id=_request_id(request), route=route,
                                             method=request.method,
                                             client_ip=client_ip(request, runtime.config.server.trusted_proxies))
    record.started_at = time.time()
    record.arrived_at = started
    metrics.IN_FLIGHT.inc()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not record.response_bytes:
            record.response_bytes = response.content_length or 0
        return response
    except web.HTTPException as exc:  # redirects (and any HTTP error the errors link let through)
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client went away; nginx's convention
        raise
    finally:
        metrics.IN_FLIGHT.dec()
        record.status = status
        detached = request.get(DETACHED)
        if detached is not None and not detached.done():
            # A keyed request whose client left runs on (gateway/middleware/idempotency.py): it
            # is observed, with all its attempts and its cost, when it ends.
            detached.add_done_callback(lambda _: _observe(request, runtime, record, started))
        else:
            _observe(request, runtime, record, started)


def _observe(request: web.Request, runtime: Runtime, record: RequestRecord, started: float) -> None:
    record.duration_s = time.perf_counter() - started
    observers = request.app[OBSERVERS]
    plan = request.get(PLAN) if observers.include_prompt and runtime.config.log.include_prompt else None
    observers.finished(record, plan.request.prompt if plan is not None else None, request, runtime)
