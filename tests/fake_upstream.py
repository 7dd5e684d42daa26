"""A fake OpenAI images upstream: a real aiohttp server on loopback, scripted per model.

Tests queue behaviours per upstream model name (``gpt-image-1``); each request takes the next
queued behaviour, and an empty queue answers a valid images response. Every request received
is recorded (path, headers, JSON body) so tests can assert what the gateway sent.
"""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import msgspec
from aiohttp import web

# A real 1x1 PNG, so clients that decode the payload get an image.
PNG_1X1 = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2a5f6"
    "b60000000049454e44ae426082")).decode()

Behaviour = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def images_body(body: dict[str, Any], b64: str = PNG_1X1) -> dict[str, Any]:
    n = body.get("n", 1)
    return {
        "created": int(time.time()),
        "data": [{"b64_json": b64} for _ in range(n)],
        "background": body.get("background", "opaque"),
        "output_format": body.get("output_format", "png"),
        "quality": body.get("quality", "medium"),
        "size": body.get("size", "1024x1024"),
        "usage": {"input_tokens": 20, "input_tokens_details": {"text_tokens": 20, "image_tokens": 0},
                  "output_tokens": 1056 * n, "output_tokens_details": {"image_tokens": 1056 * n, "text_tokens": 0},
                  "total_tokens": 20 + 1056 * n},
    }


def ok(b64: str = PNG_1X1, headers: dict[str, str] | None = None) -> Behaviour:
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(body=msgspec.json.encode(images_body(body, b64)), content_type="application/json",
                            headers={"x-request-id": "req_upstream_1", **(headers or {})})
    return reply


def error(status: int, code: str | None = None, message: str = "Upstream error", type: str | None = None,
          param: str | None = None, headers: dict[str, str] | None = None) -> Behaviour:
    err_type = type or ("server_error" if status >= 500 else "invalid_request_error")
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        payload = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
        return web.json_response(payload, status=status, headers=headers)
    return reply


def raw(status: int, data: bytes, content_type: str = "application/json") -> Behaviour:
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=status, body=data, content_type=content_type)
    return reply


def compressed(status: int, data: bytes, encoding: str = "gzip") -> Behaviour:
    """Answer ``data`` as it is, declared as ``Content-Encoding: encoding`` (aiohttp sends a
    body whose encoding is already set without compressing it again)."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=status, body=data, content_type="application/json",
                            headers={"Content-Encoding": encoding})
    return reply


#: zlib's wbits for each Content-Encoding a bomb can use ("deflate-raw" is deflate without the
#: RFC 1950 wrapper, which some servers send as "deflate").
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "deflate-raw": -zlib.MAX_WBITS}


def compression_bomb(inflated_bytes: int, encoding: str = "gzip", piece_bytes: int = 1 << 20) -> bytes:
    """A compressed stream of zeros that inflates to ``inflated_bytes``, about 1000 times its
    size, built without compressing it all: after a full flush the compressor starts afresh, so
    every further piece compresses to the same bytes. No trailer: a gateway must refuse it long
    before its end."""
    c = zlib.compressobj(9, zlib.DEFLATED, WBITS[encoding])
    zeros = bytes(piece_bytes)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (inflated_bytes // piece_bytes - 1)


def hang(seconds: float = 3600) -> Behaviour:
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await ok()(request, body)
    return reply


def reset() -> Behaviour:
    """Close the connection without answering."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    return reply


async def _start_stream(request: web.Request, status: int = 200, length: int | None = None) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    return response


