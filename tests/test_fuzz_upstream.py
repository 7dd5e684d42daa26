"""Property tests of the path an upstream's answer takes: whatever bytes an upstream sends
(nested arbitrarily deep, mis-encoded, truncated, compressed, a compression bomb, in any HTTP
framing), the gateway's HTTP client and its answer readers (``parse_upstream`` for a 2xx,
``error_from_openai`` and ``azure_error`` for the rest) give a parsed answer or a ProviderError,
and never hold the event loop.

Each example is sent by a raw-socket server on loopback and read by the real client
(``UpstreamHTTP.post_json`` over ``gateway.http_client.HTTPClient``, as plugins call it) in an event loop of its
own, with the loop-stall monitor of tests/conftest.py around the exchange.
"""

from __future__ import annotations

import asyncio
import base64
import zlib

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api import UpstreamImagesResponse
from gateway.http_client import HTTPClient
from gateway.provider import ProviderError, error_from_openai
from gateway.upstream import SKELETON_ABOVE_BYTES, parse_upstream
from gateway.upstream_http import UpstreamHTTP
from plugins.azure_openai import azure_error
from tests.conftest import LOOP_STALL_BOUND_S, LoopStallMonitor
from tests.fake_upstream import WBITS, compression_bomb

#: The client's answer limit here: small, so that bombs and padding reach it quickly.
LIMIT_BYTES = 1 << 20
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=20) | st.just("iVBORw0KGgo="))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(["data", "b64_json", "usage", "error", "message",
                                                              "code", "extra", "x"]) | st.text(max_size=8),
                                             inner, max_size=4), max_leaves=16)
B64 = base64.b64encode(bytes(range(256)) * 300).decode()  # 100 KB: past the skeleton threshold


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """A value nested past any recursion limit (or just under it), where a reader meets it."""
    depth = draw(st.sampled_from([10, 900, 1_000, 5_000, 60_000]))
    opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    value = opening * depth + b"1" + closing * depth
    return draw(st.sampled_from([
        b'{"data":[' + value + b"]}",
        b'{"data":[{"b64_json":"' + B64.encode() + b'"}],"usage":' + value + b"}",
        b'{"created":1,"data":[],"x":' + value + b"}",
        b'{"error":{"message":"m","inner_error":' + value + b"}}",
        b'{"statusCode":429,"message":"m","x":' + value + b"}",
        value,
    ]))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["images", "large images", "error", "json", "nested", "bytes"]))
    if kind in ("images", "large images"):
        b64 = B64 if kind == "large images" else "iVBORw0KGgo="
        body = msgspec.json.encode({"created": 1, "data": [{"b64_json": b64}] * draw(st.integers(0, 2)),
                                    "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
                                    **draw(st.dictionaries(st.sampled_from(["extra", "x", "usage"]), json_values,
                                                           max_size=2))})
    elif kind == "error":
        body = msgspec.json.encode({"error": draw(json_values | st.fixed_dictionaries(
            {"message": st.text(max_size=30), "code": json_values, "inner_error": json_values}))})
    elif kind == "json":
        body = msgspec.json.encode(draw(json_values))
    elif kind == "nested":
        body = draw(nested())
    else:
        body = draw(st.binary(max_size=200))
    # What a broken upstream or network does to it: bytes no JSON or base64 allows, a cut.
    if body and draw(st.booleans()):
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\x00", b"\xff\xfe", b"\x1b[2J", b"\\", b'"', b"\xc3"])) + body[at:]
    if body and draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body


def _compress(body: bytes, encoding: str) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, WBITS[encoding])
    return c.compress(body) + c.flush()


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """One whole HTTP answer, as bytes on the wire."""
    status = draw(st.sampled_from([200, 200, 201, 400, 401, 404, 429, 500, 502, 503]))
    body = draw(bodies())
    encoding = draw(st.sampled_from(["identity", "gzip", "deflate", "deflate-raw", "bomb"]))
    headers = [b"HTTP/1.1 %d X" % status, b"Content-Type: application/json"]
    if encoding == "bomb":
        body = compression_bomb(draw(st.sampled_from([2, 8, 64])) << 20, draw(st.sampled_from(["gzip", "deflate"])))
        headers.append(b"Content-Encoding: gzip" if body[:2] == b"\x1f\x8b" else b"Content-Encoding: deflate")
    elif encoding != "identity":
        body = _compress(body, encoding)
        if body and draw(st.booleans()):  # a cut, or a flipped byte, inside the compressed stream
            at = draw(st.integers(0, len(body) - 1))
            body = body[:at] if draw(st.booleans()) else body[:at] + bytes([body[at] ^ 0x5A]) + body[at + 1:]
        headers.append(b"Content-Encoding: " + (b"deflate" if encoding == "deflate-raw" else encoding.encode()))
    framing = draw(st.sampled_from(["content-length", "chunked", "until-eof"]))
    if framing == "content-length":
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        step = draw(st.sampled_from([1, 7, 4096, 1 << 20]))
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                           for i in range(0, len(body), step)) + b"0\r\n\r\n"
        headers.append(b"Transfer-Encoding: chunked")
    else:
        headers.append(b"Connection: close")
        payload = body
    return b"\r\n".join(headers) + b"\r\n\r\n" + payload


