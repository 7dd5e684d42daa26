"""A fast fake OpenAI images upstream for the benchmark (bench/run.py).

It answers ``POST /v1/images/generations`` and ``POST /v1/images/edits`` (any query string,
any body: an edit's multipart upload is read and dropped) with one pre-built 200 response in
OpenAI's exact shape::

    {"created": ..., "data": [{"b64_json": "..."}] * n, "background": "opaque",
     "output_format": "png", "quality": "medium", "size": "1024x1024", "usage": {...}}

and anything else with a pre-built 404. The base64 payload of each image is exactly
``--image-bytes`` characters (rounded up to a multiple of 4) of a valid base64 string whose
decoded bytes start with the PNG signature.

With ``--stream-partials K`` it answers generations as OpenAI streams them (``stream: true``, which
the gateway sends for a streaming client): ``K`` ``image_generation.partial_image`` events and one
``image_generation.completed``, as Server-Sent Events in a chunked answer (fake_answers.py);
``--event-gap-s`` spaces the events (the first goes out at once), so that a proxy that buffers the
stream shows it in the time to the first event.

Design, chosen for speed: a raw ``asyncio.Protocol`` on uvloop (when importable) with a minimal
HTTP/1.1 parser. Every request body is read in full (Content-Length or chunked), keep-alive and
pipelining are supported (``Connection: close`` and HTTP/1.0 without keep-alive close after the
answer), and the answer is one ``transport.write`` of pre-built bytes (a stream with event gaps:
one write per event, so pipelined requests are not supported then). ``--delay-s`` holds each
answer that long (used by S4 and S7: many in-flight requests against a slow upstream).

``--workers N`` forks N processes that each bind the port with SO_REUSEPORT, so the kernel
spreads connections between them. The benchmark starts it with one worker by default (on a
2-core machine shared with wrk and the proxy, more workers only add contention; see run.py).

Usage::

    python bench/fake_upstream.py --port 8081 [--image-bytes 1024] [--n 1] [--delay-s 0]
                                  [--stream-partials K [--event-gap-s 0]]
                                  [--workers 1] [--host 127.0.0.1]

It prints ``READY <port>`` on stdout once every worker listens, and exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

from fake_answers import Answers, Stream

try:  # uvloop is much faster; the fake still works without it.
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

_MAX_HEAD = 64 * 1024


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parse requests, skip their bodies, answer with pre-built bytes."""

    __slots__ = ("transport", "buf", "body_left", "chunked", "pending", "loop", "resp", "delay",
                 "gap", "closing", "closing_after")

    def __init__(self, resp: Answers, delay: float, gap: float = 0.0) -> None:
        self.resp = resp
        self.delay = delay
        self.gap = gap
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.body_left = 0          # bytes of a Content-Length body still to skip
        self.chunked = False        # inside a chunked body
        self.pending: bytes | Stream | None = None  # answer to send once the body is read
        self.loop = asyncio.get_event_loop()
        self.closing = False
        self.closing_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.body_left and not self.buf:
            # Fast path: the middle of a large body.
            if len(data) <= self.body_left:
                self.body_left -= len(data)
                if self.body_left == 0:
                    self._finish()
                return
            data = data[self.body_left:]
            self.body_left = 0
            self._finish()
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        buf = self.buf
        while buf and not self.closing:
            if self.body_left:
                take = min(self.body_left, len(buf))
                del buf[:take]
                self.body_left -= take
                if self.body_left:
                    return
                self._finish()
                continue
            if self.chunked:
                if not self._skip_chunks():
                    return
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._send(self.resp.bad_close, close=True)
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                self._send(self.resp.bad_close, close=True)
                return
            method, target, version = parts
            close = b"\r\nconnection: close" in head or (
                version == b"http/1.0" and b"\r\nconnection: keep-alive" not in head
            )
            path = target.split(b"?", 1)[0]
            answer: bytes | Stream
            if method == b"post" and path == b"/v1/images/generations" and self.resp.stream is not None:
                answer = self.resp.stream_close if close else self.resp.stream  # type: ignore[assignment]  # both set together
            elif method == b"post" and path in (b"/v1/images/generations", b"/v1/images/edits"):
                answer = self.resp.ok_close if close else self.resp.ok
            else:
                answer = self.resp.not_found_close if close else self.resp.not_found
            self.pending = answer
            self.closing_after = close
            if b"\r\ntransfer-encoding: chunked" in head:
                self.chunked = True
                continue
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 17)
                try:
                    self.body_left = int(head[i + 17 : j if j >= 0 else None].strip())
                except ValueError:
                    self._send(self.resp.bad_close, close=True)
                    return
            if not self.body_left:
                self._finish()

    def _skip_chunks(self) -> bool:
        """Consume chunks from the buffer; True once the whole chunked body is read."""
        buf = self.buf
        while True:
            nl = buf.find(b"\r\n")
            if nl < 0:
                return False
            size_s = bytes(buf[:nl]).split(b";", 1)[0].strip()
            try:
                size = int(size_s, 16)
            except ValueError:
                self._send(self.resp.bad_close, close=True)
                return False
            if size == 0:
                # Last chunk, then optional trailers, then an empty line.
                end = buf.find(b"\r\n\r\n", nl)
                if end < 0:
                    return False
                del buf[: end + 4]
                self.chunked = False
                self._finish()
                return True
            if len(buf) < nl + 2 + size + 2:
                return False
            del buf[: nl + 2 + size + 2]

    def _finish(self) -> None:
        answer, self.pending = self.pending, None
        if answer is None:
            return
        close = self.closing_after
        if self.delay > 0:
            self.loop.call_later(self.delay, self._send, answer, close)
        else:
            self._send(answer, close)

    def _send(self, answer: bytes | Stream, close: bool = False) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if isinstance(answer, Stream):
            if self.gap <= 0:
                answer = answer.whole
            else:
                t.write(answer.head_and_first)
                for i, chunk in enumerate(answer.rest, 1):
                    self.loop.call_later(self.gap * i, self._send, chunk, close and i == len(answer.rest))
                return
        t.write(answer)
        if close:
            self.closing = True
            t.close()


