"""What a client connection holds between requests and while one waits (gateway/half_close.py,
the protocol every gateway connection uses): not its last answer's body, and no timer.

aiohttp keeps a connection's last response until the next request on it has been answered, and
its idle timer from the moment the connection opens; both would otherwise stay with every
keep-alive connection and every request in flight.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc

from aiohttp import web

from gateway.half_close import HalfCloseAppRunner

BODY_BYTES = 60_000  # below gateway/response.py's streaming threshold: sent as one body
CONNECTIONS = 40


async def _serve(app: web.Application) -> tuple[HalfCloseAppRunner, int]:
    runner = HalfCloseAppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                                keepalive_timeout=75)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None and site._server.sockets
    return runner, site._server.sockets[0].getsockname()[1]


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


async def test_idle_keep_alive_connections_do_not_hold_their_last_answer() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=bytes(BODY_BYTES), content_type="application/json")

    app = web.Application()
    app.router.add_get("/x", answer)
    runner, port = await _serve(app)
    loop = asyncio.get_running_loop()
    socks = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(sock)
        for sock in socks:
            head = await loop.run_in_executor(None, _read_answer, sock)
            assert head.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.05)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        for sock in socks:
            sock.close()
        await runner.cleanup()
    # Each idle connection keeps aiohttp's objects (a few KB), not a 60 KB body.
    assert held < CONNECTIONS * BODY_BYTES / 4, f"{held / CONNECTIONS:,.0f} bytes per idle connection"


async def test_a_request_in_flight_holds_no_idle_timer() -> None:
    """aiohttp arms a connection's idle timer when it opens and again after each answer; while a
    request is handled it is not needed, and each costs a timer handle."""
    release = asyncio.Event()
    arrived = 0

    async def wait(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/wait", wait)
    runner, port = await _serve(app)
    loop = asyncio.get_running_loop()
    idle_timers = len(loop._scheduled)  # type: ignore[attr-defined]  # (asyncio's own loop)
    readers = []
    try:
        for _ in range(CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append((reader, writer))
        while arrived < CONNECTIONS:
            await asyncio.sleep(0.01)
        timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert len(timers) - idle_timers < CONNECTIONS / 4, timers[:5]
        release.set()
        for reader, _ in readers:
            assert (await reader.readuntil(b"\r\n\r\nok")).startswith(b"HTTP/1.1 200")
        # After the answers each connection is idle again, and its idle timer is back.
        await asyncio.sleep(0.05)
        timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert len(timers) - idle_timers >= CONNECTIONS
    finally:
        for _, writer in readers:
            writer.close()
        await runner.cleanup()
