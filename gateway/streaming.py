"""Image streams to the client: Server-Sent Events in OpenAI's shape.

``stream: true`` is a property of a request, not a separate path: the router picks a target as for
any request and hands back its first event (gateway/router.py); from then on the answer is a
``text/event-stream`` of ``event: <type>`` / ``data: <json>`` pairs, relayed as the upstream sent
them. The base64 of an event is never decoded: an event is checked through its skeleton (the
``b64_json`` string emptied, gateway/upstream.py) and written as it came. Each completed event
gets the gateway's ``extra`` (the routing attempts and the cost so far) spliced in before its
closing brace. A failure after the first event ends the stream with an error event: OpenAI's error
object, which the SDKs raise on, with ``extra`` inside it (``APIError.body["extra"]`` in Python).

A target that cannot stream serves the request with its whole answer: one completed event per
image (the usage on the last), and its attempt says that partial images were not available.
"""

from __future__ import annotations

import time
from typing import AsyncIterator, Awaitable, Iterable

import msgspec
from aiohttp import web

from gateway.api import Usage, UpstreamImagesResponse
from gateway.errors import GatewayError
from gateway.idempotency import Capture
from gateway.provider import ImageResult, ProviderError, StreamEvent
from gateway.upstream import skeleton

#: Events at least this large are written in pieces (head, data, tail) rather than joined.
_JOIN_BELOW_BYTES = 65_536
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventHead(msgspec.Struct):
    """What the gateway reads of an event."""

    type: str = ""
    usage: Usage | None = None


_head_decoder = msgspec.json.Decoder(EventHead)


def read_event(event: StreamEvent) -> EventHead:
    """An event's type and usage; an event that is not a JSON object is the upstream's fault."""
    try:
        head = _head_decoder.decode(skeleton(event.data))
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProviderError(f"The upstream sent an invalid stream event: {exc}", status=502,
                            code="invalid_upstream_response", retryable=True) from None
    if head.type and head.type != event.type:
        raise ProviderError(f"The upstream sent an event named '{event.type}' whose type is '{head.type}'.",
                            status=502, code="invalid_upstream_response", retryable=True)
    return head


def is_completed(event_type: str) -> bool:
    return event_type.endswith(".completed")


def completed_events(result: ImageResult, parsed: UpstreamImagesResponse, kind: str) -> list[StreamEvent]:
    """A non-streaming answer as completed events: one per image, the answer's usage on the last
    (so that summing the events' usage counts it once)."""
    # The small fields only; the images stay raw (checked by parse_upstream already).
    body = msgspec.json.decode(skeleton(result.body, check=False))
    created = parsed.created if parsed.created is not None else int(time.time())
    common = {key: body[key] for key in ("size", "quality", "background", "output_format") if key in body}
    events = []
    last = len(parsed.data) - 1
    for i, item in enumerate(parsed.data):
        fields: dict[str, object] = {"created_at": created, **common}
        if i == last and parsed.usage is not None:
            fields["usage"] = parsed.usage
        rest = msgspec.json.encode(fields)
        inner = bytes(item).strip()[1:-1].strip()  # the item's own members: "b64_json": "...", ...
        event_type = f"{kind}.completed"
        data = b'{"type":' + msgspec.json.encode(event_type) + (b"," + inner if inner else b"") + b"," + rest[1:]
        events.append(StreamEvent(event_type, data))
    return events


async def iterate(events: Iterable[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


def add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    """The usage of the completed events so far (each event's is its own image's)."""
    if more is None:
        return total
    if total is None:
        return more
    return msgspec.convert(_sum(msgspec.to_builtins(total), msgspec.to_builtins(more)), Usage)


def _sum(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        if isinstance(value, dict):
            out[key] = _sum(mine if isinstance(mine, dict) else {}, value)
        elif isinstance(value, int) and isinstance(mine, int):
            out[key] = mine + value
        else:
            out[key] = value
    return out


class Out:
    """A stream's way to its client, and into the kept answer when the request has an
    ``Idempotency-Key`` (gateway/idempotency.py keeps its completed and error events). A client
    that goes away ends the writing; with a key the relay reads on, so that its repeat gets the
    completed image instead of a second generation."""

    __slots__ = ("response", "capture", "gone")

    def __init__(self, response: web.StreamResponse, capture: Capture | None) -> None:
        self.response = response
        self.capture = capture
        self.gone = False

    @classmethod
    async def open(cls, request: web.Request, headers: dict[str, str], capture: Capture | None) -> Out:
        response = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
        out = cls(response, capture)
        if capture is not None:
            capture.start(200, response.headers, stream=True)
        await out._guard(response.prepare(request))
        return out

    async def event(self, event_type: str, data: bytes, extra: object | None = None, keep: bool = False) -> int:
        """One event, with ``extra`` spliced into its data; ``keep``: part of the kept answer. The
        bytes written."""
        head = b"event: " + event_type.encode() + b"\ndata: "
        if extra is not None:
            end = data.rfind(b"}")
            parts: tuple[bytes | memoryview, ...] = (
                head, memoryview(data)[:end], b',"extra":' + msgspec.json.encode(extra) + b"}\n\n")
        else:
            parts = (head, memoryview(data), b"\n\n")
        if keep and self.capture is not None:
            self.capture.add(*parts)
        if self.gone:
            return 0
        write = self.response.write
        if len(data) < _JOIN_BELOW_BYTES:
            await self._guard(write(b"".join(parts)))
        else:
            for part in parts:
                if not self.gone:
                    await self._guard(write(part))
        return sum(len(part) for part in parts)

    async def error(self, error: GatewayError, extra: object) -> int:
        """The error event that ends a stream: OpenAI's error object with the gateway's ``extra``
        in it, so that the SDKs, which raise with that object as the body, carry the attempts along."""
        obj = error.to_body().error
        data = msgspec.json.encode({"type": "error", "error": {
            "message": obj.message, "type": obj.type, "param": obj.param, "code": obj.code, "extra": extra}})
        return await self.event("error", data, keep=True)

    async def end(self) -> None:
        if not self.gone:
            await self._guard(self.response.write_eof())

    async def _guard(self, write: Awaitable[object]) -> None:
        try:
            await write
        except ConnectionResetError:
            if self.capture is None:
                raise
            self.gone = True
