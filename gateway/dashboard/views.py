"""The dashboard's routes: the page, its JSON, sign-in and sign-out (all behind an admin key)."""

from __future__ import annotations

import hmac
import time
from typing import Any

import aiohttp_jinja2
import msgspec
from aiohttp import web

from gateway.dashboard.session import COOKIE, Sessions
from gateway.dashboard.stats import ProviderRow, Recent, Row, Stats
from gateway.errors import PermissionDenied, Unauthorized
from gateway.keys import CONFIG, STATE, STATS
from gateway.keys import DASHBOARD_SESSIONS as SESSIONS
from gateway.metrics import breaker_snapshot
from gateway.middleware import public
from gateway.middleware.auth import bearer_token

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


def snapshot(app: web.Application) -> Snapshot:
    stats: Stats = app[STATS]
    total = stats.total
    last_requests, last_errors = stats.recent_rate()
    return Snapshot(
        Overview(round(time.time() - stats.started_at, 1), total.requests, total.errors, stats.client_errors,
                 round(total.errors / total.requests, 4) if total.requests else None, total.images,
                 round(total.cost_usd, 6), total.cost_unknown, last_requests, last_errors, stats.percentiles_ms()),
        dict(sorted(stats.models.items())), dict(sorted(stats.providers.items())),
        breaker_snapshot(app[STATE]),
        _top(stats.users), _top(stats.sessions), stats.recent_requests())


def _admin(request: web.Request) -> tuple[str | None, str | None]:
    """The signed-in admin, and the session token if it came from the cookie."""
    admins = request.app[STATE].config.admin_keys
    if "Authorization" in request.headers:
        name = Sessions.admin_for_key(bearer_token(request), admins)
        if name is None:
            raise Unauthorized("Incorrect admin key provided.")
        return name, None
    token = request.cookies.get(COOKIE)
    if token and (name := request.app[SESSIONS].verify(token, admins)) is not None:
        return name, token
    return None, None


def _page(template: str, request: web.Request, context: dict[str, Any], status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(_HEADERS)
    return response


@public
async def dashboard(request: web.Request) -> web.Response:
    admin, token = _admin(request)
    if admin is None:
        response = _page("login.html", request, {"error": None}, status=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="dashboard"'
        return response
    return _page("dashboard.html", request, {
        "admin": admin, "s": snapshot(request.app), "refresh_s": request.app[CONFIG].dashboard.refresh_s,
        "csrf": request.app[SESSIONS].csrf_token(token) if token else None})


@public
async def data(request: web.Request) -> web.Response:
    if _admin(request)[0] is None:
        raise Unauthorized("Sign in to the dashboard or send an admin key.")
    return web.Response(body=msgspec.json.encode(snapshot(request.app)), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


@public
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    key = form.get("key")
    name = None
    if isinstance(key, str) and 0 < len(key) <= 512:
        name = Sessions.admin_for_key(key, request.app[STATE].config.admin_keys)
    if name is None:
        return _page("login.html", request, {"error": "Incorrect admin key."}, status=401)
    response = web.HTTPSeeOther("/dashboard")
    sessions = request.app[SESSIONS]
    response.set_cookie(COOKIE, sessions.issue(name), max_age=int(sessions.ttl_s), path="/dashboard",
                        httponly=True, samesite="Strict", secure=request.secure)
    raise response


@public
async def logout(request: web.Request) -> web.Response:
    token = request.cookies.get(COOKIE)
    form = await request.post()
    sessions = request.app[SESSIONS]
    sent = form.get("csrf")
    if not token or not isinstance(sent, str) or not hmac.compare_digest(sent, sessions.csrf_token(token)):
        raise PermissionDenied("Missing or invalid CSRF token.", code="invalid_csrf_token")
    response = web.HTTPSeeOther("/dashboard")
    response.del_cookie(COOKIE, path="/dashboard")
    raise response


ROUTES = [
    web.route("GET", "/dashboard", dashboard),
    web.route("GET", "/dashboard/data.json", data),
    web.route("POST", "/dashboard/login", login),
    web.route("POST", "/dashboard/logout", logout),
]
