"""Assembling the client's answer from the upstream's bytes without re-encoding its base64.

The upstream body is a JSON object; the gateway's ``extra`` is spliced in before its closing
brace. Large bodies are written as two slices of the original buffer, so megabytes of base64
are neither decoded nor copied.
"""

from __future__ import annotations

from typing import Any, Mapping

import msgspec
from aiohttp import web

from gateway.api import UpstreamImagesResponse
from gateway.appkeys import CAPTURE

_STREAM_ABOVE_BYTES = 65_536
_JSON = "application/json"


async def images_response(request: web.Request, body: bytes, parsed: UpstreamImagesResponse,
                          extra: dict[str, Any], headers: Mapping[str, str]) -> web.StreamResponse:
    if parsed.extra is not None:
        # The upstream has an ``extra`` of its own (rare): merge, at the cost of one re-encode.
        merged = msgspec.json.decode(body)
        merged["extra"] = {**parsed.extra, **extra}
        return web.Response(body=msgspec.json.encode(merged), content_type=_JSON, headers=headers)
    end = body.rfind(b"}")
    tail = b',"extra":' + msgspec.json.encode(extra) + b"}"
    if end < _STREAM_ABOVE_BYTES:
        return web.Response(body=body[:end] + tail, content_type=_JSON, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = _JSON
    response.content_length = end + len(tail)
    capture = request.get(CAPTURE)
    if capture is not None:  # kept before it is written: a client gone mid-way loses nothing
        capture.start(200, response.headers)
        capture.add(memoryview(body)[:end], tail)
    await response.prepare(request)
    await response.write(memoryview(body)[:end])
    await response.write(tail)
    await response.write_eof()
    return response
