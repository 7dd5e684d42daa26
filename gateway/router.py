"""The router: walks a request's targets in order within one deadline and records every attempt.

Targets are the requested model's deployments (weighted ones shuffled by weight per request),
then each fallback model's. The first pass tries each target once, so a failure moves to the
next target at once; targets whose failure was retryable then get their further attempts
(``max_attempts_per_target`` in all), in the same order, each no sooner than its full-jitter
backoff or its upstream retry-after allows. A target whose circuit is open is skipped.

A failure is classified once, here (``_classify``): retryable failures (connection errors,
timeouts, the configured statuses) are retried later; the gateway's own credential problems
(401/403) and a model missing upstream (404) are not; other client errors (400, including
``moderation_blocked``) end the request. docs/routing.md has the whole policy.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, NamedTuple, Sequence

import msgspec

from gateway.api import Attempt, ImageRequest, UpstreamImagesResponse
from gateway.bounded import MESSAGE_CHARS, NAME_CHARS, clip
from gateway.breaker import CLOSED, HALF_OPEN, Breaker, State
from gateway.config import RouterConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.provider import Call, EditInputs, ImageResult, ProviderError, StreamEvent
from gateway.redact import Redactor
from gateway.registry import Target
from gateway.streaming import EventHead, completed_events, iterate, read_event
from gateway.tracing_context import CURRENT as TRACE
from gateway.upstream import parse_upstream

log = logging.getLogger("opengateway.router")

# What a failed attempt means for the rest of the request (see ``Router._classify``).
_RETRY = 0      # retry this target (after a wait), then move on; counts against its breaker
_NEXT = 1       # move on at once; counts against its breaker (401/403/404, other 5xx)
_NEXT_SAFE = 2  # move on at once; says nothing about the target (moderation, when allowed)
_TERMINAL = 3   # the client's request is at fault: answer with this error


class Candidate(msgspec.Struct, frozen=True):
    """One target to try, as the request plan (gateway/plan.py) decided it: the extra fields its
    model accepts, or why it cannot take the request (reported as a skipped attempt). ``request``
    replaces the client's request for this target when the plan dropped fields the operator lets
    it drop (``models.<id>.drop_unsupported``); ``notes`` say which, in the attempt."""

    target: Target
    extra_fields: dict[str, Any] = {}
    unsupported: str | None = None
    request: ImageRequest | None = None
    notes: tuple[str, ...] = ()
    #: The request streams and this target can stream partial images (``Provider.stream``).
    streams: bool = False


#: Told in the attempt of a streaming request served by a target that cannot stream.
NO_PARTIAL_IMAGES = "partial images are not available from this target: only the completed image is sent"


class Routed(msgspec.Struct):
    target: Target
    attempts: list[Attempt]
    #: The succeeded attempt (a stream that fails later is reported on it).
    attempt: Attempt
    #: A whole answer (a request that does not stream, or a target that cannot).
    result: ImageResult | None = None
    parsed: UpstreamImagesResponse | None = None
    #: A stream: its first event, already received and read (``first_head``: read once, here,
    #: so that an invalid first event is a failed attempt), and the rest (``Router.follow``).
    first: StreamEvent | None = None
    events: AsyncIterator[StreamEvent] | None = None
    first_head: EventHead | None = None
    #: When the first event arrived (``time.perf_counter``), and the request's deadline (router clock).
    first_event_at: float = 0.0
    deadline: float = 0.0


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
    #: Seconds left of the upstream's last retry-after (a 429), during which the target is skipped.
    rate_limited_for_s: float = 0.0


class RouterTiming(NamedTuple):
    """The router's clock, sleep and randomness (tests hand in a fake clock through create_app)."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    rng: random.Random | None = None


_Answer = tuple[ImageResult | None, UpstreamImagesResponse | None, StreamEvent | None,
                AsyncIterator[StreamEvent] | None, EventHead | None]