def reset_mid_body() -> Behaviour:
    """Send the headers and half of a valid body, then close the connection."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        data = msgspec.json.encode(images_body(body))
        response = await _start_stream(request, length=len(data))
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    return reply


def slow_body(chunk_delay_s: float = 0.3, chunks: int = 100) -> Behaviour:
    """Headers at once, then a valid body trickled out one byte-chunk at a time."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        data = msgspec.json.encode(images_body(body))
        response = await _start_stream(request, length=len(data))
        step = max(1, len(data) // chunks)
        for i in range(0, len(data), step):
            await response.write(data[i:i + step])
            await asyncio.sleep(chunk_delay_s)
        await response.write_eof()
        return response
    return reply


def oversized(size_bytes: int, declare_length: bool = True) -> Behaviour:
    """A 200 whose JSON body is ``size_bytes`` long; without a Content-Length (chunked) when asked."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        head = b'{"created":1,"data":[{"b64_json":"'
        tail = b'"}]}'
        data = head + b"A" * max(0, size_bytes - len(head) - len(tail)) + tail
        response = await _start_stream(request, length=len(data) if declare_length else None)
        for i in range(0, len(data), 65_536):
            await response.write(data[i:i + 65_536])
        await response.write_eof()
        return response
    return reply


def stream_events(body: dict[str, Any], b64: str = PNG_1X1) -> list[tuple[str, dict[str, Any]]]:
    """The events OpenAI streams for a request: its partial images, then the completed image."""
    common = {"created_at": int(time.time()), "size": body.get("size", "1024x1024"),
              "quality": body.get("quality", "medium"), "background": body.get("background", "opaque"),
              "output_format": body.get("output_format", "png")}
    kind = body.get("_kind", "image_generation")
    events = [(f"{kind}.partial_image", {"type": f"{kind}.partial_image", "b64_json": b64, "partial_image_index": i,
                                         **common}) for i in range(body.get("partial_images") or 0)]
    usage = images_body(body)["usage"]
    events.append((f"{kind}.completed", {"type": f"{kind}.completed", "b64_json": b64, **common, "usage": usage}))
    return events


def streamed(b64: str = PNG_1X1, *, fail_after: int | None = None, error_event: dict[str, Any] | None = None,
             hang_after: int | None = None, pause_s: float = 0.0) -> Behaviour:
    """Server-Sent Events as OpenAI streams them (``stream: true``). After ``fail_after`` events the
    connection is reset, or ``error_event`` is sent instead; after ``hang_after`` events it hangs.
    Each event after the first waits ``pause_s``."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": "req_stream_1"})
        await response.prepare(request)
        for i, (name, event) in enumerate(stream_events(body, b64)):
            if i == fail_after:
                if error_event is not None:
                    await response.write(b"event: error\ndata: " + msgspec.json.encode(error_event) + b"\n\n")
                    await response.write_eof()
                    return response
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError
            if i == hang_after:
                await asyncio.sleep(3600)
            if i and pause_s:
                await asyncio.sleep(pause_s)
            await response.write(f"event: {name}\ndata: ".encode() + msgspec.json.encode(event) + b"\n\n")
        await response.write_eof()
        return response
    return reply


def block(started: asyncio.Event, release: asyncio.Event) -> Behaviour:
    """Signal ``started`` once the request arrived, then answer only after ``release`` is set."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        started.set()
        await release.wait()
        return await ok()(request, body)
    return reply


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    #: An edit's files: (field name, file name, content type, bytes), in the order sent.
    files: list[tuple[str, str, str, bytes]] = field(default_factory=list)


@dataclass
class FakeUpstream:
    scripts: dict[str, list[Behaviour]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    in_progress: int = 0
    cancelled: int = 0

    def script(self, model: str, *behaviours: Behaviour) -> None:
        """Queue behaviours for requests naming ``model`` (the upstream's bare model name)."""
        self.scripts.setdefault(model, []).extend(behaviours)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self.handle)
        app.router.add_post("/openai/deployments/{deployment}/images/generations", self.handle)
        app.router.add_post("/openai/v1/images/generations", self.handle)
        app.router.add_post("/v1/images/edits", self.handle)
        app.router.add_post("/openai/deployments/{deployment}/images/edits", self.handle)
        app.router.add_post("/openai/v1/images/edits", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        files: list[tuple[str, str, str, bytes]] = []
        if request.content_type == "multipart/form-data":  # an edit: fields as OpenAI reads them
            body: dict[str, Any] = {}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, aiohttp.BodyPartReader)
                data = await part.read()
                if part.filename is not None:
                    files.append((part.name or "", part.filename, part.headers.get("Content-Type", ""), bytes(data)))
                else:
                    text = data.decode()
                    body[part.name or ""] = int(text) if text.isdigit() else {"true": True, "false": False}.get(text, text)
        else:
            body = await request.json()
        self.received.append(Received(request.path, dict(request.query), dict(request.headers), dict(body), files))
        key = request.match_info.get("deployment") or body.get("model", "")
        if request.path.endswith("/edits"):
            body["_kind"] = "image_edit"  # (the stream's event names; not part of what was received)
        queue = self.scripts.get(key)
        behaviour = queue.pop(0) if queue else streamed() if body.get("stream") else ok()
        self.in_progress += 1
        try:
            return await behaviour(request, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_progress -= 1
