"""gateway/http_client.py against a scripted raw-socket server on loopback: the exact bytes an
upstream may send (keep-alive, close, chunked, gzip, garbage, too much), and a real TLS one."""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import ssl
import time
import zlib
from typing import Callable

import pytest
import trustme

from gateway.http_client import HTTPClient
from gateway.http_connection import ResponseTooLarge, UpstreamProtocolError

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nx-request-id: r1\r\n\r\n{\"ok\":true}"


class Scripted:
    """A server answering each request with the next script entry (bytes, or a callable that
    gets the writer); counts connections and records every request head and body."""

    def __init__(self, *answers: bytes | Callable[[asyncio.StreamWriter], object]) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, tls: ssl.SSLContext | None = None) -> "Scripted":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append((head, await reader.readexactly(length)))
                answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                if callable(answer):
                    result = answer(writer)
                    if asyncio.iscoroutine(result):
                        await result
                    if writer.is_closing():
                        return
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def serve() -> object:
    servers: list[Scripted] = []

    async def start(*answers: bytes | Callable[[asyncio.StreamWriter], object]) -> Scripted:
        servers.append(await Scripted(*answers).start())
        return servers[-1]

    yield start
    for s in servers:
        await s.stop()


async def test_keep_alive_reuses_one_connection_and_sends_a_proper_request(serve) -> None:
    server = await serve(OK)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/v1/images/generations"
    for _ in range(5):
        status, headers, body = await client.post(url, b'{"a":1}', {"Authorization": "Bearer k"},
                                                  params={"api-version": "2025-04-01"})
        assert (status, body, headers["X-Request-Id"]) == (200, b'{"ok":true}', "r1")
    assert server.connections == 1
    head, sent = server.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/images/generations?api-version=2025-04-01 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines and "Authorization: Bearer k" in lines
    assert "Content-Length: 7" in lines and sent == b'{"a":1}'
    await client.close()


async def test_connection_close_is_not_reused(serve) -> None:
    server = await serve(OK.replace(b"Content-Length: 11\r\n", b"Content-Length: 11\r\nConnection: close\r\n"))
    client = HTTPClient()
    for _ in range(3):
        assert (await client.post(f"http://127.0.0.1:{server.port}/x", b"", {}))[0] == 200
    assert server.connections == 3
    await asyncio.sleep(0.01)
    assert client.open_connections == 0
    await client.close()


async def test_chunked_gzip_and_until_eof_bodies(serve) -> None:
    payload = b'{"data":[{"b64_json":"' + b"A" * 50_000 + b'"}]}'
    packed = gzip.compress(payload)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(packed[i:i + 1000]), packed[i:i + 1000]) for i in range(0, len(packed), 1000)) + b"0\r\n\r\n"

    def until_eof(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload)
        writer.close()

    server = await serve(chunked, until_eof)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/x"
    status, headers, body = await client.post(url, b"{}", {})
    assert (status, body) == (200, payload) and "Content-Encoding" not in headers
    status, _, body = await client.post(url, b"{}", {})
    assert (status, body) == (200, payload)
    await client.close()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_an_answer_over_the_limit_is_refused_and_its_connection_dropped(serve, declared: bool) -> None:
    big = b"x" * 100_000
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big) if declared else
              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
              b"".join(b"4000\r\n" + big[:0x4000] + b"\r\n" for _ in range(6)) + b"0\r\n\r\n")
    server = await serve(answer)
    client = HTTPClient(max_body_bytes=65_536)
    with pytest.raises(ResponseTooLarge):
        await client.post(f"http://127.0.0.1:{server.port}/x", b"", {})
    await asyncio.sleep(0.01)
    assert (client.in_use, client.open_connections) == (0, 0)
    await client.close()


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"],
                         ids=["not http", "bad content-length"])
async def test_garbage_is_a_protocol_error(serve, answer: bytes) -> None:
    server = await serve(answer)
    client = HTTPClient()
    with pytest.raises(UpstreamProtocolError):
        await client.post(f"http://127.0.0.1:{server.port}/x", b"", {})
    assert client.in_use == 0
    await client.close()


