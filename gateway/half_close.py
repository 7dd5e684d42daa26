"""Answering clients that shut down their write side after a request (``shutdown(SHUT_WR)``).

aiohttp's ``RequestHandler.eof_received`` returns None, which tells asyncio to close the
transport at the client's FIN: the connection is lost before the answer is written, and with
``handler_cancellation`` the request is cancelled, so such a client gets nothing, not even from
``/healthz`` (https://github.com/aio-libs/aiohttp/issues/3659, open for aiohttp 3.14).

A FIN says only "no more bytes from me": a client that half-closed waits for its answer, one
that closed its socket has gone. The two look the same until the server sends something, and
the gateway cancels the upstream call of a client that left (an abandoned image is not paid for
to the end). So, at a FIN with complete requests in hand:

- the transport stays open for writing (``eof_received`` returns True), no further request is
  read, and the connection closes once the answers to the requests in hand (pipelined ones
  included) are written;
- once a handler runs with nothing written yet, an HTTP/1.1 client is sent ``100 Continue``,
  an interim answer every HTTP/1.1 client must accept and may ignore (RFC 9110, 15.2). A client
  that has closed its socket answers it with a reset; the socket's state (``TCP_INFO``, Linux)
  is checked every ``PEER_CHECK_S``, and a reset connection is aborted, which cancels its
  request as before.

A FIN on an idle connection, or in the middle of a request body, closes the connection at once,
as aiohttp does.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

__all__ = ["HalfCloseAppRunner", "PEER_CHECK_S"]

#: How often a half-closed connection with a request in flight checks that its client is there.
PEER_CHECK_S = 1.0
_PROBE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TCP_CLOSE = 7  # include/net/tcp_states.h: after a reset, a CLOSE_WAIT socket goes to CLOSE


class _Requests(list[Any]):
    """A connection's queue of received requests (aiohttp's ``RequestHandler._messages``), which
    aiohttp uses through ``append``, ``popleft``, ``len`` and truth only. Its own deque costs 760
    bytes however empty (the first block holds 64 entries); the queue holds one request nearly
    always, at most 32 (aiohttp's MAX_MSG_QUEUE_SIZE)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class HalfCloseHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol, answering what it received before a client's FIN; also lighter
    per request in flight (``_Requests``, ``data_received``, ``finish_response``)."""

    __slots__ = ("_peer_check", "_probed")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer_check: asyncio.Handle | None = None
        self._probed = False
        if type(self._messages) is collections.deque and not self._messages:
            self._messages = _Requests()  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages and self._keepalive_handle is not None:
            # A request has arrived: the idle timer aiohttp armed when the connection opened is
            # not needed while it is handled (aiohttp arms a new one after the answer), and a
            # timer handle costs about 650 bytes per request in flight (bench/inflight_memory.py).
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        answer = await super().finish_response(request, resp, start_time)
        written = answer[0]
        if type(written) in (web.Response, web.StreamResponse):
            # Written: aiohttp keeps the last response of a connection until the next request on
            # it has been answered (or the connection closes), and with it its headers and body
            # (up to 64 KB here; gateway/response.py streams larger ones). aiohttp reads only its
            # keep_alive from now on.
            written.headers.clear()
            if type(written) is web.Response:
                written.body = None
        return answer

    def _idle(self) -> bool:
        """Waiting for a request that will not come."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio's contract: True keeps it open
        if self._idle():
            return False  # close, as aiohttp does
        try:  # the parser knows whether the last request (headers, body) is complete
            cut_short = self._parser is not None and self._parser.feed_eof() is not None
        except HttpProcessingError:
            cut_short = True
        if cut_short:
            return False  # it never will be: close, as aiohttp does
        if not self._messages:
            self.close()  # only the request in hand: close once its answer is written
        # (pipelined requests still queued: aiohttp's close() would drop them; _check_peer
        # closes the connection once they are answered)
        self._peer_check = self._loop.call_soon(self._check_peer)
        return True

    def _check_peer(self) -> None:
        self._peer_check = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._idle():  # every request answered
            transport.close()
            return
        if _reset(transport):
            transport.abort()  # connection_lost follows: the request is cancelled
            return
        request = self._current_request
        if not self._probed and request is not None and request.version >= HttpVersion11 \
                and request.writer.output_size == 0:
            transport.write(_PROBE)
            self._probed = True
        self._peer_check = self._loop.call_later(PEER_CHECK_S, self._check_peer)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._peer_check is not None:
            self._peer_check.cancel()
            self._peer_check = None
        super().connection_lost(exc)


def _reset(transport: asyncio.BaseTransport) -> bool:
    """The client answered with a reset (Linux; elsewhere never known, so never assumed)."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE)
    except OSError:
        return True


class _HalfCloseServer(web.Server):
    def __call__(self) -> RequestHandler:
        return HalfCloseHandler(self, loop=self._loop, **self._kwargs)


class HalfCloseAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``HalfCloseHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no parameter for the protocol class: the server aiohttp built (its
        # handler, request factory and settings) is kept, only its factory method changes.
        server.__class__ = _HalfCloseServer
        return server
