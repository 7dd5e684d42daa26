"""The router: walks a request's targets in order within one deadline and records every attempt.

Targets are the requested model's deployments (weighted ones shuffled by weight per request),
then each fallback model's. The first pass tries each target once, so a failure moves to the
next target at once; targets whose failure was retryable then get their further attempts
(``max_attempts_per_target`` in all), in the same order, each no sooner than its full-jitter
backoff or its upstream retry-after allows. A target whose circuit is open is skipped.

A failure is classified once, here (``_classify``): retryable failures (connection errors,
timeouts, the configured statuses) are retried later; the gateway's own credential problems
(401/403) and a model missing upstream (404) are not; other client errors (400, including
``moderation_blocked``) end the request. README section ``routing`` has the whole policy.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any, Awaitable, Callable, Iterable, Iterator, Sequence

import aiohttp
import msgspec

from gateway.api import Attempt, ImageGenerationRequest, UpstreamImagesResponse
from gateway.breaker import CLOSED, HALF_OPEN, Breaker, State
from gateway.catalog import Capabilities
from gateway.config import RouterConfig
from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout, redact
from gateway.provider import ImageRequest, ImageResult, ProviderError
from gateway.registry import ModelRoute, Target
from gateway.upstream import parse_upstream
from gateway.validation import check_capabilities, reject_unknown, to_image_request


# What a failed attempt means for the rest of the request (see ``Router._classify``).
_RETRY = 0      # retry this target (after a wait), then move on; counts against its breaker
_NEXT = 1       # move on at once; counts against its breaker (401/403/404, other 5xx)
_NEXT_SAFE = 2  # move on at once; says nothing about the target (moderation, when allowed)
_TERMINAL = 3   # the client's request is at fault: answer with this error


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


class TargetHealth(msgspec.Struct):
    """One target's breaker, for ``/readyz?verbose=1`` and metrics."""

    target: str
    provider: str
    region: str
    model: str
    state: State
    consecutive_failures: int
    trips: int
    #: Unix time at which an open circuit lets a probe through; None unless open.
    open_until: float | None
    retry_in_s: float


def order_targets(targets: tuple[Target, ...], rng: random.Random) -> Sequence[Target]:
    """Weighted targets' positions are refilled with a weighted random permutation of them
    (each draw picks a remaining target with probability weight / remaining weights: the
    Efraimidis–Spirakis keys ``u ** (1 / w)``); unweighted targets keep their places."""
    slots = [i for i, t in enumerate(targets) if t.weight is not None]
    if len(slots) < 2:
        return targets
    shuffled = sorted((targets[i] for i in slots), key=lambda t: rng.random() ** (1.0 / t.weight),  # type: ignore[operator]
                      reverse=True)
    out = list(targets)
    for i, target in zip(slots, shuffled):
        out[i] = target
    return out


class _Walk:
    """One request's progress through its targets."""

    __slots__ = ("deadline", "attempts", "errors", "retries", "soonest_open_s")

    def __init__(self, deadline: float, attempts: list[Attempt]) -> None:
        self.deadline = deadline
        self.attempts = attempts
        self.errors: list[ProviderError] = []
        #: Targets owed another attempt, with the earliest (clock) time for it.
        self.retries: list[tuple[Target, ImageRequest, float]] = []
        #: The shortest wait for a circuit that was open.
        self.soonest_open_s: float | None = None


