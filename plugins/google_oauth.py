"""OAuth 2 access tokens for Vertex AI from a service-account key (the JWT bearer grant), for the
``google`` provider.

The key file's ``private_key`` signs (RS256, PyJWT + cryptography: the ``vertex`` extra) a JWT
whose ``iss`` is the service account, ``scope`` Vertex's, ``aud`` Google's token endpoint and
lifetime one hour; the JWT is exchanged at the key's ``token_uri`` through the gateway's upstream
interface, and the access token is reused until 225 s before it expires (google-auth's refresh
threshold), one exchange at a time however many requests wait for it. Sources: Google's "Using
OAuth 2.0 for Server to Server Applications" and google-auth's ``service_account`` / ``_client``
(research notes, G-AUTH / OFFICIAL-G-OAUTH).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

import msgspec

from gateway.provider import ProviderError, UpstreamHTTP, check_url

#: What Vertex AI asks of a token.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: The JWT's audience: Google's token endpoint, whatever ``token_uri`` the key names.
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The longest lifetime Google accepts for the assertion (one hour).
ASSERTION_LIFETIME_S = 3600
#: A token is renewed this long before it expires (google-auth's REFRESH_THRESHOLD, 3 min 45 s).
REFRESH_MARGIN_S = 225.0


class ServiceAccountKey(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a service-account key file the grant uses (the file has more)."""

    client_email: str
    private_key: str
    private_key_id: str | None = None
    token_uri: str = TOKEN_AUDIENCE
    project_id: str | None = None


class _TokenAnswer(msgspec.Struct):
    access_token: str
    expires_in: int | float | str = 3600


class _TokenError(msgspec.Struct):
    error: str = ""
    error_description: str = ""


def read_key(text: str) -> tuple[ServiceAccountKey, Any]:
    """The key and its loaded private key; ValueError (a config problem) when either is unusable."""
    try:
        key = msgspec.json.decode(text, type=ServiceAccountKey)
    except msgspec.DecodeError as exc:
        raise ValueError(f"the service-account key is not a key file's JSON: {exc}") from None
    check_url(key.token_uri)
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        import jwt  # noqa: F401 - checked here, at start-up, rather than at the first request
    except ImportError:
        raise ValueError("api: vertex needs PyJWT and cryptography: pip install 'opengateway[vertex]'") from None
    try:
        private = load_pem_private_key(key.private_key.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("the service-account key's private_key is not a PEM private key") from None
    return key, private


class TokenSource:
    """Access tokens for one service account, cached until shortly before they expire."""

    def __init__(self, key_text: str, http: UpstreamHTTP) -> None:
        self.key, self._private = read_key(key_text)
        self._http = http
        self._token: str | None = None
        self._fresh_until = 0.0  # time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def current(self) -> str | None:
        """The token in use (for scrubbing it from error text)."""
        return self._token

    async def token(self, timeout_s: float) -> str:
        """A valid access token, exchanged for a new one when needed within ``timeout_s``."""
        if self._token is not None and time.monotonic() < self._fresh_until:
            return self._token
        try:
            async with asyncio.timeout(timeout_s):
                async with self._lock:  # one exchange; the others wait for its token
                    if self._token is None or time.monotonic() >= self._fresh_until:
                        await self._exchange(timeout_s)
        except TimeoutError:
            raise ProviderError(f"Google's token endpoint did not answer within {timeout_s:.3g} s.",
                                code="timeout", timeout=True, retryable=True) from None
        assert self._token is not None
        return self._token

    def assertion(self) -> str:
        import jwt

        now = int(time.time())
        claims = {"iss": self.key.client_email, "scope": CLOUD_PLATFORM_SCOPE, "aud": TOKEN_AUDIENCE,
                  "iat": now, "exp": now + ASSERTION_LIFETIME_S}
        headers = {"kid": self.key.private_key_id} if self.key.private_key_id else None
        return jwt.encode(claims, self._private, algorithm="RS256", headers=headers)

    async def _exchange(self, timeout_s: float) -> None:
        body = urlencode({"grant_type": JWT_GRANT_TYPE, "assertion": self.assertion()}).encode()
        started = time.monotonic()
        status, _, raw = await self._http.request(
            "POST", self.key.token_uri, upstream="Google's token endpoint", timeout_s=timeout_s, body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            raise _token_error(status, raw)
        try:
            answer = msgspec.json.decode(raw, type=_TokenAnswer)
            lifetime_s = float(answer.expires_in)
        except (msgspec.DecodeError, ValueError):
            raise ProviderError("Google's token endpoint answered 200 without an access token.", status=502,
                                code="invalid_upstream_response") from None
        self._token = answer.access_token
        self._fresh_until = started + lifetime_s - REFRESH_MARGIN_S


def _token_error(status: int, raw: bytes) -> ProviderError:
    try:
        err = msgspec.json.decode(raw, type=_TokenError)
    except msgspec.DecodeError:
        err = _TokenError()
    said = ": ".join(part for part in (err.error, err.error_description) if part) or f"HTTP {status}"
    if status >= 500 or status == 429:
        return ProviderError(f"Google's token endpoint failed ({said}).", status=status,
                             type="server_error" if status >= 500 else "requests")
    # invalid_grant (a revoked key, a clock too far off), invalid_client...: the operator's credential.
    return ProviderError(f"Google's token endpoint refused the service-account key ({said}).", status=401,
                         code="invalid_api_key", type="invalid_request_error")
