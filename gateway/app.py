"""``create_app(config)``: the middleware chain, the routes and the process's resources.

What a process makes once (the upstream connection pool, the limits backend, the access log, the
observers, the dashboard figures) is made here. What a configuration makes (key rings, providers,
router, redactor) is a Runtime (gateway/runtime.py), built by the same function at start-up and on
every reload, and reached through ``app[RUNTIME_REF]``.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Callable, Iterable

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import admin_routes, handlers, metrics, model_routes, openapi
from gateway import server_log as malformed_log
from gateway.access_log import AccessLog
from gateway.appkeys import (ACCESS_LOG, BODY, CAPTURE, CORS_HEADERS, DASHBOARD_SESSIONS, DETACHED, HTTP_CLIENT,
                             IDEMPOTENCY, LIFECYCLE, LIMIT_HEADERS, LIMITS, OBSERVERS, PLAN, RECORD, RELOADER,
                             RESOURCES, RUNTIME, RUNTIME_REF, STATS, TRACING)
from gateway.config import Config, ConfigError
from gateway.config_load import otel_missing_problem
from gateway.dashboard import views as dashboard
from gateway.dashboard.session import Sessions
from gateway.dashboard.stats import Stats
from gateway.http_client import HTTPClient
from gateway.idempotency import Keeper, make_store
from gateway.lifecycle import Lifecycle
from gateway.limits.backend import make_backend
from gateway.model_lifecycle import Today, default_today
from gateway.middleware.admin import admin, admin_port_middleware
from gateway.middleware.auth import auth_middleware
from gateway.middleware.body import body_middleware
from gateway.middleware.cors import cors_middleware
from gateway.middleware.errors import errors_middleware
from gateway.middleware.identity import identity_middleware
from gateway.middleware.idempotency import idempotency_middleware
from gateway.middleware.limits import limits_middleware
from gateway.middleware.metrics import metrics_middleware
from gateway.middleware.tracing import tracing_middleware
from gateway.middleware.validation import validation_middleware
from gateway.observers import Observers
from gateway.redact import RedactingFilter
from gateway.reload import Reloader
from gateway.router import RouterTiming
from gateway.runtime import Resources, Runtime, RuntimeRef, build_runtime
from gateway.tracing_context import RequestTracer
from gateway.upstream_http import TracedUpstreamHTTP, UpstreamHTTP

log = logging.getLogger("opengateway")

#: Idle upstream connections are closed after this long (below the usual servers' own timeouts).
UPSTREAM_KEEPALIVE_S = 30.0

#: The middleware chain, outermost first. This list is the only place the order is decided.
MIDDLEWARES = (
    metrics_middleware,     # request record, pinned runtime, in-flight gauge, status and duration
    tracing_middleware,     # only with tracing.enabled (else left out: ``middlewares``): the trace
    errors_middleware,      # GatewayError / aiohttp HTTP errors / crashes -> OpenAI error JSON
    cors_middleware,        # browser preflights answered before auth; CORS headers for /v1/ answers
    admin_port_middleware,  # operator routes answer 404 off the admin port (server.admin_port)
    auth_middleware,        # Authorization: Bearer -> the key's policy, or 401
    identity_middleware,    # x-opengateway-user-id / -session-id -> request record
    body_middleware,        # the image routes' body read (bounded); an edit's images held
    idempotency_middleware, # Idempotency-Key: a repeat answered from the store; a first run kept
    validation_middleware,  # the body -> ImageRequest -> the request plan, or OpenAI's 4xx
    limits_middleware,      # the key's per-minute, in-flight and spend limits (needs n), or 429
)


def middlewares(config: Config) -> tuple[Middleware, ...]:
    """The chain for ``config``: ``MIDDLEWARES``, without the tracing link when tracing is off
    (then a request pays nothing for it)."""
    if config.tracing.enabled:
        return MIDDLEWARES
    return tuple(link for link in MIDDLEWARES if link is not tracing_middleware)


def _tracing(config: Config) -> RequestTracer | None:
    """The span pipeline (gateway/tracing.py, imported only here), or None with tracing off. An
    enabled section without the OpenTelemetry packages is a config problem (check-config says so
    too), not an ImportError."""
    if not config.tracing.enabled:
        return None
    missing = otel_missing_problem()
    if missing is not None:
        raise ConfigError([missing])
    from gateway.tracing import Tracing
    return Tracing(config.tracing)


#: Taken out of a request once it has been observed (gateway/observers.py).
_RELEASED_AFTER_OBSERVING = (RECORD, BODY, PLAN, RUNTIME, CAPTURE, DETACHED)


def _process_resources(config: Config, config_path: str | None, timing: RouterTiming, generation: int,
                       today: Today) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: what this process makes once, in order, and undoes in reverse at exit."""
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        server = config.server
        tracing = _tracing(config)
        client = app[HTTP_CLIENT] = HTTPClient(limit=server.upstream_pool_size, keepalive_s=UPSTREAM_KEEPALIVE_S,
                                               max_body_bytes=server.max_upstream_body_bytes)
        http = UpstreamHTTP(client) if tracing is None else TracedUpstreamHTTP(client)
        resources = app[RESOURCES] = Resources(http, timing, today)
        try:
            runtime = build_runtime(config, resources, generation=generation)
        except BaseException:
            await client.close()
            if tracing is not None:
                await tracing.close()
            raise
        if tracing is not None:
            app[TRACING] = tracing
            log.info("tracing: OTLP/HTTP to %s, sample ratio %g", config.tracing.endpoint,
                     config.tracing.sample_ratio)
        ref = app[RUNTIME_REF] = RuntimeRef(runtime)
        stats = app[STATS]
        reloader = app[RELOADER] = Reloader(config_path, ref, resources, on_swap=lambda r: _apply(app, r))
        redacting = RedactingFilter(lambda: ref.current.redactor)
        server_log = logging.getLogger("aiohttp.server")  # logs malformed requests with their headers
        server_log.addFilter(redacting)
        # One line each, at a bounded rate, ahead of the redaction; removed at exit if installed here.
        installed_here = not any(isinstance(f, malformed_log.MalformedRequestLog) for f in server_log.filters)
        malformed = malformed_log.install(server_log)
        access_log = app[ACCESS_LOG] = AccessLog.open(config)
        observers = app[OBSERVERS] = Observers(stats, access_log, _RELEASED_AFTER_OBSERVING, tracing)
        backend = app[LIMITS] = make_backend(config.limits)
        log.info("limits backend: %s", "memory" if config.limits.backend == "memory" else "redis")
        keeper = app[IDEMPOTENCY] = Keeper(make_store(backend))
        background = metrics.background(lambda: ref.current)
        try:
            yield
        finally:
            await metrics.stop(background)
            observers.flush()  # what is still queued is observed before the access log closes
            if tracing is not None:
                await tracing.close()  # the spans of the last requests are sent
            await keeper.close(server.drain_timeout_s)
            await reloader.close()
            await ref.current.registry.close()
            await backend.close()
            if access_log is not None:
                access_log.close()
            server_log.removeFilter(redacting)
            if installed_here:
                malformed.flush()
                server_log.removeFilter(malformed)
            await client.close()
    return lifetime


