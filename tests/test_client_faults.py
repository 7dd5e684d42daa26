"""Misbehaving clients against a real server (``gateway.server.serve`` on a free loopback port),
over raw sockets: disconnects mid-request, slow headers and bodies, oversized headers, and many
connections at once. None may produce a 500, hang the server or leave work running."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec
import pytest

from tests import fake_upstream as fu
from tests.conftest import CLIENT_LIMITS, GATEWAY_KEY, base_config_yaml, eventually, in_flight

BODY = b'{"model": "openai/gpt-image-1", "prompt": "A small red cube"}'


wait_for = eventually
pytestmark = pytest.mark.usefixtures("loop_stall_guard")


@pytest.fixture
def fake(upstream: fu.FakeUpstream) -> fu.FakeUpstream:
    return upstream


@pytest.fixture
def port(served_port: int) -> int:
    return served_port


def request_bytes(body: bytes = BODY, headers: str = "") -> bytes:
    return (f"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {GATEWAY_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n").encode() + body


async def exchange(port: int, data: bytes, read_timeout_s: float = 30) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65_536), read_timeout_s)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_client_disconnect_cancels_the_upstream_call(port: int, fake: fu.FakeUpstream) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    fake.script("gpt-image-1", fu.block(started, release))
    before = in_flight()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes())
    await writer.drain()
    await asyncio.wait_for(started.wait(), 30)
    assert in_flight() == before + 1
    writer.close()
    # The gateway cancels its handler, which closes the upstream connection: the fake sees it.
    assert await wait_for(lambda: fake.cancelled == 1), "the upstream call was not cancelled"
    assert await wait_for(lambda: in_flight() == before), "in-flight gauge did not come back"
    release.set()
    # The server still serves.
    assert status_of(await exchange(port, request_bytes())) == 200


async def test_slow_headers_are_cut_off(port: int) -> None:
    """Headers that never finish: the server closes the connection (keep-alive/read timeouts),
    it never answers 500. Bounded by the test: 120 s would mean no timeout applies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(65_536), 120)
    except asyncio.TimeoutError:
        pytest.fail("a client that never finishes its headers holds the connection for 120 s")
    finally:
        writer.close()
    assert answer == b"" or status_of(answer) in (400, 408)


async def test_slow_body_is_answered_without_a_500(port: int) -> None:
    """A body that stops half-way: 408 after server.body_read_timeout_s."""
    data = request_bytes()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data[: len(data) - 10])
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(65_536), 120)
    except asyncio.TimeoutError:
        pytest.fail("a client that never finishes its body holds the connection for 120 s")
    finally:
        writer.close()
    assert status_of(answer) == 408  # server.body_read_timeout_s, in OpenAI's shape
    assert b'"code":"request_timeout"' in answer


@pytest.mark.parametrize("headers", [
    f"X-Big: {'a' * 9000}\r\n",
    f"{'X' * 9000}: 1\r\n",
    "".join(f"x-h{i}: 1\r\n" for i in range(200)),
], ids=["long value", "long name", "too many"])
async def test_oversized_headers_are_refused_not_crashed(port: int, headers: str) -> None:
    answer = await exchange(port, request_bytes(headers=headers))
    assert status_of(answer) in (400, 431)


# 500 requests arriving together queue ~100 ms of ready work in a few loop turns: load, not a
# stall, so this test gets a bound of its own (a blocking call would still exceed it).
@pytest.mark.parametrize("loop_stall_bound_s", [0.5])
async def test_many_concurrent_connections(port: int) -> None:
    """500 clients at once, each a full request: all answered 200, nothing left in flight."""
    before = in_flight()
    answers = await asyncio.gather(*(exchange(port, request_bytes(headers="Connection: close\r\n"), 120)
                                     for _ in range(500)))
    statuses = [status_of(a) for a in answers]
    assert statuses.count(200) == 500, sorted(set(statuses))
    assert await wait_for(lambda: in_flight() == before)


async def test_client_leaving_mid_response_is_not_an_error(port: int, fake: fu.FakeUpstream,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A client that hangs up while a large answer is being written is counted as gone (499),
    not logged as a server error."""
    fake.script("gpt-image-1", fu.ok(b64="A" * 16_000_000))
    before = in_flight()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes())
    await writer.drain()
    assert (await reader.readexactly(12)).startswith(b"HTTP/1.1 200")
    writer.transport.abort()  # a reset while most of the 16 MB is still unsent
    assert await eventually(lambda: in_flight() == before)
    await asyncio.sleep(0.2)  # let the server notice the reset on its next write
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], [r.getMessage() for r in errors]


# -- half-closed clients: a FIN after a complete request still gets the answer ---------------------

async def half_closed_exchange(port: int, data: bytes, bound_s: float = 30) -> tuple[bytes, float]:
    """Send ``data``, shut down the write side (shutdown(SHUT_WR)), read until the server closes:
    everything it sent, and how long it took."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = loop.time()
        writer.write(data)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), bound_s)
        return answer, loop.time() - started
    finally:
        writer.close()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize("what", ["healthz", "image", "slow image", "pipelined", "http/1.0"])
