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
from typing import AsyncIterator, Iterable

import msgspec
from aiohttp import web

from gateway.api import Usage, UpstreamImagesResponse
from gateway.errors import GatewayError
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
    body = msgspec.json.decode(skeleton(result.body))  # the small fields only; the images stay raw
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


async def open_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
    await response.prepare(request)
    return response


async def write_event(response: web.StreamResponse, event_type: str, data: bytes,
                      extra: object | None = None) -> int:
    """One event; with ``extra`` spliced into its data. The bytes written."""
    head = b"event: " + event_type.encode() + b"\ndata: "
    if extra is not None:
        end = data.rfind(b"}")
        tail = b',"extra":' + msgspec.json.encode(extra) + b"}\n\n"
        body = memoryview(data)[:end]
    else:
        tail, body = b"\n\n", memoryview(data)
    if len(data) < _JOIN_BELOW_BYTES:
        await response.write(b"".join((head, body, tail)))
    else:
        await response.write(head)
        await response.write(body)
        await response.write(tail)
    return len(head) + len(body) + len(tail)


async def write_error(response: web.StreamResponse, error: GatewayError, extra: object) -> int:
    """The error event that ends a stream: OpenAI's error object with the gateway's ``extra`` in
    it, so that the SDKs, which raise with that object as the body, carry the attempts along."""
    obj = error.to_body().error
    data = msgspec.json.encode({"type": "error", "error": {
        "message": obj.message, "type": obj.type, "param": obj.param, "code": obj.code, "extra": extra}})
    return await write_event(response, "error", data)
