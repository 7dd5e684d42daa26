"""Gateway keys: ``Authorization: Bearer <key>`` checked by the pinned runtime's key ring."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import PRINCIPAL, RECORD, RUNTIME
from gateway.keyring import bearer_token
from gateway.middleware import Handler, Next


@web.middleware
def auth_middleware(request: web.Request, handler: Handler) -> Next:
    match = request.match_info
    if getattr(match.handler, "public", False) or getattr(match, "http_exception", None) is not None:
        return handler(request)
    key = request[PRINCIPAL] = request[RUNTIME].keys.authenticate(bearer_token(request.headers))
    request[RECORD].key_name = key.name
    return handler(request)
