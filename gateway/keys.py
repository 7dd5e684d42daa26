"""Typed application and request state: every key declared once, no string keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import msgspec
from aiohttp import web

from gateway.api import Attempt, ImageGenerationRequest, Usage
from gateway.cost import Cost, Tokens

if TYPE_CHECKING:
    from gateway.config import Config, KeyConfig
    from gateway.limits import LimitsBackend
    from gateway.reload import Reloader
    from gateway.registry import Registry
    from gateway.router import Router
    from gateway.state import GatewayState


class Identity(msgspec.Struct, frozen=True):
    """The analytics headers, bounded and sanitised; never used as metric labels."""

    user_id: str | None = None
    session_id: str | None = None


class RequestRecord(msgspec.Struct, kw_only=True):
    """What one request did, filled in along the chain and read by metrics and the access log."""

    request_id: str
    route: str = "unmatched"
    method: str = "GET"
    #: The client's address: the peer, or X-Forwarded-For via server.trusted_proxies (gateway/forwarded.py).
    client_ip: str | None = None
    key_name: str | None = None
    identity: Identity = Identity()
    model_asked: str | None = None
    #: The configured model id the request resolved to (bounded: safe as a metric label).
    model: str | None = None
    model_served: str | None = None
    provider: str | None = None
    region: str | None = None
    attempts: list[Attempt] = []
    usage: Usage | None = None
    images: int = 0
    upstream_s: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    status: int = 0
    error_code: str | None = None
    #: Set from the answering model's price (gateway/cost.py) when the upstream answered.
    tokens: Tokens | None = None
    cost: Cost | None = None
    #: Unix time the request arrived, and its duration as the outermost middleware saw it.
    started_at: float = 0.0
    duration_s: float = 0.0


# Application state.
STATE = web.AppKey("state", "GatewayState")
SESSION = web.AppKey("session", aiohttp.ClientSession)
#: The providers' pooled upstream client (gateway/http_client.py).
HTTP = web.AppKey("http", "HTTPClient")

# Request state.
RECORD = web.RequestKey("record", RequestRecord)
PRINCIPAL = web.RequestKey("principal", "KeyConfig")
BODY = web.RequestKey("body", ImageGenerationRequest)
UNKNOWN_FIELDS = web.RequestKey("unknown_fields", dict)
LIFECYCLE = web.AppKey("lifecycle", "Lifecycle")
CONFIG = web.AppKey("config", "Config")
# Observability (gateway/access_log.py, gateway/dashboard/stats.py); None when turned off.
ACCESS_LOG = web.AppKey("access_log", "AccessLog | None")
STATS = web.AppKey("stats", "Stats")
#: Where finished requests go to be counted, shown and logged (gateway/observers.py).
OBSERVERS = web.AppKey("observers", "Observers")
DASHBOARD_SESSIONS = web.AppKey("dashboard_sessions", "Sessions")
# Limits and reload (gateway/limits/, gateway/reload.py): the counters outlive a reload.
LIMITS = web.AppKey("limits", "LimitsBackend")
LIMIT_HEADERS = web.RequestKey("limit_headers", dict)
RELOADER = web.AppKey("reloader", "Reloader")
