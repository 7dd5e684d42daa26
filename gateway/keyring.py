"""The one answer to "is this key valid?": gateway keys and admin keys, hashed with SHA-256.

A ``KeyRing`` holds one configuration's keys (``keys`` or ``admin_keys``). The API auth, the admin
routes, the dashboard sign-in and every dashboard request ask it, so ``enabled`` and
``expires_at`` mean the same everywhere. Lookups are by SHA-256 digest, so their timing says
nothing usable about a key; the final comparison is constant-time all the same. "May this key
use this model" is answered once too, by ``may_use``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Iterable

from multidict import CIMultiDictProxy

from gateway.config import KeyConfig, key_hash
from gateway.errors import PermissionDenied, Unauthorized

__all__ = ["KeyRing", "bearer_token", "fingerprint", "forbidden", "key_digest", "key_hash", "may_use"]

#: Longer tokens are refused without hashing them.
MAX_KEY_CHARS = 512
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="opengateway"'}


def key_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _digest_of(key: KeyConfig) -> bytes:
    return bytes.fromhex(key.hash.removeprefix("sha256:"))


def unauthorized(message: str, code: str | None = None) -> Unauthorized:
    return Unauthorized(message, code=code, headers=dict(_CHALLENGE))


def bearer_token(headers: CIMultiDictProxy[str]) -> str:
    """The key from ``Authorization: Bearer <key>``; the scheme is case-insensitive (RFC 7235).
    Never echoes what was sent: a key under another scheme is still a key."""
    values = headers.getall("Authorization", [])
    if not values:
        raise unauthorized(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    if len(values) > 1:
        raise unauthorized("More than one Authorization header was sent; send exactly one.")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Malformed Authorization header: expected 'Authorization: Bearer YOUR_KEY'.")
    if len(token) > MAX_KEY_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise unauthorized("Incorrect API key provided.")
    return token


def fingerprint(key: KeyConfig) -> str:
    """A short, non-reversible name for a key's hash (a dashboard session is bound to it, so a
    rotated key ends the sessions of the old one)."""
    return hashlib.sha256(key.hash.encode()).hexdigest()[:16]


class KeyRing:
    def __init__(self, keys: Iterable[KeyConfig]) -> None:
        #: digest -> (the digest as configured, its key): the final comparison needs no decoding.
        self._by_digest: dict[bytes, tuple[bytes, KeyConfig]] = {}
        self._by_name: dict[str, KeyConfig] = {}
        for key in keys:
            digest = _digest_of(key)
            self._by_digest[digest] = (digest, key)
            self._by_name[key.name] = key
        self.digests = frozenset(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def holds(self, token: str) -> bool:
        """Whether ``token`` is one of these keys, valid or not (admin routes tell a gateway key
        that is not an admin key from a wrong key)."""
        digest = key_digest(token)
        found = self._by_digest.get(digest)
        return found is not None and hmac.compare_digest(found[0], digest)

    def authenticate(self, token: str, now: datetime | None = None) -> KeyConfig:
        """The key ``token`` is, if it is enabled and unexpired; otherwise the 401 to answer."""
        digest = key_digest(token)
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest) or not found[1].enabled:
            raise unauthorized("Incorrect API key provided.")
        key = found[1]
        if key.expires_at is not None and (now or datetime.now(UTC)) >= key.expires_at:
            raise unauthorized(f"This API key expired at {key.expires_at.isoformat()}; ask for a new one.",
                               code="api_key_expired")
        return key

    def still_valid(self, name: str, key_fingerprint: str, now: datetime | None = None) -> KeyConfig | None:
        """The key named ``name`` if it still exists with the same hash and is enabled and
        unexpired (a dashboard session checks this on every request)."""
        key = self._by_name.get(name)
        if key is None or not key.enabled or not hmac.compare_digest(fingerprint(key), key_fingerprint):
            return None
        if key.expires_at is not None and (now or datetime.now(UTC)) >= key.expires_at:
            return None
        return key


def may_use(key: KeyConfig, model: str, as_fallback: bool = False) -> bool:
    """Whether ``key`` may use ``model`` (as the model asked, or as a fallback)."""
    globs = key.fallback_models if as_fallback and key.fallback_models is not None else key.models
    return "*" in globs or any(fnmatch.fnmatchcase(model, g) for g in globs)  # "*" is the default


def forbidden(model: str, key: KeyConfig, as_fallback: bool = False) -> PermissionDenied:
    role = "as a fallback " if as_fallback else ""
    return PermissionDenied(f"The API key '{key.name}' is not allowed to use the model '{model}' {role}"
                            "through this gateway.", param="extra.fallbacks" if as_fallback else "model",
                            code="model_not_allowed")
