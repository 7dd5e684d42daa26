"""Typed application and request state: every key declared once, no string keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import msgspec
from aiohttp import web

from gateway.api import Attempt, ImageGenerationRequest, Usage

if TYPE_CHECKING:
    from gateway.config import Config, KeyConfig
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


# Application state.
STATE = web.AppKey("state", "GatewayState")
SESSION = web.AppKey("session", aiohttp.ClientSession)

# Request state.
RECORD = web.RequestKey("record", RequestRecord)
PRINCIPAL = web.RequestKey("principal", "KeyConfig")
BODY = web.RequestKey("body", ImageGenerationRequest)
UNKNOWN_FIELDS = web.RequestKey("unknown_fields", dict)
LIFECYCLE = web.AppKey("lifecycle", "Lifecycle")
CONFIG = web.AppKey("config", "Config")
