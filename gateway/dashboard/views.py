"""The dashboard's routes: the page, its JSON, sign-in and sign-out (all behind an admin key).

Every route reads the configuration its request pinned: ``dashboard.enabled: false`` makes them
answer 404 like an unknown path, and an admin key is checked by the current admin key ring.
"""

from __future__ import annotations

import datetime
import hmac
import time
from typing import Any

import aiohttp_jinja2
import msgspec
from aiohttp import web

from gateway.appkeys import DASHBOARD_SESSIONS as SESSIONS
from gateway.appkeys import RUNTIME, STATS
from gateway.dashboard.session import COOKIE
from gateway.dashboard.stats import ProviderRow, Recent, Row, Stats
from gateway.errors import NotFound, PermissionDenied, Unauthorized
from gateway.forwarded import came_over_tls
from gateway.keyring import bearer_token
from gateway.metrics import breaker_snapshot
from gateway.middleware import public
from gateway.runtime import Runtime

_TOP = 10
# No script runs on the page at all: it refreshes with <meta http-equiv="refresh">.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Overview(msgspec.Struct):
    uptime_s: float
    requests: int
    server_errors: int
    client_errors: int
    error_rate: float | None
    images: int
    cost_usd: float
    cost_unknown: int
    requests_last_5m: int
    server_errors_last_5m: int
    latency_ms: dict[str, float | None]


class Snapshot(msgspec.Struct):
    overview: Overview
    models: dict[str, Row]
    providers: dict[str, ProviderRow]
    breakers: list[dict[str, Any]]
    top_users: list[tuple[str, Row]]
    top_sessions: list[tuple[str, Row]]
    recent: list[Recent]


def _top(table: dict[str, Row]) -> list[tuple[str, Row]]:
    return sorted(table.items(), key=lambda kv: (kv[1].images, kv[1].cost_usd), reverse=True)[:_TOP]


def snapshot(app: web.Application, runtime: Runtime) -> Snapshot:
    stats: Stats = app[STATS]
    total = stats.total
    last_requests, last_errors = stats.recent_rate()
    return Snapshot(
        Overview(round(time.time() - stats.started_at, 1), total.requests, total.errors, stats.client_errors,
                 round(total.errors / total.requests, 4) if total.requests else None, total.images,
                 round(total.cost_usd, 6), total.cost_unknown, last_requests, last_errors, stats.percentiles_ms()),
        dict(sorted(stats.models.items())), dict(sorted(stats.providers.items())),
        breaker_snapshot(runtime),
        _top(stats.users), _top(stats.sessions), stats.recent_requests())


def _runtime(request: web.Request) -> Runtime:
    runtime = request[RUNTIME]
    if not runtime.config.dashboard.enabled:
        raise NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    return runtime


def _admin(request: web.Request, runtime: Runtime) -> tuple[str | None, str | None]:
    """The signed-in admin, and the session token if it came from the cookie."""
    if "Authorization" in request.headers:
        try:
            return runtime.admins.authenticate(bearer_token(request.headers)).name, None
        except Unauthorized:
            raise Unauthorized("Incorrect admin key provided.") from None
    token = request.cookies.get(COOKIE)
    if token and (name := request.app[SESSIONS].verify(token, runtime)) is not None:
        return name, token
    return None, None


def _page(template: str, request: web.Request, context: dict[str, Any], status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(_HEADERS)
    return response


@public
async def dashboard(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    admin, token = _admin(request, runtime)
    if admin is None:
        response = _page("login.html", request, {"error": None}, status=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="dashboard"'
        return response
    return _page("dashboard.html", request, {
        "admin": admin, "s": snapshot(request.app, runtime), "refresh_s": runtime.config.dashboard.refresh_s,
        "csrf": request.app[SESSIONS].csrf_token(token, runtime) if token else None})


@public
async def data(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    if _admin(request, runtime)[0] is None:
        raise Unauthorized("Sign in to the dashboard or send an admin key.")
    return web.Response(body=msgspec.json.encode(snapshot(request.app, runtime)), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


@public
async def login(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    form = await request.post()
    key = form.get("key")
    admin = None
    if isinstance(key, str) and 0 < len(key) <= 512:
        try:
            admin = runtime.admins.authenticate(key)
        except Unauthorized:
            admin = None
    if admin is None:
        return _page("login.html", request, {"error": "Incorrect admin key."}, status=401)
    response = web.HTTPSeeOther("/dashboard")
    sessions = request.app[SESSIONS]
    response.set_cookie(COOKIE, sessions.issue(admin, runtime), max_age=int(runtime.config.dashboard.session_ttl_s),
                        path="/dashboard", httponly=True, samesite="Strict",
                        secure=came_over_tls(request, runtime.config.server.trusted_proxies))
    raise response


@public
async def logout(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    token = request.cookies.get(COOKIE)
    form = await request.post()
    sessions = request.app[SESSIONS]
    sent = form.get("csrf")
    if not token or not isinstance(sent, str) or not hmac.compare_digest(sent, sessions.csrf_token(token, runtime)):
        raise PermissionDenied("Missing or invalid CSRF token.", code="invalid_csrf_token")
    sessions.revoke(token, runtime)
    response = web.HTTPSeeOther("/dashboard")
    response.del_cookie(COOKIE, path="/dashboard")
    raise response


def _when(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.UTC).strftime("%H:%M:%S")


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


#: The templates' filters (gateway/app.py sets up aiohttp-jinja2 with them).
FILTERS = {"when": _when, "usd": _usd}

ROUTES = [
    web.route("GET", "/dashboard", dashboard),
    web.route("GET", "/dashboard/data.json", data),
    web.route("POST", "/dashboard/login", login),
    web.route("POST", "/dashboard/logout", logout),
]