def _apply(app: web.Application, runtime: Runtime) -> None:
    """After a reload: process-level consumers of reloadable settings take the new values."""
    app[STATS].configure(runtime.config.dashboard.recent_requests, runtime.config.dashboard.max_tracked_ids)


async def _gateway_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare (one handler: each costs a coroutine per response): the request id,
    the key's ``x-ratelimit-*`` (gateway/middleware/limits.py), replacing any an upstream sent,
    and the CORS headers (gateway/middleware/cors.py), on errors too."""
    record = request.get(RECORD)
    if record is not None:
        response.headers["x-request-id"] = record.request_id
    limits = request.get(LIMIT_HEADERS)
    if limits:
        response.headers.update(limits)
    cors = request.get(CORS_HEADERS)
    if cors:
        vary = response.headers.get("Vary")
        response.headers.update(cors)
        if vary and "Vary" in cors:
            response.headers["Vary"] = f"{vary}, {cors['Vary']}"


def add_admin_routes(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """Register operator routes (/metrics, /dashboard/...): when server.admin_port is set they are
    served only on that port and answer 404 on the public one (gateway/middleware/admin.py)."""
    for route in routes:
        app.router.add_route(route.method, route.path, admin(route.handler), **route.kwargs)


def create_app(config: Config, config_path: str | None = None, *, timing: RouterTiming = RouterTiming(),
               session_secret: str | None = None, generation: int = 1,
               today: Today = default_today) -> web.Application:
    """``config_path``: the file ``config`` was read from, re-read by a reload (gateway/reload.py).
    ``timing``: the router's clock, sleep and randomness (tests hand in a fake clock).
    ``today``: the day model lifecycles are judged on (tests hand in a fixed date).
    ``session_secret``: signs dashboard sessions when the config sets none (the supervisor hands
    every worker the same one); by default each process draws its own. ``generation``: the
    config's generation (a worker started after reloads joins at the supervisor's)."""
    server = config.server
    app = web.Application(middlewares=middlewares(config), client_max_size=server.max_body_bytes,
                          handler_args={"keepalive_timeout": server.keepalive_timeout_s,
                                        "max_line_size": server.max_line_bytes,
                                        "max_field_size": server.max_header_bytes,
                                        "max_headers": server.max_headers})
    app[LIFECYCLE] = Lifecycle(separate_admin_port=server.admin_port is not None)
    app[STATS] = Stats(config.dashboard.recent_requests, config.dashboard.max_tracked_ids)
    app[DASHBOARD_SESSIONS] = Sessions(session_secret)
    app.cleanup_ctx.append(_process_resources(config, config_path, timing, generation, today))
    app.on_response_prepare.append(_gateway_headers)
    app.router.add_post("/v1/images/generations", handlers.create_image)
    app.router.add_post("/v1/images/edits", handlers.create_edit)
    app.router.add_get("/v1/models", model_routes.list_models)
    app.router.add_get("/v1/models/{model:.+}", model_routes.retrieve_model)  # ids have a slash
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    # Operator routes are always there; /metrics and /dashboard answer 404 while their section
    # of the current config turns them off, so a reload can turn them on or off.
    add_admin_routes(app, [web.post("/admin/reload", admin_routes.admin_reload),
                           web.route("GET", "/metrics", admin_routes.metrics_endpoint)])
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("gateway.dashboard", "templates"),
                         autoescape=True, filters=dashboard.FILTERS)
    add_admin_routes(app, dashboard.ROUTES)
    return app
