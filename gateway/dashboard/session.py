"""Dashboard sign-in: an admin key (``admin_keys``) buys an HMAC-signed session token kept in an
HttpOnly, SameSite=Strict cookie (``Secure`` over TLS). The cookie never holds the key.

The token names the admin, a fingerprint of the admin key's hash, its expiry and a random nonce.
Every dashboard request checks it against the current configuration's admin key ring
(gateway/keyring.py), so an admin key that is removed, disabled, expired or rotated loses its
sessions at their next request. Sign-out revokes the token's nonce in this process and, with
several workers, in every sibling (gateway/control.py broadcast). Logout needs a CSRF token
derived from the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.config import KeyConfig
from gateway.keyring import fingerprint
from gateway.runtime import Runtime

COOKIE = "opengateway_dashboard"
#: Tokens longer than this are not even checked.
MAX_TOKEN_CHARS = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Claims(msgspec.Struct, array_like=True):
    admin: str
    key: str  # fingerprint of the admin key's hash
    expires_at: int
    nonce: str


_claims_decoder = msgspec.json.Decoder(_Claims)


class Sessions:
    """The process's part of dashboard sessions: the fallback signing secret and the revocations.
    The configuration's part (``dashboard.session_secret``, ``session_ttl_s``, the admin keys)
    is read from the Runtime each request pinned."""

    def __init__(self, fallback_secret: str | None = None, clock: Callable[[], float] = time.time) -> None:
        # No configured secret: the supervisor's per-run one, or this process's own (sessions then
        # do not survive a restart).
        self._fallback_secret = (fallback_secret or secrets.token_urlsafe(32)).encode()
        self._clock = clock
        #: Revoked nonces, until their token would have expired anyway.
        self._revoked: dict[str, float] = {}
        #: Set on a worker: tells the siblings about a sign-out (gateway/worker.py).
        self.broadcast: Callable[[dict[str, Any]], None] | None = None

    def _secret(self, runtime: Runtime) -> bytes:
        configured = runtime.config.dashboard.session_secret
        return configured.encode() if configured else self._fallback_secret

    def _sign(self, secret: bytes, payload: str) -> str:
        return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, admin: KeyConfig, runtime: Runtime) -> str:
        ttl_s = runtime.config.dashboard.session_ttl_s
        claims = _Claims(admin.name, fingerprint(admin), int(self._clock() + ttl_s), secrets.token_urlsafe(12))
        payload = _b64(msgspec.json.encode(claims))
        return f"{payload}.{self._sign(self._secret(runtime), payload)}"

    def _claims(self, token: str, runtime: Runtime) -> _Claims | None:
        payload, _, signature = token.partition(".")
        if not signature or len(token) > MAX_TOKEN_CHARS:
            return None
        if not hmac.compare_digest(signature, self._sign(self._secret(runtime), payload)):
            return None
        try:
            claims = _claims_decoder.decode(_unb64(payload))
        except (ValueError, msgspec.DecodeError):
            return None
        return claims

    def verify(self, token: str, runtime: Runtime) -> str | None:
        """The admin a valid token names, if that admin key is still valid and the session was
        not signed out."""
        claims = self._claims(token, runtime)
        if claims is None or claims.expires_at < self._clock() or claims.nonce in self._revoked:
            return None
        if runtime.admins.still_valid(claims.admin, claims.key) is None:
            return None  # removed, disabled, expired or rotated since the sign-in
        return claims.admin

    def revoke(self, token: str, runtime: Runtime) -> None:
        """Sign a session out, here and (through the supervisor) on every sibling worker."""
        claims = self._claims(token, runtime)
        if claims is None:
            return
        self.revoked(claims.nonce, claims.expires_at)
        if self.broadcast is not None:
            self.broadcast({"revoke_session": claims.nonce, "until": claims.expires_at})

    def revoked(self, nonce: str, until: float) -> None:
        now = self._clock()
        if len(self._revoked) > 1024:  # bounded: forget revocations whose tokens have expired anyway
            self._revoked = {n: t for n, t in self._revoked.items() if t >= now}
        self._revoked[nonce] = until

    def on_broadcast(self, payload: dict[str, Any]) -> None:
        """A sibling worker's sign-out."""
        nonce, until = payload.get("revoke_session"), payload.get("until")
        if isinstance(nonce, str) and isinstance(until, (int, float)):
            self.revoked(nonce, float(until))

    def csrf_token(self, token: str, runtime: Runtime) -> str:
        return self._sign(self._secret(runtime), "csrf:" + token)
