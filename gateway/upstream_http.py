"""The one HTTP interface a provider plugin uses to reach its upstream: ``Provider.http``.

It sits on the gateway's pooled HTTP/1.1 client (gateway/http_client.py), shared by every plugin
of the process, and maps every transport failure to a ``ProviderError`` in one place
(``_provider_error``): a timeout, a refused or reset connection, an unparseable answer, an answer over
``server.max_upstream_body_bytes``. A plugin only ever sees an ``Answer`` or a ProviderError.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Iterator, Mapping, NamedTuple

from gateway.http_client import HTTPClient
from gateway.http_connection import BodyStream, Payload, ResponseTooLarge, UpstreamProtocolError, was_sent
from gateway.provider_error import ProviderError
from gateway.sse import sse_events
from gateway.tracing_context import CURRENT

_NO_HEADERS: Mapping[str, str] = {}


class Answer(NamedTuple):
    """An upstream's whole answer. ``headers`` are case-insensitive."""

    status: int
    headers: Mapping[str, str]
    body: bytes


#: The transport failures ``_provider_error`` maps.
_TRANSPORT_ERRORS = (ResponseTooLarge, asyncio.TimeoutError, UpstreamProtocolError, OSError)


def _provider_error(exc: Exception, upstream: str, timeout_s: float | None) -> ProviderError:
    """A transport failure (one of ``_TRANSPORT_ERRORS``) as a retryable ProviderError naming
    ``upstream`` (an over-long answer is not retryable: the same upstream would send it again)."""
    if isinstance(exc, ResponseTooLarge):
        size = f" ({exc.size} bytes)" if exc.size is not None else ""
        return ProviderError(f"The {upstream} answer{size} exceeds the gateway's limit of {exc.limit} bytes.",
                             status=502, code="upstream_response_too_large", retryable=False,
                             ambiguous=True)  # it did generate: it answered
    if isinstance(exc, asyncio.TimeoutError):
        within = f" within {timeout_s:.3g} s" if timeout_s is not None else " in time"
        return ProviderError(f"{upstream} did not answer{within}.", code="timeout", timeout=True,
                             retryable=True, ambiguous=was_sent(exc))
    if isinstance(exc, UpstreamProtocolError):
        return ProviderError(f"{upstream} sent an invalid HTTP answer: {exc}", code="connection_error",
                             retryable=True, ambiguous=was_sent(exc))
    sent = was_sent(exc)
    what = "lost the connection after the request was sent" if sent else "could not be reached"
    return ProviderError(f"{upstream} {what}: {type(exc).__name__}.", code="connection_error",
                         retryable=True, ambiguous=sent)


@contextlib.contextmanager
def _mapped(upstream: str, timeout_s: float | None) -> Iterator[None]:
    """``_provider_error`` around a block."""
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise _provider_error(exc, upstream, timeout_s) from None


class UpstreamHTTP:
    def __init__(self, client: HTTPClient) -> None:
        self._client = client

    async def request(self, method: str, url: str, *, upstream: str, timeout_s: float | None,
                      headers: Mapping[str, str] = _NO_HEADERS, body: bytes | Payload = b"",
                      params: Mapping[str, str] | None = None) -> Answer:
        """Send one request and read the whole answer. ``upstream`` names the upstream in error
        messages ("OpenAI", "Azure OpenAI"); ``timeout_s`` (the attempt's) bounds the call.
        ``body`` is bytes, or a ``Form`` (gateway/form.py) sent in pieces with backpressure
        (give its ``content_type`` in ``headers``)."""
        with _mapped(upstream, timeout_s):
            return Answer(*await self._client.request(method, url, body, headers, params, timeout_s))

    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str], *, upstream: str,
                        timeout_s: float | None, params: Mapping[str, str] | None = None) -> Answer:
        """POST an encoded JSON body (``headers`` should carry its Content-Type)."""
        # try/except rather than ``_mapped``: a context manager's generator would wait with every
        # call for its answer (about 480 bytes per request in flight, bench/inflight_memory.py).
        try:
            return Answer(*await self._client.request("POST", url, body, headers, params, timeout_s))
        except _TRANSPORT_ERRORS as exc:
            raise _provider_error(exc, upstream, timeout_s) from None

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, *, upstream: str, timeout_s: float | None,
                     headers: Mapping[str, str] = _NO_HEADERS, body: bytes | Payload = b"",
                     params: Mapping[str, str] | None = None) -> AsyncIterator[StreamingAnswer]:
        """Send one request and read its answer as it arrives (Server-Sent Events, say):
        ``async with self.http.stream(...) as answer: async for name, data in answer.events()``.
        ``timeout_s`` bounds the wait for the answer's headers; leaving the block before the end
        of the body aborts the connection (the upstream call is cancelled)."""
        with _mapped(upstream, timeout_s):
            status, answer_headers, body_stream = await self._client.stream(method, url, body, headers, params,
                                                                            timeout_s)
        try:
            yield StreamingAnswer(status, answer_headers, body_stream, upstream)
        finally:
            body_stream.close()


class TracedUpstreamHTTP(UpstreamHTTP):
    """The same interface, made instead of ``UpstreamHTTP`` when tracing is on (gateway/app.py):
    every call of an upstream attempt carries that attempt's ``traceparent`` (and the client's
    ``tracestate``), whatever the plugin. With tracing off the gateway makes the plain class, so
    its calls pay nothing for this."""

    async def request(self, method: str, url: str, *, upstream: str, timeout_s: float | None,
                      headers: Mapping[str, str] = _NO_HEADERS, body: bytes | Payload = b"",
                      params: Mapping[str, str] | None = None) -> Answer:
        return await super().request(method, url, upstream=upstream, timeout_s=timeout_s,
                                     headers=_traced(url, headers), body=body, params=params)

    async def post_json(self, url: str, body: bytes, headers: Mapping[str, str], *, upstream: str,
                        timeout_s: float | None, params: Mapping[str, str] | None = None) -> Answer:
        return await super().post_json(url, body, _traced(url, headers), upstream=upstream, timeout_s=timeout_s,
                                       params=params)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, *, upstream: str, timeout_s: float | None,
                     headers: Mapping[str, str] = _NO_HEADERS, body: bytes | Payload = b"",
                     params: Mapping[str, str] | None = None) -> AsyncIterator[StreamingAnswer]:
        async with super().stream(method, url, upstream=upstream, timeout_s=timeout_s,
                                  headers=_traced(url, headers), body=body, params=params) as answer:
            yield answer


def _traced(url: str, headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` plus the current attempt's trace headers (none outside an attempt)."""
    trace = CURRENT.get()
    attempt = trace.attempt if trace is not None else None
    if attempt is None:
        return headers
    attempt.called(url)
    return {**headers, **attempt.headers}


class StreamingAnswer:
    """An upstream's answer whose body is read as it arrives (``UpstreamHTTP.stream``)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: BodyStream, upstream: str) -> None:
        self.status = status
        self.headers = headers
        self._body = body
        self._upstream = upstream

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; a transport failure is a ProviderError."""
        while True:
            with _mapped(self._upstream, None):
                chunk = await self._body.read()
            if chunk is None:
                return
            yield chunk

    async def read(self, limit_bytes: int = 1 << 20) -> bytes:
        """The whole (error) body, up to ``limit_bytes``."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit_bytes:
                break
        return b"".join(parts)[:limit_bytes]

    async def events(self) -> AsyncIterator[tuple[str, bytes]]:
        """The body as Server-Sent Events: (event name, data) pairs (gateway/sse.py)."""
        async for item in sse_events(self.chunks()):
            yield item
