"""The router: walks a request's targets in order within one deadline and records every attempt.

Targets are the requested model's deployments, then each fallback model's. A target's failure
is classified once here: retryable failures (connection errors, timeouts, configured statuses)
and the gateway's own credential problems (401/403) or a missing model (404) move on to the
next target; other client errors (400, including ``moderation_blocked``) end the request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import aiohttp
import msgspec

from gateway.api import Attempt, ImageGenerationRequest, UpstreamImagesResponse
from gateway.config import RouterConfig
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout, redact
from gateway.provider import ImageRequest, ImageResult, ProviderError
from gateway.registry import ModelRoute, Target
from gateway.validation import check_capabilities, reject_unknown, to_image_request

_upstream_decoder = msgspec.json.Decoder(UpstreamImagesResponse)


class Routed(msgspec.Struct):
    result: ImageResult
    parsed: UpstreamImagesResponse
    target: Target
    attempts: list[Attempt]


class Candidate(msgspec.Struct, frozen=True):
    """A model to try, with the request as that model receives it (or why it cannot)."""

    route: ModelRoute
    request: ImageRequest | None
    unsupported: str | None = None


def parse_upstream(body: bytes) -> UpstreamImagesResponse:
    """Check an upstream success body has OpenAI's shape; a broken one is the upstream's fault."""
    try:
        parsed = _upstream_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ProviderError(f"The upstream answered 200 with an invalid images response: {exc}",
                            status=502, code="invalid_upstream_response", retryable=True) from None
    return parsed


class Router:
    def __init__(self, config: RouterConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._retry_statuses = frozenset(config.retry_statuses)

    def candidates(self, primary: ModelRoute, fallbacks: list[ModelRoute], body: ImageGenerationRequest,
                   unknown: dict[str, Any]) -> list[Candidate]:
        """The primary model's request must be valid (the caller checked); a fallback model that
        cannot take this request is reported as skipped instead of failing the request."""
        out = [Candidate(primary, to_image_request(body, primary.id, unknown))]
        for route in fallbacks:
            try:
                check_capabilities(body, route.capabilities)
                extra = reject_unknown(unknown, route.capabilities)
            except InvalidRequest as exc:
                out.append(Candidate(route, None, exc.message))
                continue
            out.append(Candidate(route, to_image_request(body, route.id, extra)))
        return out

    async def generate(self, candidates: list[Candidate], deadline_s: float) -> Routed:
        deadline = self.clock() + deadline_s
        attempts: list[Attempt] = []
        errors: list[ProviderError] = []
        for candidate in candidates:
            for target in candidate.route.targets:
                if candidate.request is None:
                    attempts.append(_attempt(target, "skipped", 0.0, code="unsupported_request",
                                             message=candidate.unsupported))
                    continue
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise self._failure(attempts, errors, deadline_passed=True)
                timeout_s = min(self.config.attempt_timeout_s, remaining)
                started = self.clock()
                try:
                    routed = await self._attempt(target, candidate.request, timeout_s)
                except ProviderError as exc:
                    latency = self.clock() - started
                    status = "timeout" if exc.timeout else "failed"
                    attempts.append(_attempt(target, status, latency, exc.status, exc.code, redact(exc.message)))
                    errors.append(exc)
                    if self._is_terminal(exc):
                        raise self._terminal(exc, attempts) from None
                    continue
                attempts.append(_attempt(target, "succeeded", self.clock() - started, 200))
                return Routed(routed[0], routed[1], target, attempts)
        raise self._failure(attempts, errors, deadline_passed=deadline - self.clock() <= 0)

    async def _attempt(self, target: Target, request: ImageRequest, timeout_s: float
                       ) -> tuple[ImageResult, UpstreamImagesResponse]:
        try:
            async with asyncio.timeout(timeout_s):
                result = await target.provider.generate(request, timeout_s)
        except TimeoutError:
            raise ProviderError(f"The upstream did not answer within {timeout_s:.3g} s.",
                                code="timeout", timeout=True, retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:  # a plugin that let a transport error through
            raise ProviderError(f"Could not reach the upstream: {type(exc).__name__}.",
                                code="connection_error", retryable=True) from None
        return result, parse_upstream(result.body)

    def _is_terminal(self, exc: ProviderError) -> bool:
        if exc.retryable is not None:
            return not exc.retryable and exc.status not in (401, 403, 404)
        if exc.status is None or exc.status in self._retry_statuses or exc.status in (401, 403, 404):
            return False
        if exc.code == "moderation_blocked":
            return not self.config.fallback_on_moderation
        return 400 <= exc.status < 500

    def _terminal(self, exc: ProviderError, attempts: list[Attempt]) -> GatewayError:
        """A client error from upstream reaches the client unchanged in shape."""
        return GatewayError(redact(exc.message), status=exc.status, type=exc.type, code=exc.code,
                            param=exc.param, headers={"x-should-retry": "false"},
                            extra=_routing(attempts))

    def _failure(self, attempts: list[Attempt], errors: list[ProviderError], deadline_passed: bool
                 ) -> GatewayError:
        last = errors[-1] if errors else None
        message = redact(last.message) if last else "No target could serve this request."
        if last is not None and last.status in (401, 403):
            message = "The gateway's credentials for the upstream were rejected; the operator has been told."
        extra = _routing(attempts)
        if deadline_passed:
            return UpstreamTimeout(f"The request deadline passed before any target succeeded. {message}",
                                   extra=extra)
        if errors and all(e.status == 429 for e in errors):
            waits = [e.retry_after_s for e in errors if e.retry_after_s is not None]
            headers = {"retry-after": str(max(1, round(min(waits))))} if waits else {}
            return GatewayError(message, status=429, type="requests", code="rate_limit_exceeded",
                                headers=headers, extra=extra)
        retry_might_help = any(e.status is None or e.status in self._retry_statuses for e in errors)
        return UpstreamError(message, extra=extra,
                             headers=None if retry_might_help else {"x-should-retry": "false"})


def _attempt(target: Target, status: str, latency_s: float, http_status: int | None = None,
             code: str | None = None, message: str | None = None) -> Attempt:
    return Attempt(provider=target.plugin, region=target.region, status=status, model=target.model,
                   target=target.id, latency_ms=round(latency_s * 1000, 3), http_status=http_status,
                   error_code=code, error_message=message)


def _routing(attempts: list[Attempt]) -> dict[str, Any]:
    return {"routing": {"attempts": msgspec.to_builtins(attempts)}}