def _plugin_failed(target: Target, exc: Exception) -> ProviderError:
    """A plugin that raised something other than ProviderError (a bug, or an upstream answer it
    could not read: a RecursionError on a deeply nested body): a failed attempt, logged with its
    traceback for the plugin's author, never a 500 for the client. The call may have reached the
    upstream (it may have answered 200 before the plugin broke), so it may have been billed."""
    log.error("target %s: the %s plugin raised %s", target.id, target.plugin, type(exc).__name__, exc_info=exc)
    return ProviderError(f"The {target.plugin} provider plugin failed ({type(exc).__name__}).", status=502,
                         code="provider_error", retryable=True, ambiguous=True)


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


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
    """One request's progress through its candidates."""

    __slots__ = ("deadline", "attempts", "inputs", "errors", "retries", "soonest_open_s", "soonest_unlimited_s")

    def __init__(self, deadline: float, attempts: list[Attempt], inputs: EditInputs | None) -> None:
        self.deadline = deadline
        self.attempts = attempts
        self.inputs = inputs
        self.errors: list[ProviderError] = []
        #: Candidates owed another attempt, with the earliest (clock) time for it.
        self.retries: list[tuple[Candidate, float]] = []
        #: The shortest wait for a circuit that was open.
        self.soonest_open_s: float | None = None
        #: The shortest wait for a target skipped while it is rate limited (its retry-after).
        self.soonest_unlimited_s: float | None = None


#: What a client is told when an upstream refused the gateway's own credentials: never the
#: upstream's words, which may quote part of the key (OpenAI's "sk-abc*****wxyz").
CREDENTIALS_REJECTED = ("The upstream rejected the gateway's credentials for target '{target}' (HTTP {status}); "
                        "the operator has been told.")


