"""``create_app(config)``: the middleware chain, the routes and the app's lifetime resources."""

from __future__ import annotations

import logging
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from gateway import handlers, provider
from gateway.config import Config
from gateway.keys import CONFIG, LIFECYCLE, SESSION, STATE
from gateway.middleware.auth import auth_middleware
from gateway.middleware.errors import errors_middleware
from gateway.middleware.identity import identity_middleware
from gateway.middleware.metrics import metrics_middleware
from gateway.middleware.validation import validation_middleware
from gateway.state import GatewayState, Lifecycle

log = logging.getLogger("opengateway")

#: The middleware chain, outermost first. This list is the only place the order is decided.
MIDDLEWARES = (
    metrics_middleware,     # request record, in-flight gauge, status and duration of everything below
    errors_middleware,      # GatewayError / aiohttp HTTP errors / crashes -> OpenAI error JSON
    auth_middleware,        # Authorization: Bearer -> the key's policy, or 401
    identity_middleware,    # x-opengateway-user-id / -session-id -> request record
    validation_middleware,  # JSON body -> ImageGenerationRequest, or 400 with OpenAI's codes
)


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    """One pooled ClientSession per app, and the providers built on it."""
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(limit=config.server.upstream_pool_size, limit_per_host=0,
                                     ttl_dns_cache=300, keepalive_timeout=30)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                    auto_decompress=True, trust_env=False)
    provider.max_upstream_body_bytes = config.server.max_upstream_body_bytes
    app[SESSION] = session
    try:
        app[STATE] = GatewayState.build(config, session)
    except BaseException:
        await session.close()
        raise
    yield
    await app[STATE].registry.close()
    await session.close()


async def _request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    from gateway.keys import RECORD

    record = request.get(RECORD)
    if record is not None:
        response.headers["x-request-id"] = record.request_id


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=config.server.max_body_bytes,
                          handler_args={"keepalive_timeout": config.server.keepalive_timeout_s})
    app[CONFIG] = config
    app[LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.append(_upstream_session)
    app.on_response_prepare.append(_request_id_header)
    app.router.add_post("/v1/images/generations", handlers.create_image)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    return app
