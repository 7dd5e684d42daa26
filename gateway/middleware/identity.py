"""The analytics headers: optional, bounded, printable; attached to the request record."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.appkeys import RECORD
from gateway.record import Identity
from gateway.middleware import Handler, Next

USER_HEADER = "x-opengateway-user-id"
SESSION_HEADER = "x-opengateway-session-id"
MAX_CHARS = 256


def _header(request: web.Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_CHARS or not value.isprintable():
        raise InvalidRequest(
            f"Invalid value for header '{name}': expected 1 to {MAX_CHARS} printable characters "
            "with no control characters.", param=name, code="invalid_header")
    return value


@web.middleware
def identity_middleware(request: web.Request, handler: Handler) -> Next:
    user_id = _header(request, USER_HEADER)
    session_id = _header(request, SESSION_HEADER)
    if user_id is not None or session_id is not None:
        request[RECORD].identity = Identity(user_id, session_id)
    return handler(request)
