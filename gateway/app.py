"""``create_app(config)``: the middleware chain, the routes and the app's lifetime resources."""

from __future__ import annotations

import logging
from typing import AsyncIterator, Iterable

import aiohttp
from aiohttp import web

from gateway import access_log, dashboard, handlers, metrics, observers, openapi, provider, reload
from gateway.config import Config
from gateway.dashboard.stats import Stats
from gateway.errors import redact_server_logs, remember_secrets
from gateway.http_client import HTTPClient
from gateway.keys import (ACCESS_LOG, CONFIG, HTTP, LIFECYCLE, LIMIT_HEADERS, OBSERVERS, RECORD, RELOADER, SESSION, STATE,
                          STATS)
from gateway.limits import limits_backend_ctx
from gateway.middleware.admin import admin, admin_port_middleware
from gateway.middleware.auth import auth_middleware
from gateway.middleware.errors import errors_middleware
from gateway.middleware.identity import identity_middleware
from gateway.middleware.metrics import metrics_middleware
from gateway.middleware.limits import limits_middleware
from gateway.middleware.validation import validation_middleware
from gateway.state import GatewayState, Lifecycle

log = logging.getLogger("opengateway")

#: Idle upstream connections are closed after this long (below the usual servers' own timeouts).
UPSTREAM_KEEPALIVE_S = 30.0

#: The middleware chain, outermost first. This list is the only place the order is decided.
MIDDLEWARES = (
    metrics_middleware,     # request record, in-flight gauge, status and duration of everything below
    errors_middleware,      # GatewayError / aiohttp HTTP errors / crashes -> OpenAI error JSON
    admin_port_middleware,  # operator routes answer 404 off the admin port (server.admin_port)
    auth_middleware,        # Authorization: Bearer -> the key's policy, or 401
    identity_middleware,    # x-opengateway-user-id / -session-id -> request record
    validation_middleware,  # JSON body -> ImageGenerationRequest, or 400 with OpenAI's codes
    limits_middleware,      # the key's per-minute, in-flight and spend limits (needs n), or 429
)


async def _upstream_clients(app: web.Application) -> AsyncIterator[None]:
    """The pooled upstream clients of an app, and the providers built on them: ``HTTP`` (the lean
    client every built-in plugin's ``post_json`` uses) and ``SESSION`` (aiohttp, for plugins that
    need more than a POST)."""
    server = app[CONFIG].server
    http = HTTPClient(limit=server.upstream_pool_size, keepalive_s=UPSTREAM_KEEPALIVE_S,
                      max_body_bytes=server.max_upstream_body_bytes)
    connector = aiohttp.TCPConnector(limit=server.upstream_pool_size, limit_per_host=0,
                                     ttl_dns_cache=300, keepalive_timeout=UPSTREAM_KEEPALIVE_S)
    # read_bufsize: image answers are megabytes; a larger buffer means fewer, larger socket reads
    # and fewer pause/resume cycles than aiohttp's 64 KiB default.
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                    auto_decompress=True, trust_env=False, read_bufsize=1 << 20)
    provider.max_upstream_body_bytes = server.max_upstream_body_bytes
    app[HTTP], app[SESSION] = http, session
    try:
        app[STATE] = GatewayState.build(app[CONFIG], session, http)
    except BaseException:
        await session.close()
        await http.close()
        raise
    yield
    await app[STATE].registry.close()
    await session.close()
    await http.close()


async def _gateway_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare (one handler: each costs a coroutine per response): the request id,
    and the key's ``x-ratelimit-*`` (gateway/middleware/limits.py), replacing any an upstream sent."""
    record = request.get(RECORD)
    if record is not None:
        response.headers["x-request-id"] = record.request_id
    limits = request.get(LIMIT_HEADERS)
    if limits:
        response.headers.update(limits)


def add_admin_routes(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """Register operator routes (/metrics, /dashboard/...): when server.admin_port is set they are
    served only on that port and answer 404 on the public one (gateway/middleware/admin.py)."""
    for route in routes:
        app.router.add_route(route.method, route.path, admin(route.handler), **route.kwargs)


def create_app(config: Config, config_path: str | None = None) -> web.Application:
    """``config_path``: the file ``config`` was read from, re-read by a reload (gateway/reload.py)."""
    server = config.server
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=server.max_body_bytes,
                          handler_args={"keepalive_timeout": server.keepalive_timeout_s,
                                        "max_line_size": server.max_line_bytes,
                                        "max_field_size": server.max_header_bytes,
                                        "max_headers": server.max_headers})
    app[CONFIG] = config
    remember_secrets(p.settings for p in config.providers)  # redact() scrubs them verbatim
    redact_server_logs()  # aiohttp logs malformed requests with their headers
    app[LIFECYCLE] = Lifecycle()
    app[RELOADER] = reload.Reloader(config_path)
    app.cleanup_ctx.append(_upstream_clients)
    app.cleanup_ctx.append(reload.reloader_ctx)  # cleaned up first: retired providers, then the session
    app.cleanup_ctx.append(limits_backend_ctx)
    app.on_response_prepare.append(_gateway_headers)
    app.router.add_post("/v1/images/generations", handlers.create_image)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    add_admin_routes(app, [web.post("/admin/reload", reload.admin_reload)])
    # Observability (README section observability): access log, /metrics, /dashboard.
    app[ACCESS_LOG] = None
    app[STATS] = Stats(config.dashboard.recent_requests, config.dashboard.max_tracked_ids)
    app.cleanup_ctx.append(access_log.lifetime)
    app[OBSERVERS] = observers.Observers(app)
    app.cleanup_ctx.append(observers.lifetime)  # cleaned up before the access log closes
    app.cleanup_ctx.append(metrics.lifetime)
    if config.metrics.enabled:
        add_admin_routes(app, [web.route("GET", "/metrics", metrics.metrics_endpoint)])
    if config.dashboard.enabled:
        add_admin_routes(app, dashboard.setup(app, config))
    return app