class Router:
    def __init__(self, config: RouterConfig, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.rng = rng if rng is not None else random.Random()
        self._retry_statuses = frozenset(config.retry_statuses)
        self._breakers: dict[str, Breaker] = {}
        self._weighted: dict[str, bool] = {}  # model id -> has weighted targets

    def candidates(self, primary: ModelRoute, fallbacks: list[ModelRoute], body: ImageGenerationRequest,
                   unknown: dict[str, Any]) -> Iterator[Candidate]:
        """The primary model's request (the caller validated it), then each fallback model's,
        built only when the walk reaches it. A fallback model that cannot take this request
        is reported as skipped instead of failing the request."""
        yield Candidate(primary, to_image_request(body, primary.id, unknown))
        for route in fallbacks:
            try:
                check_capabilities(body, route.capabilities)
                extra = reject_unknown(unknown, route.capabilities)
            except InvalidRequest as exc:
                yield Candidate(route, None, exc.message)
                continue
            yield Candidate(route, to_image_request(body, route.id, extra))

    def breaker(self, target: Target) -> Breaker:
        breaker = self._breakers.get(target.id)
        if breaker is None:
            breaker = self._breakers[target.id] = Breaker(self.config.breaker)
        return breaker

    def targets(self, route: ModelRoute) -> Sequence[Target]:
        weighted = self._weighted.get(route.id)
        if weighted is None:
            weighted = self._weighted[route.id] = sum(t.weight is not None for t in route.targets) > 1
        return order_targets(route.targets, self.rng) if weighted else route.targets

    async def generate(self, candidates: Iterable[Candidate], deadline_s: float,
                       attempts: list[Attempt] | None = None) -> Routed:
        """Walk the candidates' targets once, then give the targets that failed in a retryable way
        their further attempts, in the same order. Every attempt is appended to ``attempts``."""
        walk = _Walk(self.clock() + deadline_s, [] if attempts is None else attempts)
        for candidate in candidates:
            for target in self.targets(candidate.route):
                unsupported = candidate.unsupported
                if unsupported is None and target.capabilities is not None:
                    unsupported = _unsupported_by(candidate.request, target.capabilities)
                if unsupported is not None or candidate.request is None:
                    walk.attempts.append(_attempt(target, "skipped", 0.0, code="unsupported_request",
                                                  message=unsupported))
                    continue
                routed = await self._try(walk, target, candidate.request, 0)
                if routed is not None:
                    return routed
        for retry in range(1, self.config.max_attempts_per_target):
            pending, walk.retries = walk.retries, []
            for target, request, not_before in pending:
                if not_before >= walk.deadline:
                    continue  # its backoff or retry-after would outlast the deadline
                wait_s = not_before - self.clock()
                if wait_s > 0:
                    await self.sleep(wait_s)
                routed = await self._try(walk, target, request, retry)
                if routed is not None:
                    return routed
        raise self._failure(walk, deadline_passed=walk.deadline - self.clock() <= 0)

    async def _try(self, walk: _Walk, target: Target, request: ImageRequest, retry: int) -> Routed | None:
        """One attempt on one target: the answer, or None after recording why not."""
        clock = self.clock
        remaining_s = walk.deadline - clock()
        if remaining_s <= 0:
            raise self._failure(walk, deadline_passed=True)
        breaker = self.breaker(target)
        if not breaker.allow(clock()):
            wait_s = breaker.retry_in_s(clock())
            walk.soonest_open_s = wait_s if walk.soonest_open_s is None else min(walk.soonest_open_s, wait_s)
            walk.attempts.append(_attempt(target, "skipped", 0.0, code="circuit_open", message=(
                f"The circuit for this target is open for {wait_s:.3g} s more." if wait_s
                else "The circuit for this target is half-open and its probe is in flight.")))
            return None
        probe = breaker.state is HALF_OPEN
        started = clock()
        try:
            result, parsed = await self._call(target, request, min(self.config.attempt_timeout_s, remaining_s))
        except ProviderError as exc:
            now = clock()
            walk.attempts.append(_attempt(target, "timeout" if exc.timeout else "failed", now - started,
                                          exc.status, exc.code, redact(exc.message)))
            walk.errors.append(exc)
            kind = self._classify(exc)
            if kind == _TERMINAL:
                breaker.released(probe)
                raise _terminal(exc, walk.attempts) from None
            if kind == _NEXT_SAFE:
                breaker.released(probe)
                return None
            breaker.failed(now)
            if kind == _RETRY and retry + 1 < self.config.max_attempts_per_target and breaker.state is CLOSED:
                not_before = self._not_before(exc, retry, now)
                if not_before is not None:
                    walk.retries.append((target, request, not_before))
            return None
        except BaseException:  # cancelled (the client left) or a plugin's bug
            breaker.released(probe)
            raise
        breaker.succeeded()
        walk.attempts.append(_attempt(target, "succeeded", clock() - started, 200))
        return Routed(result, parsed, target, walk.attempts)

    def _not_before(self, exc: ProviderError, retry: int, now: float) -> float | None:
        """When the target may be tried again: after its retry-after (None if that is longer than
        ``max_retry_after_s``), or after a full-jitter backoff."""
        config = self.config
        if exc.retry_after_s is not None:
            return now + exc.retry_after_s if exc.retry_after_s <= config.max_retry_after_s else None
        return now + self.rng.uniform(0.0, min(config.backoff_cap_s, config.backoff_base_s * 2.0 ** retry))

    async def _call(self, target: Target, request: ImageRequest, timeout_s: float
                    ) -> tuple[ImageResult, UpstreamImagesResponse]:
        provider = target.provider
        try:
            if provider.bounds_its_time:
                result = await provider.generate(request, timeout_s)
            else:
                async with asyncio.timeout(timeout_s):  # a backstop for a plugin that may ignore timeout_s
                    result = await provider.generate(request, timeout_s)
        except TimeoutError:
            raise ProviderError(f"The upstream did not answer within {timeout_s:.3g} s.",
                                code="timeout", timeout=True, retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:  # a plugin that let a transport error through
            raise ProviderError(f"Could not reach the upstream: {type(exc).__name__}.",
                                code="connection_error", retryable=True) from None
        return result, parse_upstream(result.body)

    def _classify(self, exc: ProviderError) -> int:
        status = exc.status
        if exc.code == "moderation_blocked":  # a safety decision: never routed around by default
            return _NEXT_SAFE if self.config.fallback_on_moderation else _TERMINAL
        if status in (401, 403, 404):  # the gateway's credential, or this deployment lacks the model
            return _NEXT
        if exc.retryable is not None:
            return _RETRY if exc.retryable else _TERMINAL
        if status is None or status in self._retry_statuses:
            return _RETRY
        return _TERMINAL if 400 <= status < 500 else _NEXT

    def _failure(self, walk: _Walk, deadline_passed: bool) -> GatewayError:
        """One error for a request no target served, with the most meaningful status."""
        attempts, errors, soonest_open_s = walk.attempts, walk.errors, walk.soonest_open_s
        extra = _routing(attempts)
        blocked = next((e for e in errors if e.code == "moderation_blocked"), None)
        if blocked is not None:  # fallback_on_moderation: every other target failed too
            return _terminal(blocked, attempts)
        if not errors and soonest_open_s is not None:
            return GatewayError("Every target for this model is unavailable (circuit open); "
                                "no upstream was called.", status=503, code="all_targets_unavailable",
                                headers={"retry-after": str(max(1, math.ceil(soonest_open_s)))}, extra=extra)
        last = errors[-1] if errors else None
        message = redact(last.message) if last else "No target could serve this request."
        if last is not None and last.status in (401, 403):
            message = "The gateway's credentials for the upstream were rejected; the operator has been told."
        if deadline_passed:
            return UpstreamTimeout(f"The request deadline passed before any target succeeded. {message}",
                                   extra=extra)
        if errors and all(e.timeout for e in errors):  # every upstream was too slow: a gateway timeout
            return UpstreamTimeout(f"Every attempt timed out. {message}", extra=extra)
        if errors and all(e.status == 429 for e in errors):
            waits = [e.retry_after_s for e in errors if e.retry_after_s is not None]
            headers = {"retry-after": str(max(1, math.ceil(min(waits))))} if waits else {}
            return GatewayError(message, status=429, type="requests", code="rate_limit_exceeded",
                                headers=headers, extra=extra)
        retry_might_help = soonest_open_s is not None or any(self._classify(e) == _RETRY for e in errors)
        return UpstreamError(message, extra=extra,
                             headers=None if retry_might_help else {"x-should-retry": "false"})

    def snapshot(self, targets: Iterable[Target]) -> list[TargetHealth]:
        """The breaker of each target (closed for those never tried)."""
        now, wall = self.clock(), time.time()
        out = []
        for target in targets:
            breaker = self._breakers.get(target.id)
            if breaker is None:
                out.append(TargetHealth(target.id, target.plugin, target.region, target.model,
                                        "closed", 0, 0, None, 0.0))
                continue
            retry_in_s = breaker.retry_in_s(now)
            out.append(TargetHealth(target.id, target.plugin, target.region, target.model, breaker.state,
                                    breaker.consecutive_failures, breaker.trips,
                                    round(wall + retry_in_s, 3) if breaker.state == "open" else None,
                                    round(retry_in_s, 3)))
        return out


def _unsupported_by(request: ImageRequest | None, caps: Capabilities) -> str | None:
    """Why one deployment cannot take a request its model accepts (ImageRequest has the fields
    check_capabilities reads), or None."""
    if request is None:
        return None
    try:
        check_capabilities(request, caps)  # type: ignore[arg-type]
        reject_unknown(request.extra_fields, caps)
    except InvalidRequest as exc:
        return exc.message
    return None


def _terminal(exc: ProviderError, attempts: list[Attempt]) -> GatewayError:
    """A client error from upstream reaches the client unchanged in shape; retrying cannot help."""
    return GatewayError(redact(exc.message), status=exc.status, type=exc.type, code=exc.code,
                        param=exc.param, headers={"x-should-retry": "false"}, extra=_routing(attempts))


def _attempt(target: Target, status: str, latency_s: float, http_status: int | None = None,
             code: str | None = None, message: str | None = None) -> Attempt:
    return Attempt(provider=target.plugin, region=target.region, status=status, model=target.model,
                   target=target.id, latency_ms=round(latency_s * 1000, 3), http_status=http_status,
                   error_code=code, error_message=message)


def _routing(attempts: list[Attempt]) -> dict[str, Any]:
    return {"routing": {"attempts": msgspec.to_builtins(attempts)}}
