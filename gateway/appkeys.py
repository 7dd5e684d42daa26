"""Typed application and request state: every key declared once, with its real type.

The modules imported here hold data and behaviour only; the wiring that reads these keys (app,
middleware, handlers) imports this module, never the other way round.
"""

import asyncio
from collections.abc import Mapping

from aiohttp import web

from gateway.access_log import AccessLog
from gateway.body import Body
from gateway.config import KeyConfig
from gateway.dashboard.session import Sessions
from gateway.dashboard.stats import Stats
from gateway.http_client import HTTPClient
from gateway.idempotency import Capture, Keeper
from gateway.lifecycle import Lifecycle
from gateway.limits import LimitsBackend
from gateway.observers import Observers
from gateway.plan import Plan
from gateway.record import RequestRecord
from gateway.reload import Reloader
from gateway.runtime import Resources, Runtime, RuntimeRef
from gateway.tracing_context import RequestTrace, RequestTracer

# Application state: one per process, whatever the configuration.
#: The current configuration's Runtime (gateway/runtime.py); a reload swaps what it holds.
RUNTIME_REF = web.AppKey("runtime_ref", RuntimeRef)
#: What every Runtime is built with (the upstream interface, the router's clock).
RESOURCES = web.AppKey("resources", Resources)
#: The pooled upstream client under ``Resources.http`` (gateway/http_client.py), closed at exit.
HTTP_CLIENT = web.AppKey("http_client", HTTPClient)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
RELOADER = web.AppKey("reloader", Reloader)
#: The counters outlive a reload (gateway/limits/).
LIMITS: web.AppKey[LimitsBackend] = web.AppKey("limits")
#: None when ``server.access_log`` is off.
ACCESS_LOG: web.AppKey[AccessLog | None] = web.AppKey("access_log")
STATS = web.AppKey("stats", Stats)
#: Where finished requests go to be counted, shown and logged (gateway/observers.py).
OBSERVERS = web.AppKey("observers", Observers)
DASHBOARD_SESSIONS = web.AppKey("dashboard_sessions", Sessions)
#: Idempotency keys and their answers (gateway/idempotency.py), in the limits backend's store.
IDEMPOTENCY = web.AppKey("idempotency", Keeper)
#: Only with ``tracing.enabled`` (gateway/tracing.py): the span pipeline.
TRACING: web.AppKey[RequestTracer] = web.AppKey("tracing")

# Request state.
RECORD = web.RequestKey("record", RequestRecord)
#: The Runtime the request started with: everything reloadable it reads comes from here.
RUNTIME = web.RequestKey("runtime", Runtime)
#: The gateway key that authenticated the request.
PRINCIPAL = web.RequestKey("principal", KeyConfig)
#: The body as read (gateway/middleware/body.py), before it is decoded.
BODY = web.RequestKey("body", Body)
PLAN = web.RequestKey("plan", Plan)
LIMIT_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("limit_headers")
#: A request with an ``Idempotency-Key``: its answer as it is given, to keep for repeats.
CAPTURE = web.RequestKey("capture", Capture)
#: Such a request's run, which outlives its client (gateway/middleware/idempotency.py); the
#: outermost link observes the request when it ends.
DETACHED: web.RequestKey[asyncio.Task[web.StreamResponse]] = web.RequestKey("detached")
#: The CORS headers the answer gets (gateway/middleware/cors.py), put on it by gateway.app.
CORS_HEADERS: web.RequestKey[Mapping[str, str]] = web.RequestKey("cors_headers")
#: A traced request's ids (gateway/middleware/tracing.py), read by the observers afterwards.
TRACE = web.RequestKey("trace", RequestTrace)
