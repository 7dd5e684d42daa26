"""A traced request's identifiers, as the request path sees them (standard library only).

With ``tracing.enabled`` the tracing link (gateway/middleware/tracing.py) gives each API request
a ``RequestTrace``: the trace it belongs to (the client's, from its ``traceparent``, or a new
one), the id of the gateway's server span, and the sampling decision. The router asks it for a
span id per upstream attempt (``begin_attempt``), and the traced upstream interface
(gateway/upstream_http.py ``TracedUpstreamHTTP``) sends that attempt's ``traceparent``. The spans
themselves are built after the response, from the request record (gateway/tracing.py): the path
of a request only draws ids and reads the clock.

With tracing off none of this exists: ``CURRENT`` stays None, which is all the router checks.
"""

from __future__ import annotations

import random
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Mapping, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.record import RequestRecord
    from gateway.runtime import Runtime

_DEFAULT_PORTS = {"http": 80, "https": 443}


def new_span_id() -> int:
    """A random non-zero 64-bit span id (W3C Trace Context: all zeros is invalid)."""
    while True:
        span_id = random.getrandbits(64)
        if span_id:
            return span_id


def new_trace_id() -> int:
    """A random non-zero 128-bit trace id."""
    while True:
        trace_id = random.getrandbits(128)
        if trace_id:
            return trace_id


def traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """The ``traceparent`` header value, version 00: ``00-<trace id>-<parent id>-<flags>`` in
    lower-case hex, flags 01 when sampled (https://www.w3.org/TR/trace-context/#traceparent-header)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


class AttemptSpan:
    """One upstream attempt's span, as far as the request path knows it."""

    __slots__ = ("index", "span_id", "start_ns", "headers", "server_address", "server_port")

    def __init__(self, index: int, span_id: int, start_ns: int, headers: Mapping[str, str]) -> None:
        #: The attempt's position in the request's ``attempts`` (the router appends it there).
        self.index = index
        self.span_id = span_id
        self.start_ns = start_ns
        #: ``traceparent`` (and ``tracestate``) for every upstream call of this attempt.
        self.headers = headers
        #: The upstream host and port of its first call (a polling provider's API, not the host it
        #: fetches the result from); None: it made no HTTP call.
        self.server_address: str | None = None
        self.server_port: int | None = None

    def called(self, url: str) -> None:
        if self.server_address is not None:
            return
        parts = urlsplit(url)
        self.server_address = parts.hostname
        self.server_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)


class RequestTrace:
    """One request's place in a trace: its ids, the client's context, its attempts' spans."""

    __slots__ = ("trace_id", "span_id", "sampled", "parent", "tracestate", "attempts", "attempt")

    def __init__(self, trace_id: int, sampled: bool, parent: Any = None, tracestate: str | None = None) -> None:
        self.trace_id = trace_id
        #: The gateway's server span.
        self.span_id = new_span_id()
        #: Whether the spans are exported (the decision travels upstream in the flags).
        self.sampled = sampled
        #: The client's span context (an OpenTelemetry ``SpanContext``, extracted by gateway/tracing.py;
        #: None: a new trace).
        self.parent = parent
        #: The client's ``tracestate``, passed on upstream as it came.
        self.tracestate = tracestate
        self.attempts: list[AttemptSpan] = []
        #: The attempt in progress (the router's attempts are sequential).
        self.attempt: AttemptSpan | None = None

    def begin_attempt(self, index: int) -> None:
        """The router is about to call an upstream: the attempt gets its span id and start time."""
        span_id = new_span_id()
        headers = {"traceparent": traceparent(self.trace_id, span_id, self.sampled)}
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        self.attempt = AttemptSpan(index, span_id, time.time_ns(), headers)
        self.attempts.append(self.attempt)


#: The request being served in this task (set by the tracing link only when tracing is on).
CURRENT: ContextVar[RequestTrace | None] = ContextVar("opengateway_request_trace", default=None)


class RequestTracer(Protocol):
    """What the app holds when tracing is on (gateway/tracing.py ``Tracing``)."""

    def begin(self, headers: Mapping[str, str]) -> RequestTrace:
        """The trace of a request arriving with ``headers`` (its ``traceparent``, if valid)."""

    def observe(self, record: RequestRecord, request: web.Request, runtime: Runtime) -> None:
        """After the response: the request's spans, built from its record, queued for export."""

    async def close(self) -> None:
        """Export what is queued and stop."""