async def test_reset_before_and_during_the_answer(serve) -> None:
    def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()

    def half(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\":")
        writer.close()

    server = await serve(hang_up, half, OK)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/x"
    for _ in range(2):
        with pytest.raises(ConnectionResetError):
            await client.post(url, b"", {})
    assert (await client.post(url, b"", {}))[0] == 200  # a fresh connection after the failures
    await client.close()


async def test_an_idle_connection_the_upstream_closed_is_replaced(serve) -> None:
    def answer_then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(OK)  # says keep-alive, then closes anyway while idle
        asyncio.get_running_loop().call_later(0.02, writer.close)

    server = await serve(answer_then_close)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/x"
    assert (await client.post(url, b"", {}))[0] == 200
    await asyncio.sleep(0.1)
    assert client.open_connections == 0
    assert (await client.post(url, b"", {}))[0] == 200
    assert server.connections == 2
    await client.close()


async def test_pool_limit_queues_requests_and_cancellation_frees_the_slot(serve) -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1)
        writer.write(OK)

    server = await serve(slow)
    client = HTTPClient(limit=2)
    url = f"http://127.0.0.1:{server.port}/x"
    results = await asyncio.gather(*(client.post(url, b"", {}) for _ in range(6)))
    assert [r[0] for r in results] == [200] * 6
    assert server.connections == 2 and client.open_connections == 2

    stuck = asyncio.create_task(client.post(url, b"", {}))
    await asyncio.sleep(0.02)
    stuck.cancel()  # a router timeout or a client that left: the connection is aborted, not reused
    with pytest.raises(asyncio.CancelledError):
        await stuck
    await asyncio.sleep(0.01)
    assert client.in_use == 0 and client.open_connections == 1
    assert (await client.post(url, b"", {}))[0] == 200
    await client.close()


async def test_idle_connections_are_closed_after_keepalive(serve) -> None:
    server = await serve(OK)
    client = HTTPClient(keepalive_s=0.05)
    assert (await client.post(f"http://127.0.0.1:{server.port}/x", b"", {}))[0] == 200
    assert client.open_connections == 1
    await asyncio.sleep(0.2)
    assert client.open_connections == 0
    await client.close()


async def test_header_injection_is_refused(serve) -> None:
    server = await serve(OK)
    client = HTTPClient()
    with pytest.raises(ValueError):
        await client.post(f"http://127.0.0.1:{server.port}/x", b"", {"X-A": "1\r\nX-Injected: 2"})
    assert server.requests == [] and client.in_use == 0
    await client.close()


async def test_tls_with_certificate_verification(tmp_path: object) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server = await Scripted(OK).start(tls=server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    client = HTTPClient(ssl_context=trusting)
    for _ in range(2):
        status, _, body = await client.post(f"https://localhost:{server.port}/v1/x", b"{}", {})
        assert (status, body) == (200, b'{"ok":true}')
    assert server.connections == 1
    await client.close()
    # The default context does not trust the test CA: the handshake must fail, not fall back.
    with pytest.raises(ssl.SSLCertVerificationError):
        await HTTPClient().post(f"https://localhost:{server.port}/v1/x", b"{}", {})
    await server.stop()


async def test_timeout_bounds_the_answer_and_the_wait_for_a_connection(serve) -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await serve(never)
    client = HTTPClient(limit=1)
    url = f"http://127.0.0.1:{server.port}/x"
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.create_task(client.post(url, b"", {}, timeout_s=0.2))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):  # queued behind the first for the only connection
        await client.post(url, b"", {}, timeout_s=0.05)
    with pytest.raises(TimeoutError):
        await first
    assert loop.time() - started < 1
    await asyncio.sleep(0.01)
    assert (client.in_use, client.open_connections) == (0, 0)  # the timed-out connection was dropped
    await client.close()


