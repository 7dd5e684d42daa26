"""A lean, pooled HTTP/1.1 client for the calls on the hot path: send a request, read the answer.

Why not aiohttp's ClientSession here: per request it builds a ClientRequest, a ClientResponse,
a payload object, a timer context, a trace context and a StreamReader, and hands the body over
through an async iterator; on the benchmark's S1 that is about a third of the gateway's CPU.
This client writes the request in one ``transport.write``, lets httptools (llhttp, the parser
of Node.js and uvicorn) parse the answer as it arrives on the connection (gateway/http_connection.py),
and resolves one future with the whole body. It does only what a provider call needs: keep-alive connections per origin, a pool limit
with a FIFO queue, TLS, a response size limit, gzip/deflate when an upstream compresses anyway
(inflated as it arrives, a slice per event-loop turn, and refused once past the size limit:
gateway/inflate.py).
No redirects, cookies or proxies (the session it replaces had ``trust_env=False`` too).
Plugins reach it through ``gateway.upstream_http.UpstreamHTTP``, never directly.

Failures are plain exceptions for ``UpstreamHTTP`` to translate: ``OSError`` (connect, reset,
the upstream closing early), ``UpstreamProtocolError`` (unparseable answer) and
``ResponseTooLarge`` (both in gateway/http_connection.py). A cancelled call (router timeout, client gone) aborts its connection.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
import time
from functools import lru_cache
from typing import Any, Mapping, NamedTuple
from urllib.parse import urlencode, urlsplit

from multidict import CIMultiDictProxy

from gateway import __version__
from gateway.http_connection import BodyStream, Connection, Origin, Payload, UpstreamProtocolError, mark_sent

USER_AGENT = f"OpenGateway/{__version__}"
_BODILESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


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
        self.conn: Connection | None = None

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


class HTTPClient:
    """Keep-alive connections per origin, at most ``limit`` open in all (0: no limit)."""

    def __init__(self, *, limit: int = 0, keepalive_s: float = 30.0, max_body_bytes: int = 256 << 20,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.max_body_bytes = max_body_bytes
        self._ssl = ssl_context
        self._idle: dict[Origin, list[Connection]] = collections.defaultdict(list)
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
            # Added before the caller awaits: runs before it resumes, like Connection.answered.
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

    def _send(self, conn: Connection, request: bytes, answer: asyncio.Future[Any], deadline: float | None,
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

    def _watch(self, conn: Connection, answer: asyncio.Future[Any], deadline: float | None,
               call: _NewCall | None = None) -> None:
        """The request is written whole: bound the wait for its answer (a slot of the shared
        deadlines, not a Timeout context or a timer per call) and give the connection back once
        the answer is done (``Connection.answered``, run before the caller resumes: a future's
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

    def _answered(self, conn: Connection, answer: asyncio.Future[Any]) -> None:
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

    def _idle_connection(self, origin: Origin) -> Connection | None:
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

    async def _acquire(self, origin: Origin) -> Connection:
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

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            tls = self._ssl if self._ssl is not None else _default_tls()
        _, conn = await loop.create_connection(lambda: Connection(self, origin), origin.host, origin.port,
                                               ssl=tls, server_hostname=origin.host if tls else None)
        return conn

    def _evict_one_idle(self) -> None:
        """Close the longest-idle connection (to any upstream): its connection_lost wakes a waiter."""
        oldest = min((idle[0] for idle in self._idle.values() if idle), key=lambda c: c.idle_since, default=None)
        if oldest is not None:
            self._idle[oldest.origin].remove(oldest)
            oldest.close()

    def _release(self, conn: Connection, reuse: bool) -> None:
        self._busy -= 1
        if reuse and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle[conn.origin].append(conn)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_s, self._sweep)
        else:
            conn.close()  # connection_lost -> _forget -> a queued request may connect
        self._wake()

    def _forget(self, conn: Connection) -> None:
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
