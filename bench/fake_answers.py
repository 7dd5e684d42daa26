"""The fake upstream's pre-built answers (bench/fake_upstream.py): whole JSON answers in OpenAI's
images shape, and image streams as Server-Sent Events in OpenAI's streaming shape.

A stream is what the gateway's openai plugin asks for with ``stream: true`` and
``partial_images``: ``event: image_generation.partial_image`` events (``partial_image_index``
0..k-1), then one ``event: image_generation.completed`` with ``usage``, each ``data:`` a JSON object
whose ``type`` repeats the event name (the same shapes as tests/fake_upstream.py ``streamed``, which
the gateway's stream tests use). It goes out with ``Transfer-Encoding: chunked``, one chunk per
event, so that the connection stays open for the next request; ``Stream.head_and_first`` is what
is written at once, ``Stream.rest`` the later chunks (one per event gap), the last one carrying
the terminating zero-length chunk.
"""

from __future__ import annotations

import base64
import os
import time

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_USAGE = ('{"input_tokens":20,"input_tokens_details":{"text_tokens":20,"image_tokens":0},'
          '"output_tokens":1056,"output_tokens_details":{"image_tokens":1056,"text_tokens":0},'
          '"total_tokens":1076}')
_COMMON = '"size":"1024x1024","quality":"medium","background":"opaque","output_format":"png"'


def image_b64(image_bytes: int) -> str:
    """A valid base64 string of ``image_bytes`` characters (rounded up to a multiple of 4) whose
    decoded bytes start with the PNG signature."""
    b64_len = max(4, (image_bytes + 3) // 4 * 4)
    raw_len = b64_len // 4 * 3
    raw = (_PNG_SIG + os.urandom(max(0, raw_len - len(_PNG_SIG))))[:raw_len]
    b64 = base64.b64encode(raw).decode("ascii")
    assert len(b64) == b64_len
    return b64


def build_body(image_bytes: int, n: int, created: int | None = None) -> bytes:
    """The JSON body of one successful answer, with ``n`` images of ``image_bytes`` base64 chars."""
    item = '{"b64_json":"' + image_b64(image_bytes) + '"}'
    created = int(time.time()) if created is None else created
    body = (
        '{"created":' + str(created) + ',"data":[' + ",".join([item] * n) + "],"
        '"background":"opaque","output_format":"png","quality":"medium","size":"1024x1024",'
        '"usage":' + _USAGE + "}"
    )
    return body.encode("ascii")


def build_response(status_line: bytes, body: bytes, close: bool = False) -> bytes:
    head = (
        b"HTTP/1.1 " + status_line + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"x-request-id: req_bench\r\n"
        b"openai-processing-ms: 1\r\n"
        b"\r\n"
    )
    return head + body


def stream_events(image_bytes: int, partials: int, created: int | None = None) -> list[bytes]:
    """The SSE blocks of one image stream: ``partials`` partial images, then the completed image,
    every image ``image_bytes`` base64 characters (each its own random bytes)."""
    created = int(time.time()) if created is None else created
    events = []
    for i in range(partials):
        events.append(
            b"event: image_generation.partial_image\ndata: "
            + ('{"type":"image_generation.partial_image","b64_json":"' + image_b64(image_bytes)
               + f'","partial_image_index":{i},"created_at":{created},' + _COMMON + "}").encode("ascii")
            + b"\n\n")
    events.append(
        b"event: image_generation.completed\ndata: "
        + ('{"type":"image_generation.completed","b64_json":"' + image_b64(image_bytes)
           + f'","created_at":{created},' + _COMMON + ',"usage":' + _USAGE + "}").encode("ascii")
        + b"\n\n")
    return events


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


class Stream:
    """One pre-built streamed answer: what to write at once, then one chunk per later event."""

    def __init__(self, events: list[bytes], close: bool = False) -> None:
        head = (b"HTTP/1.1 200 OK\r\n"
                b"Content-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"x-request-id: req_bench\r\n"
                b"\r\n")
        chunks = [_chunk(e) for e in events]
        chunks[-1] += b"0\r\n\r\n"
        self.head_and_first = head + chunks[0]
        self.rest = chunks[1:]
        self.whole = head + b"".join(chunks)


class Answers:
    """Every answer one fake upstream gives, built once at start-up."""

    def __init__(self, image_bytes: int, n: int, stream_partials: int | None = None) -> None:
        nf = b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}'
        bad = b'{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}'
        self.stream: Stream | None = None
        self.stream_close: Stream | None = None
        if stream_partials is not None:
            events = stream_events(image_bytes, stream_partials)
            self.stream, self.stream_close = Stream(events), Stream(events, close=True)
        body = build_body(image_bytes, n)
        self.ok = build_response(b"200 OK", body)
        self.ok_close = build_response(b"200 OK", body, close=True)
        self.not_found = build_response(b"404 Not Found", nf)
        self.not_found_close = build_response(b"404 Not Found", nf, close=True)
        self.bad_close = build_response(b"400 Bad Request", bad, close=True)