async def test_a_closed_connection_is_freed_without_the_garbage_collector(serve) -> None:
    import gc

    from gateway.http_connection import Connection

    def connections() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Connection)

    server = await serve(OK.replace(b"Content-Length: 11\r\n", b"Content-Length: 11\r\nConnection: close\r\n"))
    client = HTTPClient()
    gc.collect()
    before = connections()
    gc.disable()
    try:
        for _ in range(3):
            assert (await client.post(f"http://127.0.0.1:{server.port}/x", b"", {}))[0] == 200
        await asyncio.sleep(0.05)
        assert client.open_connections == 0
        assert connections() == before, "closed connections wait for the garbage collector (a reference cycle)"
    finally:
        gc.enable()
    await client.close()


async def test_a_full_pool_makes_room_by_closing_a_connection_idling_to_another_upstream(serve) -> None:
    first, second = await serve(OK), await serve(OK)
    client = HTTPClient(limit=1)
    assert (await client.post(f"http://127.0.0.1:{first.port}/x", b"", {}))[0] == 200
    assert client.open_connections == 1  # idle, to the first upstream
    async with asyncio.timeout(2):  # not the 30 s until the idle one would expire
        assert (await client.post(f"http://127.0.0.1:{second.port}/x", b"", {}, timeout_s=1))[0] == 200
    assert client.open_connections == 1
    await client.close()


@pytest.mark.parametrize("url", ["ftp://example.com/v1", "http:///v1", "example.com/v1"])
def test_check_url_refuses_what_it_cannot_call(url: str) -> None:
    from gateway.http_client import check_url

    with pytest.raises(ValueError):
        check_url(url)
    assert check_url("https://api.openai.com/v1/images/generations")


async def test_a_content_length_body_in_pieces_then_the_connection_is_reused(serve) -> None:
    """The body arrives in several socket reads after the headers (it is kept past the parser);
    the next answer on the same connection must parse from a clean state."""
    payload = b'{"data":[{"b64_json":"' + b"Q" * 300_000 + b'"}]}'

    async def in_pieces(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload[:10])
        for i in range(10, len(payload), 100_000):
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(payload[i:i + 100_000])

    server = await serve(in_pieces, OK)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/x"
    assert (await client.post(url, b"", {}, timeout_s=5))[::2] == (200, payload)
    assert (await client.post(url, b"", {}, timeout_s=5))[::2] == (200, b'{"ok":true}')
    assert server.connections == 1
    await client.close()


async def test_bytes_beyond_the_declared_length_are_dropped_with_the_connection(serve) -> None:
    async def too_long(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"cdeXYZ")

    server = await serve(too_long, OK)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/x"
    assert (await client.post(url, b"", {}, timeout_s=5))[::2] == (200, b"abcde")
    assert (await client.post(url, b"", {}, timeout_s=5))[0] == 200
    assert server.connections == 2
    await client.close()


# -- compressed answers: inflated a slice per loop turn, bounded by max_body_bytes ----------------

def _compress(payload: bytes, encoding: str) -> bytes:
    from tests.fake_upstream import WBITS

    c = zlib.compressobj(6, zlib.DEFLATED, WBITS[encoding])
    return c.compress(payload) + c.flush()


