"""The operator dashboard at ``/dashboard`` (aiohttp-jinja2, autoescaped), behind an admin key."""

from __future__ import annotations

import datetime

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.config import Config
from gateway.dashboard.session import Sessions
from gateway.dashboard.views import ROUTES
from gateway.keys import DASHBOARD_SESSIONS


def _when(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.UTC).strftime("%H:%M:%S")


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def setup(app: web.Application, config: Config) -> list[web.RouteDef]:
    """Prepare ``app`` for the dashboard and return its routes (the caller registers them)."""
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("gateway.dashboard", "templates"),
                         autoescape=True, filters={"when": _when, "usd": _usd})
    app[DASHBOARD_SESSIONS] = Sessions(config.dashboard.session_secret, config.dashboard.session_ttl_s)
    return list(ROUTES)