async def _exchange(wire: bytes) -> object:
    """Serve ``wire`` once on loopback and read it as a provider does: a parsed answer, or a
    ProviderError (raised by the transport, or made from an error answer)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(wire)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = HTTPClient(max_body_bytes=LIMIT_BYTES)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/images/generations"
    try:
        status, headers, body = await UpstreamHTTP(client).post_json(url, b"{}", {}, upstream="fuzz", timeout_s=10)
        if 200 <= status < 300:
            parsed = parse_upstream(body)
            msgspec.json.decode(body)  # what the client would be sent (plus ``extra``) is JSON
            return parsed
        for read_error in (error_from_openai, azure_error):
            error = read_error(status, body, headers)
            assert isinstance(error, ProviderError) and isinstance(error.message, str) and error.status == status
        return error
    except ProviderError as exc:
        return exc
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def _exchange_watched(wire: bytes) -> tuple[object, LoopStallMonitor]:
    monitor = LoopStallMonitor()
    monitor.start()
    monitor.arm(True)
    try:
        return await _exchange(wire), monitor
    finally:
        await monitor.stop()


@FUZZ
@given(wire=answers())
def test_any_upstream_answer_is_parsed_or_a_provider_error(wire: bytes) -> None:
    result, monitor = asyncio.run(_exchange_watched(wire))
    assert isinstance(result, (UpstreamImagesResponse, ProviderError)), type(result)
    if isinstance(result, ProviderError):
        assert result.message and (result.status is None or 100 <= result.status < 600)
    if monitor.longest_s > LOOP_STALL_BOUND_S:
        # A stall the input causes happens again; one a busy machine caused (a page fault, a
        # neighbour's burst the run-queue accounting missed) does not: ask twice before failing.
        _, monitor = asyncio.run(_exchange_watched(wire))
    assert monitor.longest_s <= LOOP_STALL_BOUND_S, f"the loop stalled {monitor.longest_s * 1000:.0f} ms"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(body=bodies(), pad=st.booleans())
def test_the_readers_alone_take_any_body(body: bytes, pad: bool) -> None:
    """The same readers without the network, and more examples of them: a body past the skeleton
    threshold (padding after the JSON is still JSON) goes through the skeleton path."""
    if pad:
        body += b" " * SKELETON_ABOVE_BYTES
    try:
        parsed = parse_upstream(body)
        assert isinstance(parsed, UpstreamImagesResponse)
        msgspec.json.decode(body)  # relayed to the client: it must be JSON
    except ProviderError as exc:
        assert (exc.status, exc.code, exc.retryable) == (502, "invalid_upstream_response", True)
    for read_error in (error_from_openai, azure_error):
        assert isinstance(read_error(503, body, {}), ProviderError)