async def test_a_half_closed_client_gets_its_answer(port: int, fake: fu.FakeUpstream, what: str) -> None:
    """aiohttp closed the connection at the client's FIN (aio-libs/aiohttp#3659), so such a
    client got nothing at all; now every complete request is answered, then the connection closes."""
    if what == "slow image":  # the FIN arrives while the upstream call is in flight
        fake.script("gpt-image-1", fu.hang(0.5))
    data = {"healthz": HEALTHZ, "image": request_bytes(), "slow image": request_bytes(),
            "pipelined": HEALTHZ + request_bytes(), "http/1.0": HEALTHZ.replace(b"HTTP/1.1", b"HTTP/1.0")}[what]
    before = in_flight()
    answer, _ = await half_closed_exchange(port, data)
    finals = [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer) if code != b"100"]
    assert finals == [200] * (2 if what == "pipelined" else 1), answer[:300]
    if what == "http/1.0":
        assert b" 100 " not in answer  # no interim answers to an HTTP/1.0 client (RFC 9110, 15.2)
    assert await wait_for(lambda: in_flight() == before)


async def test_a_client_that_closed_its_socket_is_cancelled_within_seconds(port: int, fake: fu.FakeUpstream) -> None:
    """A FIN may also mean the client left: the interim answer it resets gives it away, and its
    upstream call is cancelled (as before half-closed clients were answered)."""
    from gateway.half_close import PEER_CHECK_S

    started, release = asyncio.Event(), asyncio.Event()
    fake.script("gpt-image-1", fu.block(started, release))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes())
    await writer.drain()
    await asyncio.wait_for(started.wait(), 30)
    loop = asyncio.get_running_loop()
    left = loop.time()
    writer.close()
    assert await wait_for(lambda: fake.cancelled == 1), "the upstream call was not cancelled"
    assert loop.time() - left < 3 * PEER_CHECK_S + 1
    release.set()


@pytest.mark.parametrize("state", ["idle", "mid-body"])
async def test_a_fin_with_nothing_to_answer_closes_at_once(port: int, state: str) -> None:
    data = request_bytes()
    data = HEALTHZ if state == "idle" else data[: len(data) - 10]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if state == "idle":  # answered, then the connection idles until the client's FIN
            assert status_of(await asyncio.wait_for(reader.readuntil(b"}"), 30)) == 200
        writer.write_eof()
        rest = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    assert rest == b""  # closed, not answered with a 408 once body_read_timeout_s passed


async def test_half_closed_clients_of_the_real_process(tmp_path: Any, fake: fu.FakeUpstream) -> None:
    """The same through ``python -m gateway serve`` (uvloop, as in production): answered when
    half-closed, cancelled when gone."""
    from tests.gateway_process import GatewayProcess

    path = tmp_path / "gateway.yaml"
    path.write_text(base_config_yaml(fake.url, CLIENT_LIMITS))  # type: ignore[attr-defined]
    gateway = await GatewayProcess.start(path)
    try:
        port = int((await gateway.url()).rsplit(":", 1)[1])
        for data in (HEALTHZ, request_bytes()):
            answer, _ = await half_closed_exchange(port, data)
            assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)[-1] == b"200", answer[:200]
        started, release = asyncio.Event(), asyncio.Event()
        fake.script("gpt-image-1", fu.block(started, release))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes())
        await writer.drain()
        await asyncio.wait_for(started.wait(), 30)
        writer.close()
        assert await wait_for(lambda: fake.cancelled == 1), "the upstream call was not cancelled"
        release.set()
    finally:
        await gateway.close()


@pytest.mark.parametrize("key", [None, GATEWAY_KEY], ids=["no key", "valid key"])
async def test_a_compressed_body_is_refused_before_any_inflating(port: int, key: str | None) -> None:
    """About 1 MB of gzip that inflates to 1 GiB: aiohttp's parser would inflate it as it arrives
    (about 2 s of event-loop CPU, whatever the answer), so the server runs with
    ``auto_decompress=False`` and the body link refuses compressed bodies: 401 without a key, 415
    with one, the body never inflated (the loop-stall guard of this module watches the loop)."""
    bomb = fu.compression_bomb(1 << 30)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n").encode()
    cpu_before = time.process_time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + bomb)
        answer = await asyncio.wait_for(reader.readuntil(b"}}"), 30)
    finally:
        writer.close()
    cpu_s = time.process_time() - cpu_before
    body = msgspec.json.decode(answer[answer.index(b"\r\n\r\n") + 4:])
    if key is None:
        assert status_of(answer) == 401
    else:
        assert status_of(answer) == 415 and body["error"]["code"] == "unsupported_content_encoding"
        assert b"accept-encoding: identity" in answer.lower()
    assert cpu_s < 0.5, f"{cpu_s:.2f} s of CPU for one compressed request"  # inflating it: ~2 s
    assert status_of(await exchange(port, request_bytes())) == 200  # and the server serves on


async def test_a_deeply_nested_body_is_a_400(port: int) -> None:
    """2 KB nested 1,000 levels deep in ``extra``: msgspec gives up with RecursionError, which
    the validator answers as invalid JSON, never a 500 with a traceback."""
    nested = b'{"model": "openai/gpt-image-1", "prompt": "a cube", "extra": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    answer = await exchange(port, request_bytes(nested))
    body = msgspec.json.decode(answer[answer.index(b"\r\n\r\n") + 4:])
    assert status_of(answer) == 400 and body["error"]["code"] == "invalid_json"
    assert "nested too deeply" in body["error"]["message"]
