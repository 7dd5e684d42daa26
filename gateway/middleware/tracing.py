"""Tracing link (in the chain only with ``tracing.enabled``, right inside the metrics link): an API
request joins the client's trace (its ``traceparent``) or starts one, and the request's task
carries it (``tracing_context.CURRENT``) to the router and the upstream calls. The spans are
built after the response from the request record (gateway/tracing.py), so nothing here waits on
the handler."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import TRACE, TRACING
from gateway.middleware import Handler, Next
from gateway.tracing_context import CURRENT


@web.middleware
def tracing_middleware(request: web.Request, handler: Handler) -> Next:
    if not request.path.startswith("/v1/"):
        # Set, not left: aiohttp serves a keep-alive connection's requests in one task, whose
        # context would still hold the previous request's trace.
        CURRENT.set(None)
        return handler(request)
    trace = request[TRACE] = request.app[TRACING].begin(request.headers)
    CURRENT.set(trace)
    return handler(request)
