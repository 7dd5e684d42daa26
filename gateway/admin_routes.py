"""Operator routes outside the dashboard: ``POST /admin/reload`` and ``GET /metrics``."""

from __future__ import annotations

import hmac

import msgspec
from aiohttp import web

from gateway import metrics
from gateway.appkeys import RELOADER, RUNTIME
from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied, Unauthorized
from gateway.keyring import bearer_token
from gateway.middleware import public
from gateway.runtime import Runtime


def require_admin(request: web.Request, runtime: Runtime) -> str:
    """The admin key's name, or the error: 401 for a wrong, disabled or expired key, 403 for a
    valid gateway key that is not an admin key."""
    token = bearer_token(request.headers)
    try:
        return runtime.admins.authenticate(token).name
    except Unauthorized:
        if runtime.keys.holds(token):
            raise PermissionDenied("This endpoint needs an admin key (admin_keys in the config).",
                                   code="admin_key_required") from None
        raise


@public  # authenticated here with an admin key, not by the gateway-key middleware
async def admin_reload(request: web.Request) -> web.Response:
    require_admin(request, request[RUNTIME])
    outcome = await request.app[RELOADER].reload()
    problems = msgspec.to_builtins(outcome.problems)
    if outcome.status == "failed":  # a worker did not answer: none of them switched
        raise GatewayError(f"The reload did not reach every worker; every worker keeps the running config. "
                           f"{problems[0]['message'] if problems else ''}".rstrip(), status=503,
                           code="reload_failed", extra={"problems": problems, "workers": outcome.workers,
                                                         "of": outcome.of})
    if outcome.status == "refused":
        raise InvalidRequest(f"The new config was refused ({len(problems)} problem(s)); the running config "
                             "stays.", code="invalid_config", extra={"problems": problems})
    return web.Response(body=msgspec.json.encode(outcome), content_type="application/json")


@public  # not a gateway key: /metrics has its own optional token (metrics.bearer_token)
async def metrics_endpoint(request: web.Request) -> web.Response:
    runtime = request[RUNTIME]
    settings = runtime.config.metrics
    if not settings.enabled:
        raise NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    token = settings.bearer_token
    if token is not None:
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
            raise Unauthorized("A valid metrics bearer token is required.",
                               headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    metrics.refresh_breakers(runtime)
    metrics.refresh_shutdowns(runtime)
    metrics.publish()
    # Gathering is CPU work proportional to the series; it stays on the loop (milliseconds).
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})