#: Several inflate slices (gateway/inflate.py SLICE_BYTES is 256 KiB), base64-like and varied.
BIG_PAYLOAD = b'{"data":[{"b64_json":"' + base64.b64encode(random.Random(7).randbytes(900_000)) + b'"}]}'


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-eof", "content-length, close"])
async def test_compressed_answers_inflate_in_slices_whatever_the_framing(serve, encoding: str, framing: str) -> None:
    packed = _compress(BIG_PAYLOAD, encoding)
    sent_as = b"deflate" if encoding == "deflate-raw" else encoding.encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: " + sent_as + b"\r\n"

    async def answer(writer: asyncio.StreamWriter) -> None:
        if framing == "chunked":
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
                b"%x\r\n%s\r\n" % (len(packed[i:i + 8192]), packed[i:i + 8192])
                for i in range(0, len(packed), 8192)) + b"0\r\n\r\n")
        elif framing == "until-eof":
            writer.write(head + b"Connection: close\r\n\r\n" + packed)
            writer.close()
        else:  # the whole body at once, then (", close") the connection closes while it inflates
            close = framing.endswith("close")
            writer.write(head + (b"Connection: close\r\n" if close else b"") +
                         b"Content-Length: %d\r\n\r\n" % len(packed) + packed)
            if close:
                writer.close()

    server = await serve(answer, OK)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/x"
    status, headers, body = await client.post(url, b"{}", {}, timeout_s=10)
    assert (status, len(body), body == BIG_PAYLOAD) == (200, len(BIG_PAYLOAD), True)
    assert "Content-Encoding" not in headers
    assert (await client.post(url, b"{}", {}, timeout_s=10))[::2] == (200, b'{"ok":true}')
    await client.close()


@pytest.mark.parametrize("cut", ["truncated", "corrupt"])
async def test_a_broken_compressed_body_is_a_protocol_error(serve, cut: str) -> None:
    packed = gzip.compress(BIG_PAYLOAD)
    packed = packed[: len(packed) // 2] if cut == "truncated" else packed[:20] + b"\xff" * 64 + packed[84:]
    server = await serve(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
                         + packed)
    client = HTTPClient()
    with pytest.raises(UpstreamProtocolError):
        await client.post(f"http://127.0.0.1:{server.port}/x", b"", {}, timeout_s=10)
    await asyncio.sleep(0.01)
    assert (client.in_use, client.open_connections) == (0, 0)
    await client.close()


async def test_an_empty_compressed_body_is_empty(serve) -> None:
    server = await serve(b"HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n")
    client = HTTPClient()
    assert (await client.post(f"http://127.0.0.1:{server.port}/x", b"", {}))[::2] == (204, b"")
    await client.close()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_compression_bomb_is_refused_as_it_inflates(serve, loop_stall_guard: object, declared: bool) -> None:
    """32 MiB from 32 KB against a 4 MiB limit: refused after inflating little more than the
    limit, never in one call, and the connection is dropped with what it held. The chunked body
    never ends (no last chunk): it is refused as it inflates, not once it is in."""
    from tests.fake_upstream import compression_bomb

    bomb = compression_bomb(32 << 20)
    framing = (b"Content-Length: %d\r\n\r\n" % len(bomb) + bomb if declared else
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(bomb), bomb))  # no 0\r\n\r\n
    server = await serve(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n" + framing)
    client = HTTPClient(max_body_bytes=4 << 20)
    with pytest.raises(ResponseTooLarge):
        await client.post(f"http://127.0.0.1:{server.port}/x", b"", {}, timeout_s=10)
    await asyncio.sleep(0.01)
    assert (client.in_use, client.open_connections) == (0, 0)
    await client.close()


async def test_a_compressed_answer_that_times_out_stops_inflating(serve) -> None:
    """A timeout while slices are still due cancels them: nothing runs for an abandoned answer."""
    from tests.fake_upstream import compression_bomb

    bomb = compression_bomb(256 << 20)
    server = await serve(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb)
    client = HTTPClient(max_body_bytes=512 << 20)
    with pytest.raises(TimeoutError):
        await client.post(f"http://127.0.0.1:{server.port}/x", b"", {}, timeout_s=0.05)
    cpu_s = time.process_time()
    await asyncio.sleep(0.3)  # inflating what is left would take about a second of CPU
    assert time.process_time() - cpu_s < 0.1
    assert (client.in_use, client.open_connections) == (0, 0)
    await client.close()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_upstream_sockets_have_nagle_off(loop_name: str) -> None:
    """The client leaves TCP_NODELAY to the event loop: asyncio's and uvloop's TCP transports set
    it on every connection they make (a request is one write; Nagle would hold back its tail)."""
    import socket

    import uvloop

    async def scenario() -> int:
        server = await Scripted(OK).start()
        client = HTTPClient()
        await client.post(f"http://127.0.0.1:{server.port}/x", b"{}", {})
        (conn,) = [c for idle in client._idle.values() for c in idle]
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        nodelay = int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        await client.close()
        await server.stop()
        return nodelay

    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(scenario()) == 1


async def test_calls_time_out_on_their_own_deadlines(serve) -> None:
    """Timeouts share a timer per slot of 25 ms: each call still fails at its own deadline (not
    before it, at most a slot after), and a call that got its answer is not failed later."""
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    silent = await serve(never)
    answering = await serve(OK)
    client = HTTPClient()
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: dict[float, float] = {}

    async def call(timeout_s: float) -> None:
        with pytest.raises(TimeoutError):
            await client.post(f"http://127.0.0.1:{silent.port}/x", b"", {}, timeout_s=timeout_s)
        ended[timeout_s] = loop.time() - started

    answered = await client.post(f"http://127.0.0.1:{answering.port}/x", b"", {}, timeout_s=0.2)
    await asyncio.gather(*(call(t) for t in (0.1, 0.2, 0.3, 0.31)))
    assert answered[0] == 200
    for timeout_s, took_s in ended.items():
        assert timeout_s <= took_s < timeout_s + 0.15, ended
    await asyncio.sleep(0.05)
    assert (client.in_use, client.open_connections) == (0, 1)  # the answered one stays pooled
    await client.close()


async def test_answers_of_every_framing_after_an_interim_one_keep_their_own_lists(serve) -> None:
    """Between answers a connection's header and body lists are one shared empty list
    (http_connection._NO_LIST), and each answer gets its own when it begins, an answer that follows a
    ``100 Continue`` included: the shared list stays empty whatever the framing."""
    from gateway import http_connection

    body = b'{"ok":true}'
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"ok\r\n7\r\n\":true}\r\n0\r\n\r\n"
    gzipped = gzip.compress(body)
    compressed = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(gzipped), gzipped)
    server = await serve(interim + OK, chunked, compressed, interim + chunked, OK)
    client = HTTPClient()
    url = f"http://127.0.0.1:{server.port}/x"
    for _ in range(5):
        status, headers, answer = await client.post(url, b"{}", {}, timeout_s=5)
        assert (status, answer) == (200, body)
        assert "Content-Encoding" not in headers
    assert server.connections == 1 and http_connection._NO_LIST == []
    await client.close()


