"""Bearer gateway keys: hashed with SHA-256, looked up, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from aiohttp import web

from gateway.errors import Unauthorized
from gateway.keys import PRINCIPAL, RECORD, STATE
from gateway.middleware import Handler, Next

MAX_KEY_CHARS = 512


def _unauthorized(message: str, code: str | None = None) -> Unauthorized:
    return Unauthorized(message, code=code, headers={"WWW-Authenticate": 'Bearer realm="opengateway"'})


def bearer_token(request: web.Request) -> str:
    """The key from ``Authorization: Bearer <key>``; the scheme is case-insensitive (RFC 7235)."""
    values = request.headers.getall("Authorization", [])
    if not values:
        raise _unauthorized(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    if len(values) > 1:
        raise _unauthorized("More than one Authorization header was sent; send exactly one.")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(
            "Malformed Authorization header: expected 'Authorization: Bearer YOUR_KEY'.")
    if len(token) > MAX_KEY_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise _unauthorized("Incorrect API key provided.")
    return token


def key_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@web.middleware
def auth_middleware(request: web.Request, handler: Handler) -> Next:
    match = request.match_info
    if getattr(match.handler, "public", False) or getattr(match, "http_exception", None) is not None:
        return handler(request)
    digest = key_digest(bearer_token(request))
    # The lookup is by SHA-256 digest, so its timing reveals nothing usable about the key;
    # the final comparison is constant-time all the same.
    key = request.app[STATE].keys_by_digest.get(digest)
    if key is None or not hmac.compare_digest(key[0], digest) or not key[1].enabled:
        raise _unauthorized("Incorrect API key provided.")
    if key[1].expires_at is not None and datetime.now(UTC) >= key[1].expires_at:
        raise _unauthorized(f"This API key expired at {key[1].expires_at.isoformat()}; ask for a new one.",
                            code="api_key_expired")
    request[PRINCIPAL] = key[1]
    request[RECORD].key_name = key[1].name
    return handler(request)
