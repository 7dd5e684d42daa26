"""Cross-origin calls from web pages (CORS): which origins may call the API from a browser, and
the headers that tell the browser so. Built once per Runtime from ``config.cors``
(gateway/runtime.py); None while ``cors.allow_origins`` is empty, which is the default.

The gateway's keys travel in the ``Authorization`` header, never in cookies, so a page on a
foreign origin can only use a key its user gave it: CORS decides which pages the browser lets
read the answers, not who may call (the key does). The preflight is answered before auth, as
browsers send it without the page's headers (gateway/middleware/cors.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.config import CorsConfig

#: Request headers always allowed: the key and the body's type, the analytics headers, a client's
#: request id, idempotency key and W3C trace context (a page's OpenTelemetry instrumentation), and what the official openai-node SDK adds from a browser
#: (``dangerouslyAllowBrowser``): its ``X-Stainless-*`` platform, retry and timeout headers, and
#: ``OpenAI-Organization`` / ``OpenAI-Project`` when the client sets them (src/client.ts
#: ``buildHeaders`` and src/internal/detect-platform.ts of github.com/openai/openai-node).
ALWAYS_ALLOWED_HEADERS: tuple[str, ...] = (
    "authorization", "content-type", "x-opengateway-user-id", "x-opengateway-session-id",
    "idempotency-key", "x-request-id", "openai-organization", "openai-project", "traceparent", "tracestate",
    "x-stainless-lang", "x-stainless-package-version", "x-stainless-os", "x-stainless-arch",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count", "x-stainless-timeout",
    "x-stainless-helper-method", "x-stainless-poll-helper",
)

#: Response headers a page may always read: the request ids, the key's rate limits (the names the
#: limits middleware and the openai plugin pass on), and what a client's retry logic reads (an
#: idempotent repeat's ``idempotent-replayed`` too).
ALWAYS_EXPOSED_HEADERS: tuple[str, ...] = (
    "x-request-id", "x-upstream-request-id", "openai-processing-ms",
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-images", "x-ratelimit-remaining-images", "x-ratelimit-reset-images",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
    "retry-after", "retry-after-ms", "x-should-retry", "idempotent-replayed",
)

#: On every answer of a CORS route when the origins are a list: the answer depends on Origin.
VARY_ONLY: Mapping[str, str] = {"Vary": "Origin"}


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name.lower() for name in names))


class CorsRefused(Exception):
    """A preflight the policy does not allow; the message says what, for whoever debugs it."""


class CorsPolicy:
    """The CORS answer of one configuration: computed once, looked up per request."""

    __slots__ = ("any_origin", "origins", "methods", "headers", "_actual", "_preflight", "_answers", "_to_any")

    def __init__(self, config: CorsConfig) -> None:
        self.any_origin = "*" in config.allow_origins
        self.origins = frozenset(o for o in config.allow_origins if o != "*")
        self.methods = tuple(dict.fromkeys(config.allow_methods))
        allowed = _unique(ALWAYS_ALLOWED_HEADERS + tuple(config.allow_headers))
        self.headers = frozenset(allowed)
        exposed = ", ".join(_unique(ALWAYS_EXPOSED_HEADERS + tuple(config.expose_headers)))
        actual = {"Access-Control-Expose-Headers": exposed}
        preflight = {"Access-Control-Allow-Methods": ", ".join(self.methods),
                     "Access-Control-Allow-Headers": ", ".join(allowed),
                     "Access-Control-Max-Age": str(config.max_age_s)}
        if config.allow_credentials:
            actual["Access-Control-Allow-Credentials"] = preflight["Access-Control-Allow-Credentials"] = "true"
        self._actual = actual
        self._preflight = preflight
        #: The headers of an actual answer, made once per allowed origin (looked up per request).
        self._answers = {o: {**self._origin_headers(o), **actual} for o in self.origins}
        #: ``*`` alone: one answer for every origin.
        self._to_any = {**self._origin_headers("*"), **actual} if self.any_origin and not self.origins else None

    @classmethod
    def from_config(cls, config: CorsConfig) -> CorsPolicy | None:
        return cls(config) if config.allow_origins else None

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def _origin_headers(self, origin: str) -> dict[str, str]:
        if self.any_origin and not self.origins:
            return {"Access-Control-Allow-Origin": "*"}  # the same answer for every page: no Vary
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def actual(self, origin: str | None) -> Mapping[str, str]:
        """The CORS headers of an answer to a request from ``origin`` (None: not from a page)."""
        if origin is None:
            return {} if self.any_origin and not self.origins else VARY_ONLY
        answer = self._answers.get(origin) or self._to_any
        if answer is None:
            if not self.any_origin:
                return VARY_ONLY
            answer = {**self._origin_headers(origin), **self._actual}  # '*' and listed origins together
        return answer

    def preflight(self, origin: str, method: str, request_headers: str | None) -> dict[str, str]:
        """The headers of a successful preflight's 204, or CorsRefused saying why not."""
        if not self.allows(origin):
            raise CorsRefused(f"The origin '{origin}' is not allowed to call this gateway from a browser "
                              "(cors.allow_origins).")
        if method not in self.methods:
            raise CorsRefused(f"The method '{method}' is not allowed from a browser (cors.allow_methods: "
                              f"{', '.join(self.methods)}).")
        asked = [h.strip().lower() for h in (request_headers or "").split(",") if h.strip()]
        refused = [h for h in asked if h not in self.headers]
        if refused:
            raise CorsRefused(f"The request header(s) {', '.join(refused)} are not allowed from a browser "
                              "(cors.allow_headers).")
        headers = {**self._origin_headers(origin), **self._preflight}
        headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        return headers
