"""One upstream connection of the pooled client (gateway/http_client.py): the asyncio protocol
that carries a request and parses its answer as it arrives.

httptools (llhttp, the parser of Node.js and uvicorn) calls back into ``Connection`` for each
part of the answer; a whole body resolves the call's future once, a streamed one
(``BodyStream``) is read as it comes, with the socket paused while the reader is behind. An
answer over the client's size limit, a broken one, or a gzip/deflate body that inflates past the
limit (gateway/inflate.py) fails the call and drops the connection. What the pool does with a
connection afterwards (keep it, close it, hand it to a queued call) is the client's.
"""

from __future__ import annotations

import asyncio
import collections
import zlib
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.inflate import InflatedTooLarge, Inflater

if TYPE_CHECKING:
    from gateway.http_client import HTTPClient


class UpstreamProtocolError(OSError):
    """The upstream's bytes are not a valid HTTP/1.1 answer."""


class ResponseTooLarge(Exception):
    def __init__(self, limit: int, size: int | None) -> None:
        super().__init__(f"response larger than {limit} bytes")
        self.limit, self.size = limit, size


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class Payload(Protocol):
    """A request body sent in pieces (gateway/form.py): its length, then its parts in order."""

    @property
    def content_length(self) -> int: ...

    def parts(self) -> Iterator[bytes | memoryview]: ...


#: What a connection's header and body lists are between answers: never appended to, since the
#: parser calls ``on_message_begin`` (which makes an answer's own lists) before any other callback.
_NO_LIST: list[Any] = []


class Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight, answered through ``waiter``."""

    __slots__ = ("pool", "origin", "transport", "parser", "waiter", "closed", "idle_since", "past_parser",
                 "status", "headers", "chunks", "size", "declared", "complete", "keep_alive", "until_eof", "sink",
                 "drained", "inflater", "inflating", "body_in", "paused", "deadline_slot")

    def __init__(self, pool: HTTPClient, origin: Origin) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport | None = None
        #: Made when an answer's first bytes arrive and dropped once it is complete: a call waiting
        #: for its answer (seconds to minutes for an image) holds no parser (about 770 bytes).
        self.parser: httptools.HttpResponseParser | None = None
        #: The call's answer: (status, headers, body), or (status, headers, BodyStream) when streaming.
        self.waiter: asyncio.Future[tuple[int, CIMultiDictProxy[str], Any]] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.past_parser = False
        #: A streaming call's body, handed to its reader as it arrives (``HTTPClient.stream``).
        self.sink: BodyStream | None = None
        #: Set while the transport's write buffer is full (a large request body waits for it).
        self.drained: asyncio.Future[None] | None = None
        #: The slot of the pool's deadlines the call's answer waits in.
        self.deadline_slot: int | None = None
        self._reset()

    def _reset(self) -> None:
        if self.past_parser:  # the last body went round the parser, which still expects it
            self.parser = None
            self.past_parser = False
        self.status = 0
        # An answer's own lists come with its first bytes (on_message_begin); until then, none.
        self.headers: list[tuple[str, str]] = _NO_LIST
        self.chunks: list[bytes] = _NO_LIST
        self.size = 0
        self.declared: int | None = None  # the answer's Content-Length
        self.complete = False
        self.keep_alive = False
        self.until_eof = False  # no Content-Length, not chunked: the body ends with the connection
        self.inflater: Inflater | None = None  # a gzip or deflate answer
        self.inflating: asyncio.Handle | None = None  # the next inflate slice, when one is due
        self.body_in = False  # the whole body has arrived (it may still be inflating)
        self.paused = False  # reading paused while the inflater catches up

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # TCP_NODELAY is already on: asyncio and uvloop set it on every TCP transport they make
        # (tests/test_http_client.py checks both). Asking for the socket here would cost each
        # connection a cached socket object.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.sink is None and (self.waiter is None or self.waiter.done()):  # bytes nobody asked for
            self.close()
            return
        if self.past_parser:
            self._body_bytes(data)
            return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
            waiter = self.waiter
            if self.declared is not None and not self.complete and waiter is not None and not waiter.done():
                # The rest of a Content-Length body is kept as the socket delivers it: the parser
                # would copy every chunk once more (megabytes of base64) before the final join.
                self.past_parser = True
        except httptools.HttpParserCallbackError as exc:  # raised by one of the callbacks below
            cause = exc.__context__
            self._fail(cause if isinstance(cause, ResponseTooLarge) else
                       UpstreamProtocolError(f"invalid HTTP answer from the upstream: {cause or exc}"))
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid HTTP answer from the upstream: {exc}"))

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def send(self, payload: Payload) -> None:
        """A request body in pieces, waiting whenever the transport's buffer is full: its memory
        stays bounded whatever the body's size."""
        for part in payload.parts():
            if self.transport is None:
                raise ConnectionResetError("the upstream closed the connection while the request was sent")
            self.transport.write(part)
            if self.drained is not None:
                await self.drained

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ConnectionResetError("the upstream closed the connection"))
            self.drained.exception()  # retrieved here: nobody may be waiting for it
        self.pool._forget(self)
        waiter = self.waiter
        if self.sink is not None and not self.complete:
            self.sink.end(None if self.until_eof and self.status else ConnectionResetError(
                "the upstream closed the connection before answering in full"))
        if waiter is not None and not waiter.done() and not self.body_in:  # (body_in: still inflating)
            if self.until_eof and self.status:
                self._finish()
            else:
                waiter.set_exception(ConnectionResetError(
                    "the upstream closed the connection before answering in full"))
        # The parser holds bound methods of this object and the transport holds it: break both
        # cycles, so a closed connection is freed now rather than by a later garbage collection.
        self.parser = None
        self.transport = None

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers, self.chunks = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None  # (it is the caller)
        self.status = parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer (we never send Expect): wait for the real one
            return
        length = None
        chunked = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                length = int(value)  # llhttp has already refused a malformed one
            elif lower == "transfer-encoding":
                chunked = "chunked" in value.lower()
        limit = self.pool.max_body_bytes
        if length is not None and length > limit:
            raise ResponseTooLarge(limit, length)
        self.declared = None if chunked else length
        self.keep_alive = parser.should_keep_alive()  # Connection and version: known by now
        self.until_eof = length is None and not chunked
        if self.sink is not None and self.waiter is not None and not self.waiter.done():
            # A streaming call gets the status and headers now, the body as it comes.
            self.waiter.set_result((self.status, CIMultiDictProxy(CIMultiDict(self.headers)), self.sink))
            return
        encoding = next((v for n, v in self.headers if n.lower() == "content-encoding"), "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self.inflater = Inflater(encoding, limit)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.pool.max_body_bytes:
            raise ResponseTooLarge(self.pool.max_body_bytes, None)
        if self.sink is not None:
            self.sink.feed(body)
        elif self.inflater is not None:
            self._inflate(body)
        else:
            self.chunks.append(body)

    def _body_bytes(self, data: bytes) -> None:
        """The rest of a Content-Length body, past the parser."""
        assert self.declared is not None
        left = self.declared - self.size
        if len(data) > left:  # more than the upstream declared: keep the body, drop the connection
            data = data[:left]
            self.keep_alive = False
        if self.inflater is not None:
            self._inflate(data)
        else:
            self.chunks.append(data)
        self.size += len(data)
        if self.size == self.declared:
            self.complete = True
            self._finish()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            self._reset()
            return
        self.complete = True
        assert self.parser is not None  # (it is the caller)
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful while the message is current
        self._finish()

    # -- results ----------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.complete:
            self.parser = None  # the next answer gets a fresh one (see __init__)
        if self.sink is not None:
            self.sink.end(None)
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        self.body_in = True
        inflater = self.inflater
        if inflater is not None:
            if self.inflating is not None:  # the last slice finishes the answer
                return
            try:
                body = inflater.result()
            except zlib.error as exc:
                self._fail(UpstreamProtocolError(f"the upstream's compressed body is corrupt: {exc}"))
                return
            self.inflater = None
        else:
            chunks = self.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        headers = CIMultiDict(self.headers)
        # An idle pooled connection must not hold its last answer (thousands of them can idle).
        self.chunks, self.headers = _NO_LIST, _NO_LIST
        if inflater is not None:
            headers.popall("Content-Encoding")
        waiter.set_result((self.status, CIMultiDictProxy(headers), body))

    # -- compressed answers -----------------------------------------------------------------------

    def _inflate(self, data: bytes) -> None:
        """Queue compressed body bytes; one slice is inflated per event-loop turn, never all at once."""
        assert self.inflater is not None
        self.inflater.feed(data)
        if self.inflating is None:
            self.inflating = asyncio.get_running_loop().call_soon(self._inflate_slice)

    def _inflate_slice(self) -> None:
        self.inflating = None
        inflater, waiter = self.inflater, self.waiter
        if inflater is None or waiter is None or waiter.done():  # failed, timed out or cancelled
            return
        try:
            more = inflater.inflate_slice()
        except InflatedTooLarge:
            self._fail(ResponseTooLarge(self.pool.max_body_bytes, None))
            return
        except zlib.error as exc:
            self._fail(UpstreamProtocolError(f"the upstream's compressed body is corrupt: {exc}"))
            return
        if more:
            self.inflating = asyncio.get_running_loop().call_soon(self._inflate_slice)
            if not self.paused and self.transport is not None:
                # Compressed bytes wait in the socket, not in memory, while the inflater catches up.
                self.transport.pause_reading()
                self.paused = True
            return
        if self.paused:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        if self.body_in:
            self._finish()

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.sink is not None:
            self.sink.end(exc)
        self.close()

    def _drop_inflater(self) -> None:
        if self.inflating is not None:
            self.inflating.cancel()
            self.inflating = None
        if self.inflater is not None:
            self.inflater.close()
            self.inflater = None

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    def reusable_idle(self) -> bool:
        """Nothing was sent on it since it was opened or last answered."""
        return not self.closed and self.transport is not None

    def answered(self, answer: asyncio.Future[Any]) -> None:
        """The call's answer is done (a result, a failure, a timeout, or its caller gave up)."""
        self.pool._answered(self, answer)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost follows and forgets it
        self.closed = True
        self._drop_inflater()


class BodyStream:
    """A streaming call's body as the socket delivers it, read chunk by chunk (``read``). Reading
    from the socket pauses while more than ``HIGH_WATER_BYTES`` wait unread, so a slow reader
    holds the rest in the kernel, not in memory. ``close`` gives the connection back to the pool
    when the body was read to its end, and aborts it otherwise (the reader gave up)."""

    HIGH_WATER_BYTES = 8 << 20
    LOW_WATER_BYTES = 1 << 20

    __slots__ = ("_conn", "_chunks", "_buffered", "_done", "_error", "_waiter", "_paused")

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        conn = self._conn
        if self._buffered > self.HIGH_WATER_BYTES and not self._paused and conn is not None and conn.transport:
            conn.transport.pause_reading()
            self._paused = True
        self._wake()

    def end(self, error: BaseException | None) -> None:
        if not self._done:
            self._done, self._error = True, error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes | None:
        """The next chunk of the body; None at its end; raises what broke it."""
        while not self._chunks and not self._done:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._chunks:
            data = self._chunks.popleft()
            self._buffered -= len(data)
            conn = self._conn
            if self._paused and self._buffered < self.LOW_WATER_BYTES and conn is not None and conn.transport:
                conn.transport.resume_reading()
                self._paused = False
            return data
        if self._error is not None:
            raise self._error
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.sink, conn.waiter = None, None
        read_to_end = self._done and self._error is None and not self._chunks
        conn.pool._release(conn, reuse=read_to_end and conn.reusable())


def mark_sent(exc: BaseException) -> None:
    """Mark a failure that came after the whole request was sent: the upstream may have taken it
    and be working (and billing) on it. The timeout of the whole call (TimeoutError, raised by
    ``asyncio.timeout`` around the wait) is marked by the caller."""
    if isinstance(exc, Exception):
        exc.after_send = True  # type: ignore[attr-defined]


def was_sent(exc: BaseException) -> bool:
    return bool(getattr(exc, "after_send", False))