def _set_pdeathsig() -> None:
    """Die with the parent (Linux); best effort."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _listen_socket(host: str, port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def serve(sock: socket.socket, resp: Answers, delay: float, gap: float, ready_fd: int | None) -> None:
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    async def main() -> None:
        server = await loop.create_server(
            lambda: UpstreamProtocol(resp, delay, gap), sock=sock, backlog=4096
        )
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        await stop
        server.close()

    loop.run_until_complete(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--image-bytes", type=int, default=1024,
                    help="base64 characters per image (default 1024)")
    ap.add_argument("--n", type=int, default=1, help="images per answer (default 1)")
    ap.add_argument("--delay-s", type=float, default=0.0, help="hold each answer this long")
    ap.add_argument("--stream-partials", type=int, default=None, metavar="K",
                    help="answer generations as an SSE stream of K partial images + the completed one")
    ap.add_argument("--event-gap-s", type=float, default=0.0,
                    help="with --stream-partials: seconds between the stream's events (default 0)")
    ap.add_argument("--workers", type=int, default=1, help="processes (SO_REUSEPORT)")
    args = ap.parse_args(argv)

    resp = Answers(args.image_bytes, args.n, args.stream_partials)
    workers = max(1, args.workers)
    if workers == 1:
        sock = _listen_socket(args.host, args.port, reuseport=False)
        print(f"READY {sock.getsockname()[1]}", flush=True)
        serve(sock, resp, args.delay_s, args.event_gap_s, None)
        return 0

    # Reserve the port (bound, not listening: gets no connections), then fork the workers.
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind((args.host, args.port))
    port = reserve.getsockname()[1]
    children: list[int] = []
    readers: list[int] = []
    for _ in range(workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # worker
            os.close(r)
            reserve.close()
            _set_pdeathsig()
            try:
                sock = _listen_socket(args.host, port, reuseport=True)
                serve(sock, resp, args.delay_s, args.event_gap_s, w)
            finally:
                os._exit(0)
        os.close(w)
        children.append(pid)
        readers.append(r)
    for r in readers:
        os.read(r, 1)
        os.close(r)
    reserve.close()
    print(f"READY {port}", flush=True)

    def forward(sig: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
