"""Dashboard sign-in: an admin key (``admin_keys``, hashed like ``keys``) buys an HMAC-signed
session token kept in an HttpOnly, SameSite=Strict cookie. The cookie never holds the key; the
token names the admin and its expiry; logout needs a CSRF token derived from the session."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import msgspec

from gateway.config import KeyConfig

COOKIE = "opengateway_dashboard"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Claims(msgspec.Struct, array_like=True):
    admin: str
    expires_at: int
    nonce: str


_claims_decoder = msgspec.json.Decoder(_Claims)


class Sessions:
    def __init__(self, secret: str | None, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        # No configured secret: a per-process one (sessions then do not survive a restart).
        self._secret = (secret or secrets.token_urlsafe(32)).encode()
        self.ttl_s = ttl_s
        self._clock = clock

    @staticmethod
    def admin_for_key(key: str, admins: list[KeyConfig]) -> str | None:
        """The admin's name when ``key`` is one of the admin keys (constant-time comparison)."""
        digest = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        found = None
        for admin in admins:
            if hmac.compare_digest(admin.hash, digest) and admin.enabled:
                found = admin.name
        return found

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, admin: str) -> str:
        claims = _Claims(admin, int(self._clock() + self.ttl_s), secrets.token_urlsafe(12))
        payload = _b64(msgspec.json.encode(claims))
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, admins: list[KeyConfig]) -> str | None:
        """The admin a valid, unexpired token names, if that admin still exists."""
        payload, _, signature = token.partition(".")
        if not signature or len(token) > 1024 or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            claims = _claims_decoder.decode(_unb64(payload))
        except (ValueError, msgspec.DecodeError):
            return None
        if claims.expires_at < self._clock():
            return None
        if not any(a.name == claims.admin and a.enabled for a in admins):
            return None  # the admin key was removed by a reload
        return claims.admin

    def csrf_token(self, token: str) -> str:
        return self._sign("csrf:" + token)