class Router:
    def __init__(self, config: RouterConfig, redactor: Redactor, timing: RouterTiming = RouterTiming(),
                 breakers: dict[str, Breaker] | None = None) -> None:
        self.config = config
        self.redact = redactor
        self.clock = timing.clock
        self.sleep = timing.sleep
        self.rng = timing.rng if timing.rng is not None else random.Random()
        self._retry_statuses = frozenset(config.retry_statuses)
        #: Per target id; a reload that keeps the breaker settings hands them to the next router.
        self.breakers: dict[str, Breaker] = breakers if breakers is not None else {}

    def breaker(self, target: Target) -> Breaker:
        breaker = self.breakers.get(target.id)
        if breaker is None:
            breaker = self.breakers[target.id] = Breaker(self.config.breaker)
        return breaker

    def order(self, targets: tuple[Target, ...], weighted: bool) -> Sequence[Target]:
        """A model's targets in the order to try them for one request."""
        return order_targets(targets, self.rng) if weighted else targets

    async def walk(self, request: ImageRequest, candidates: Iterable[Candidate], deadline_s: float,
                   attempts: list[Attempt] | None = None, inputs: EditInputs | None = None) -> Routed:
        """Try each candidate once, then give those that failed in a retryable way their further
        attempts, in the same order. Every attempt is appended to ``attempts``. ``inputs``: an
        edit's images (the plugins' ``edit`` is called instead of ``generate``)."""
        walk = _Walk(self.clock() + deadline_s, [] if attempts is None else attempts, inputs)
        for candidate in candidates:
            if candidate.unsupported is not None:
                walk.attempts.append(_attempt(candidate.target, "skipped", 0.0, code="unsupported_request",
                                              message=candidate.unsupported))
                continue
            routed = await self._try(walk, request, candidate, 0)
            if routed is not None:
                return routed
        for retry in range(1, self.config.max_attempts_per_target):
            pending, walk.retries = walk.retries, []
            for candidate, not_before in pending:
                if not_before >= walk.deadline:
                    continue  # its backoff or retry-after would outlast the deadline
                wait_s = not_before - self.clock()
                if wait_s > 0:
                    await self.sleep(wait_s)
                routed = await self._try(walk, request, candidate, retry)
                if routed is not None:
                    return routed
        raise self._failure(walk, deadline_passed=walk.deadline - self.clock() <= 0)

    async def _try(self, walk: _Walk, request: ImageRequest, candidate: Candidate, retry: int) -> Routed | None:
        """One attempt on one target: the answer, or None after recording why not."""
        clock = self.clock
        target = candidate.target
        remaining_s = walk.deadline - clock()
        if remaining_s <= 0:
            raise self._failure(walk, deadline_passed=True)
        breaker = self.breaker(target)
        if breaker.rate_limited_until > clock():
            wait_s = breaker.rate_limited_until - clock()
            walk.soonest_unlimited_s = wait_s if walk.soonest_unlimited_s is None else min(walk.soonest_unlimited_s, wait_s)
            walk.attempts.append(_attempt(target, "skipped", 0.0, code="rate_limited", message=(
                f"The upstream asked for no requests for {wait_s:.3g} s more (its retry-after).")))
            return None
        if not breaker.allow(clock()):
            wait_s = breaker.retry_in_s(clock())
            walk.soonest_open_s = wait_s if walk.soonest_open_s is None else min(walk.soonest_open_s, wait_s)
            walk.attempts.append(_attempt(target, "skipped", 0.0, code="circuit_open", message=(
                f"The circuit for this target is open for {wait_s:.3g} s more." if wait_s
                else "The circuit for this target is half-open and its probe is in flight.")))
            return None
        probe = breaker.state is HALF_OPEN
        started = clock()
        call = Call(target.model, min(self.config.attempt_timeout_s, remaining_s), candidate.extra_fields)
        if candidate.notes:
            call.notes = list(candidate.notes)
        trace = TRACE.get()  # None unless tracing is on (gateway/tracing_context.py)
        if trace is not None:  # this attempt's span id, sent upstream in its traceparent
            trace.begin_attempt(len(walk.attempts))
        try:
            answer = await self._call(target, candidate.request or request, call, candidate.streams, walk.inputs)
        except ProviderError as exc:
            now = clock()
            self._scrub(exc, target)
            attempt = _attempt(target, "timeout" if exc.timeout else "failed", now - started,
                               exc.status, exc.code, exc.message, call.notes)
            attempt.possibly_billed = exc.ambiguous
            walk.attempts.append(attempt)
            walk.errors.append(exc)
            kind = self._classify(exc)
            if exc.ambiguous and self.config.on_ambiguous != "retry":
                # The upstream may be generating (and billing) already: no second call to it.
                breaker.failed(now)
                if self.config.on_ambiguous == "fail":
                    raise self._failure(walk, deadline_passed=False)
                return None  # "fallback": the next target, never this one again
            if kind == _TERMINAL:
                breaker.released(probe)
                raise _terminal(exc, walk.attempts) from None
            if kind == _NEXT_SAFE:
                breaker.released(probe)
                return None
            if exc.status == 429:  # working, and asking for time: not a failure (gateway/breaker.py)
                breaker.rate_limited(probe, now + exc.retry_after_s if exc.retry_after_s is not None else None)
            else:
                breaker.failed(now)
            if kind == _RETRY and retry + 1 < self.config.max_attempts_per_target and breaker.state is CLOSED:
                not_before = self._not_before(exc, retry, now)
                if not_before is not None:
                    walk.retries.append((candidate, not_before))
            return None
        except asyncio.CancelledError:  # the client left: the call is abandoned, perhaps after it was sent
            breaker.released(probe)
            attempt = _attempt(target, "cancelled", clock() - started, code="client_disconnected",
                               message="The client went away; the upstream call was cancelled.", notes=call.notes)
            attempt.possibly_billed = True
            walk.attempts.append(attempt)
            raise
        except BaseException:  # not an Exception (a plugin's failures are ProviderErrors by now: _call)
            breaker.released(probe)
            raise
        breaker.succeeded()
        attempt = _attempt(target, "succeeded", clock() - started, 200, notes=call.notes)
        walk.attempts.append(attempt)
        result, parsed, first, events, first_head = answer
        return Routed(target, walk.attempts, attempt, result, parsed, first, events, first_head,
                      time.perf_counter(), walk.deadline)

    def _scrub(self, exc: ProviderError, target: Target) -> None:
        """Make an upstream's error text safe to show the client. A refused credential (401, 403)
        is the operator's business: its text goes to their log at WARNING, redacted, and the client
        gets a fixed message naming the target. The upstream's text and code are bounded first
        (gateway/bounded.py): they live on in the request's record."""
        exc.message = clip(exc.message, MESSAGE_CHARS)
        if exc.code is not None:
            exc.code = clip(exc.code, NAME_CHARS)
        if exc.status in (401, 403) and exc.code != "moderation_blocked":
            log.warning("target %s: the upstream refused the gateway's credentials (HTTP %s, code %s): %s",
                        target.id, exc.status, exc.code, self.redact(exc.message))
            exc.message = CREDENTIALS_REJECTED.format(target=target.id, status=exc.status)
        else:
            exc.message = self.redact(exc.message)

    def _not_before(self, exc: ProviderError, retry: int, now: float) -> float | None:
        """When the target may be tried again: after its retry-after (None if that is longer than
        ``max_retry_after_s``), or after a full-jitter backoff."""
        config = self.config
        if exc.retry_after_s is not None:
            return now + exc.retry_after_s if exc.retry_after_s <= config.max_retry_after_s else None
        return now + self.rng.uniform(0.0, min(config.backoff_cap_s, config.backoff_base_s * 2.0 ** retry))

    async def _call(self, target: Target, request: ImageRequest, call: Call, streams: bool,
                    inputs: EditInputs | None) -> _Answer:
        provider = target.provider
        try:
            if streams:
                events = provider.stream(request, call, inputs) if inputs is not None else provider.stream(request, call)
                try:
                    async with asyncio.timeout(call.timeout_s):
                        first = await anext(events)
                    head = read_event(first)
                except BaseException:
                    await _close(events)
                    raise
                return None, None, first, events, head
            if provider.bounds_its_time:
                result = await (provider.generate(request, call) if inputs is None
                                else provider.edit(request, inputs, call))
            else:
                async with asyncio.timeout(call.timeout_s):  # a backstop for a plugin that may ignore it
                    result = await (provider.generate(request, call) if inputs is None
                                    else provider.edit(request, inputs, call))
        except TimeoutError:  # the router's own backstop: the plugin's call may well have been sent
            raise ProviderError(f"The upstream did not answer within {call.timeout_s:.3g} s.",
                                code="timeout", timeout=True, retryable=True, ambiguous=True) from None
        except StopAsyncIteration:
            raise ProviderError("The upstream ended its stream before sending any event.", status=502,
                                code="invalid_upstream_response", retryable=True) from None
        except OSError as exc:  # a plugin that let a transport error through
            raise ProviderError(f"Could not reach the upstream: {type(exc).__name__}.",
                                code="connection_error", retryable=True) from None
        except ProviderError:
            raise
        except Exception as exc:
            raise _plugin_failed(target, exc) from None
        parsed = parse_upstream(result.body)
        if not request.stream:
            return result, parsed, None, None, None
        # A streaming request on a target that cannot stream: its answer as completed events.
        if request.partial_images:
            call.note(NO_PARTIAL_IMAGES)
        whole = completed_events(result, parsed, "image_generation" if inputs is None else "image_edit")
        if not whole:
            raise ProviderError("The upstream answered with no image.", status=502,
                                code="invalid_upstream_response", retryable=True)
        return result, parsed, whole[0], iterate(whole[1:]), read_event(whole[0])

    async def follow(self, routed: Routed) -> AsyncGenerator[StreamEvent, None]:
        """The rest of a stream after its first event. Each event must come within the attempt
        timeout (and the deadline); a failure updates the succeeded attempt (it failed after all,
        and counts against the target's breaker) and is raised as the GatewayError the error
        event carries; a client that leaves marks it cancelled and closes the upstream call."""
        events, attempt = routed.events, routed.attempt
        if events is None:
            return
        try:
            while True:
                wait_s = min(self.config.attempt_timeout_s, routed.deadline - self.clock())
                try:
                    async with asyncio.timeout(max(wait_s, 0.0)):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise ProviderError(f"The upstream sent no event within {max(wait_s, 0):.3g} s.",
                                        code="timeout", timeout=True) from None
                except ProviderError:
                    raise
                except Exception as exc:
                    raise _plugin_failed(routed.target, exc) from None
                yield event
        except ProviderError as exc:
            self._scrub(exc, routed.target)
            attempt.status = "timeout" if exc.timeout else "failed"
            attempt.possibly_billed = True  # the image was under way: it may be finished and billed
            attempt.http_status, attempt.error_code, attempt.error_message = exc.status, exc.code, exc.message
            self.breaker(routed.target).failed(self.clock())
            raise UpstreamError(f"The stream failed after it started: {exc.message}",
                                code=exc.code or "stream_failed", extra=_routing(routed.attempts)) from None
        except (asyncio.CancelledError, GeneratorExit):
            attempt.status, attempt.error_code = "cancelled", "client_disconnected"
            attempt.possibly_billed = True
            attempt.error_message = "The client went away mid-stream; the upstream call was cancelled."
            raise
        finally:
            await _close(events)

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
        limited_s = walk.soonest_unlimited_s
        if limited_s is not None and all(e.status == 429 for e in errors):
            # Rate limits are the reason (targets skipped for their retry-after, the others 429):
            # the client is told so, with the soonest time any of them takes requests again.
            waits = [limited_s] + [e.retry_after_s for e in errors if e.retry_after_s is not None]
            message = errors[-1].message if errors else "Every target for this model is rate limited; no upstream was called."
            return GatewayError(message, status=429, type="requests", code="rate_limit_exceeded",
                                headers={"retry-after": str(max(1, math.ceil(min(waits))))}, extra=extra)
        if not errors and soonest_open_s is not None:
            return GatewayError("Every target for this model is unavailable (circuit open); "
                                "no upstream was called.", status=503, code="all_targets_unavailable",
                                headers={"retry-after": str(max(1, math.ceil(soonest_open_s)))}, extra=extra)
        last = errors[-1] if errors else None
        message = last.message if last else "No target could serve this request."  # scrubbed by _try
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
            breaker = self.breakers.get(target.id)
            if breaker is None:
                out.append(TargetHealth(target.id, target.plugin, target.region, target.model,
                                        "closed", 0, 0, None, 0.0))
                continue
            retry_in_s = breaker.retry_in_s(now)
            out.append(TargetHealth(target.id, target.plugin, target.region, target.model, breaker.state,
                                    breaker.consecutive_failures, breaker.trips,
                                    round(wall + retry_in_s, 3) if breaker.state == "open" else None,
                                    round(retry_in_s, 3), round(max(0.0, breaker.rate_limited_until - now), 3)))
        return out


def _terminal(exc: ProviderError, attempts: list[Attempt]) -> GatewayError:
    """A client error from upstream reaches the client unchanged in shape; retrying cannot help."""
    return GatewayError(exc.message, status=exc.status, type=exc.type, code=exc.code,
                        param=exc.param, headers={"x-should-retry": "false"}, extra=_routing(attempts))


def _attempt(target: Target, status: str, latency_s: float, http_status: int | None = None,
             code: str | None = None, message: str | None = None, notes: list[str] | None = None) -> Attempt:
    return Attempt(provider=target.plugin, region=target.region, status=status, model=target.model,
                   target=target.id, latency_ms=round(latency_s * 1000, 3), http_status=http_status,
                   error_code=code, error_message=message, notes=notes)


def _routing(attempts: list[Attempt]) -> dict[str, Any]:
    return {"routing": {"attempts": msgspec.to_builtins(attempts)}}
