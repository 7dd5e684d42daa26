"""A lean, pooled HTTP/1.1 client for the calls on the hot path: send a request, read the answer.

Why not aiohttp's ClientSession here: per request it builds a ClientRequest, a ClientResponse,
a payload object, a timer context, a trace context and a StreamReader, and hands the body over
through an async iterator; on the benchmark's S1 that is about a third of the gateway's CPU.
This client writes the request in one ``transport.write``, lets httptools (llhttp, the parser
of Node.js and uvicorn) parse the answer as it arrives, and resolves one future with the whole
body. It does only what a provider call needs: keep-alive connections per origin, a pool limit
with a FIFO queue, TLS, a response size limit, gzip/deflate when an upstream compresses anyway
(inflated as it arrives, a slice per event-loop turn, and refused once past the size limit:
gateway/inflate.py).
No redirects, cookies or proxies (the session it replaces had ``trust_env=False`` too).
Plugins reach it through ``gateway.upstream_http.UpstreamHTTP``, never directly.

Failures are plain exceptions for ``UpstreamHTTP`` to translate: ``OSError`` (connect, reset,
the upstream closing early), ``UpstreamProtocolError`` (unparseable answer) and
``ResponseTooLarge``. A cancelled call (router timeout, client gone) aborts its connection.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
import time
import zlib
from functools import lru_cache
from typing import Any, Iterator, Mapping, NamedTuple, Protocol
from urllib.parse import urlencode, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import __version__
from gateway.inflate import InflatedTooLarge, Inflater

USER_AGENT = f"OpenGateway/{__version__}"
_BODILESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


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


class _Target(NamedTuple):
    origin: Origin
    head: bytes  # "POST /path?query HTTP/1.1\r\nHost: ...\r\n" + fixed headers


def check_url(url: str) -> str:
    """``url`` if this client can call it (http or https, with a host); ValueError otherwise.
    Providers call it on their configured URLs, so a bad one is a start-up problem."""
    _target("GET", url, "")
    return url


@lru_cache(maxsize=1024)  # URLs come from provider settings: few and fixed
def _target(method: str, url: str, query: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default_port = port == (443 if parts.scheme == "https" else 80)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if query:
        path += ("&" if parts.query else "?") + query
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host if default_port else f'{host}:{port}'}\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\n")
    return _Target(Origin(parts.scheme, parts.hostname, port), head.encode("ascii"))


def _header_block(headers: Mapping[str, str]) -> str:
    block = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if block.count("\n") != len(headers) or block.count("\r") != len(headers):
        raise ValueError("header names and values must not contain CR or LF")
    return block


#: What a connection's header and body lists are between answers: never appended to, since the
#: parser calls ``on_message_begin`` (which makes an answer's own lists) before any other callback.
_NO_LIST: list[Any] = []


class _Connection(asyncio.Protocol):
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

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
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


class _Deadlines:
    """The timeouts of the calls waiting for their answers, in slots of ``SLOT_S``: one timer per
    slot that holds calls, not one per call. A uvloop timer handle costs about 500 bytes and
    thousands of calls wait at once (bench/inflight_memory.py); a call times out at most
    ``SLOT_S`` after its deadline."""

    SLOT_S = 0.025

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, dict[asyncio.Future[Any], None]] = {}

    def add(self, deadline: float, waiter: asyncio.Future[Any]) -> int:
        """Fail ``waiter`` with TimeoutError once ``deadline`` (loop time) has passed; its slot."""
        slot = math.ceil(deadline / self.SLOT_S)
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = {}
            self._loop.call_at(slot * self.SLOT_S, self._expire, slot)
        waiters[waiter] = None
        return slot

    def discard(self, slot: int, waiter: asyncio.Future[Any]) -> None:
        waiters = self._slots.get(slot)
        if waiters is not None:
            waiters.pop(waiter, None)

    def _expire(self, slot: int) -> None:
        for waiter in self._slots.pop(slot, ()):
            if not waiter.done():
                waiter.set_exception(TimeoutError())


def _fail(answer: asyncio.Future[Any], exc: BaseException) -> None:
    if answer.done():
        return
    if isinstance(exc, asyncio.CancelledError):  # the loop is shutting down
        answer.cancel()
    else:
        answer.set_exception(exc)


class _NewCall:
    """A call whose request a task writes once it has a connection (``HTTPClient.request``)."""

    __slots__ = ("pool", "task", "conn")

    def __init__(self, pool: HTTPClient) -> None:
        self.pool = pool
        self.task: asyncio.Task[None] | None = None
        #: Set once the request is written: from then on the answer is the connection's.
        self.conn: _Connection | None = None

    def settled(self, answer: asyncio.Future[Any]) -> None:
        if self.conn is not None:
            self.pool._answered(self.conn, answer)
        elif answer.cancelled() and self.task is not None and not self.task.done():
            self.task.cancel()  # given up while its connection is being made: stop making it
        self.task = self.conn = None


def _request_bytes(method: str, url: str, body: bytes | Payload, headers: Mapping[str, str],
                   params: Mapping[str, str] | None) -> tuple[Origin, bytes, Payload | None]:
    """The request line, headers and (for bytes) body in one buffer; a Payload is sent after it."""
    target = _target(method, url, urlencode(params) if params else "")
    payload = None
    if not isinstance(body, bytes):
        payload, body = body, b""
        length = b"Content-Length: %d\r\n\r\n" % payload.content_length
    else:
        length = b"Content-Length: %d\r\n\r\n" % len(body) if body or method not in _BODILESS else b"\r\n"
    return target.origin, b"".join((target.head, _header_block(headers).encode("latin-1"), length, body)), payload


class Payload(Protocol):
    """A request body sent in pieces (gateway/form.py): its length, then its parts in order."""

    @property
    def content_length(self) -> int: ...

    def parts(self) -> Iterator[bytes | memoryview]: ...


class HTTPClient:
    """Keep-alive connections per origin, at most ``limit`` open in all (0: no limit)."""

    def __init__(self, *, limit: int = 0, keepalive_s: float = 30.0, max_body_bytes: int = 256 << 20,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.max_body_bytes = max_body_bytes
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = collections.defaultdict(list)
        self._open = 0  # connecting, busy or idle
        self._busy = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: _Deadlines | None = None

    @property
    def in_use(self) -> int:
        """Connections carrying a request right now."""
        return self._busy

    @property
    def open_connections(self) -> int:
        return self._open

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None, timeout_s: float | None = None,
                   ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        return await self.request("POST", url, body, headers, params, timeout_s)

    def request(self, method: str, url: str, body: bytes | Payload, headers: Mapping[str, str],
                params: Mapping[str, str] | None = None, timeout_s: float | None = None,
                ) -> asyncio.Future[tuple[int, CIMultiDictProxy[str], bytes]]:
        """Send ``method`` with ``body`` and ``headers`` (Host, User-Agent, Content-Length are
        added; no Content-Length for a body-less GET, HEAD or DELETE); awaited, the status, headers
        and the whole (decompressed) body. ``timeout_s`` bounds the whole call (waiting for a
        pooled connection included) with TimeoutError. Cancelling the future gives the call up.

        Not a coroutine: the request is written (on a pooled connection at once, else by a task
        that connects first) and the answer's future returned, so a call waiting for its answer
        (seconds to minutes for an image) holds no frame of this client, only that future."""
        origin, request, payload = _request_bytes(method, url, body, headers, params)
        loop = self._loop
        if loop is None:  # one client, one loop (and Python 3.11 makes a system call per lookup)
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        answer: asyncio.Future[tuple[int, CIMultiDictProxy[str], bytes]] = loop.create_future()
        conn = self._idle_connection(origin) if payload is None else None
        if conn is not None:
            self._send(conn, request, answer, deadline)
        else:
            call = _NewCall(self)
            call.task = loop.create_task(self._connect_and_send(origin, request, payload, answer, deadline, call))
            # Added before the caller awaits: runs before it resumes, like _Connection.answered.
            answer.add_done_callback(call.settled)
        return answer

    async def _connect_and_send(self, origin: Origin, request: bytes, payload: Payload | None,
                                answer: asyncio.Future[Any], deadline: float | None, call: _NewCall) -> None:
        """A request that needs a new connection, or a wait for a free one (rare, so asyncio's
        timeout is fine here), or whose body is sent in pieces: until it is written. Its outcome
        goes to ``answer``, never out of this task."""
        try:
            conn = self._idle_connection(origin)
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._acquire(origin)
        except BaseException as exc:
            _fail(answer, exc)
            return
        if answer.done():  # given up meanwhile: nothing was sent on it
            self._release(conn, reuse=conn.reusable_idle())
            return
        if payload is None:
            try:
                self._send(conn, request, answer, deadline, call)
            except BaseException as exc:
                _fail(answer, exc)
            return
        conn.waiter = answer
        try:
            assert conn.transport is not None
            conn.transport.write(request)
            del request
            async with asyncio.timeout_at(deadline):  # an edit's images: sent with backpressure
                await conn.send(payload)
        except BaseException as exc:
            conn.waiter = None
            self._release(conn, reuse=False)
            _fail(answer, exc)
            return
        self._watch(conn, answer, deadline, call)

    def _send(self, conn: _Connection, request: bytes, answer: asyncio.Future[Any], deadline: float | None,
              call: _NewCall | None = None) -> None:
        """Write ``request`` whole on ``conn``; its answer goes to ``answer``."""
        conn.waiter = answer
        try:
            assert conn.transport is not None
            conn.transport.write(request)
        except BaseException:
            conn.waiter = None
            self._release(conn, reuse=False)
            raise
        self._watch(conn, answer, deadline, call)

    def _watch(self, conn: _Connection, answer: asyncio.Future[Any], deadline: float | None,
               call: _NewCall | None = None) -> None:
        """The request is written whole: bound the wait for its answer (a slot of the shared
        deadlines, not a Timeout context or a timer per call) and give the connection back once
        the answer is done (``_Connection.answered``, run before the caller resumes: a future's
        callbacks run in the order they were added)."""
        if call is not None and answer.done():
            # Answered while its body was still going out (an upstream may answer an upload with
            # a 401 or 413 after its head): the caller has its answer, and ``call.settled`` ran
            # before this connection was the call's; give the connection back now it is sent.
            call.task = None
            self._answered(conn, answer)
            return
        if deadline is not None:
            deadlines = self._deadlines
            if deadlines is None:
                assert self._loop is not None
                deadlines = self._deadlines = _Deadlines(self._loop)
            conn.deadline_slot = deadlines.add(deadline, answer)
        if call is None:
            answer.add_done_callback(conn.answered)
        else:  # its callback is in place already; its task ends here
            call.conn, call.task = conn, None

    def _answered(self, conn: _Connection, answer: asyncio.Future[Any]) -> None:
        if conn.deadline_slot is not None:
            if self._deadlines is not None:
                self._deadlines.discard(conn.deadline_slot, answer)
            conn.deadline_slot = None
        conn.waiter = None
        if answer.cancelled():  # the caller gave up (a router timeout, a client that left)
            self._release(conn, reuse=False)
            return
        exc = answer.exception()
        if exc is not None:
            mark_sent(exc)  # written whole: the upstream may have taken it and be working on it
            self._release(conn, reuse=False)
            return
        self._release(conn, reuse=conn.reusable())

    async def stream(self, method: str, url: str, body: bytes | Payload, headers: Mapping[str, str],
                     params: Mapping[str, str] | None = None, timeout_s: float | None = None,
                     ) -> tuple[int, CIMultiDictProxy[str], BodyStream]:
        """Like ``request``, but return as soon as the status and headers are in, with the body to
        read as it arrives. ``timeout_s`` bounds the wait for the headers; the reader bounds the
        rest, and must ``close`` the BodyStream (it releases or aborts the connection)."""
        origin, request, payload = _request_bytes(method, url, body, headers, params)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        async with asyncio.timeout_at(deadline):
            conn = self._idle_connection(origin) or await self._acquire(origin)
            sink = conn.sink = BodyStream(conn)
            waiter: asyncio.Future[tuple[int, CIMultiDictProxy[str], BodyStream]] = loop.create_future()
            conn.waiter = waiter
            sent = False
            try:
                assert conn.transport is not None
                conn.transport.write(request)
                if payload is not None:
                    await conn.send(payload)
                sent = True
                status, answer_headers, _ = await waiter
            except BaseException as exc:
                conn.sink, conn.waiter = None, None
                self._release(conn, reuse=False)
                if sent:
                    mark_sent(exc)
                raise
        if any(name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity")
               for name, value in answer_headers.items()):
            sink.close()
            raise UpstreamProtocolError("the upstream compressed a streamed answer it was asked to send as is")
        return status, answer_headers, sink

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        if self._closed:
            raise ConnectionError("the upstream client is closed")
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: warmest, least likely to be timed out
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                conn._reset()
                self._busy += 1
                return conn
            conn.close()
        return None

    async def _acquire(self, origin: Origin) -> _Connection:
        while self.limit and self._open >= self.limit:
            self._evict_one_idle()  # a connection idling to another upstream makes room
            # FIFO: woken by a release or a closed connection; a cancelled waiter passes its turn on
            ticket = asyncio.get_running_loop().create_future()
            self._queue.append(ticket)
            try:
                await ticket
            except BaseException:
                if not ticket.cancelled() and ticket.done():
                    self._wake()
                raise
            finally:
                if ticket in self._queue:
                    self._queue.remove(ticket)
            conn = self._idle_connection(origin)
            if conn is not None:
                return conn
        self._open += 1
        self._busy += 1
        try:
            return await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._busy -= 1
            self._wake()
            raise

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            tls = self._ssl if self._ssl is not None else _default_tls()
        _, conn = await loop.create_connection(lambda: _Connection(self, origin), origin.host, origin.port,
                                               ssl=tls, server_hostname=origin.host if tls else None)
        return conn

    def _evict_one_idle(self) -> None:
        """Close the longest-idle connection (to any upstream): its connection_lost wakes a waiter."""
        oldest = min((idle[0] for idle in self._idle.values() if idle), key=lambda c: c.idle_since, default=None)
        if oldest is not None:
            self._idle[oldest.origin].remove(oldest)
            oldest.close()

    def _release(self, conn: _Connection, reuse: bool) -> None:
        self._busy -= 1
        if reuse and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle[conn.origin].append(conn)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_s, self._sweep)
        else:
            conn.close()  # connection_lost -> _forget -> a queued request may connect
        self._wake()

    def _forget(self, conn: _Connection) -> None:
        """connection_lost: count it out and drop it from the idle list."""
        self._open -= 1
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle for longer than ``keepalive_s``."""
        self._sweeper = None
        deadline = time.monotonic() - self.keepalive_s
        remaining = 0
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= deadline]:
                idle.remove(conn)
                conn.close()
            remaining += len(idle)
        if remaining and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_s / 2, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let connection_lost run


@lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()