class _Parts:
    """A request body sent in pieces (the Payload protocol gateway/form.py implements)."""

    def __init__(self, size: int, piece: int = 65_536) -> None:
        self.size, self.piece = size, piece

    @property
    def content_length(self) -> int:
        return self.size

    def parts(self):  # type: ignore[no-untyped-def]
        for at in range(0, self.size, self.piece):
            yield b"x" * min(self.piece, self.size - at)


async def test_an_answer_before_the_whole_upload_frees_the_connection_once_it_is_sent(serve) -> None:
    """An upstream may answer (a 401, a 413) as soon as it has read the head of an upload, and
    read the rest of it afterwards: the caller gets that answer at once, and the connection is
    given back once the upload has gone out, not held for ever."""
    uploaded = asyncio.Event()
    refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}"

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            writer.write(refused if length > 2 else OK)
            await writer.drain()
            await reader.readexactly(length)
            if length > 2:
                uploaded.set()
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HTTPClient(limit=1)
    url = f"http://127.0.0.1:{port}/v1/images/edits"
    try:
        status, _, body = await client.request("POST", url, _Parts(8 << 20), {}, timeout_s=10)
        assert (status, body) == (401, b"{}")
        await asyncio.wait_for(uploaded.wait(), 10)
        for _ in range(100):  # the client's task writes the upload's last pieces, then gives the connection back
            if client.in_use == 0:
                break
            await asyncio.sleep(0.01)
        assert client.in_use == 0
        # The pool (one connection at most) serves the next call.
        assert (await client.post(url, b"{}", {}, timeout_s=5))[0] == 200
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
