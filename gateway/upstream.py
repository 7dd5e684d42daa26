"""Reading an upstream's images answer: its shape is checked, its base64 is never decoded.

A GPT Image answer is megabytes of base64 inside a small JSON skeleton. msgspec checks every
byte of a JSON string one at a time, which for a 2 MB image costs more than everything else the
gateway does for that request. Large bodies are therefore checked in two parts: each
``"b64_json"`` string is located with ``bytes.find`` (memchr speed) and must contain no quote or
backslash, which base64 never does; the skeleton with those strings emptied is then decoded by
msgspec exactly like a small body. A body the fast path cannot vouch for is decoded whole.
"""

from __future__ import annotations

import msgspec

from gateway.api import UpstreamImagesResponse
from gateway.provider import ProviderError
from gateway.upstream_json import decode

_decoder = msgspec.json.Decoder(UpstreamImagesResponse)
_KEY = b'"b64_json"'
_SKIP = b" \t\r\n"
#: Below this size the whole body is decoded directly; the skeleton is not worth building.
SKELETON_ABOVE_BYTES = 65_536


def parse_upstream(body: bytes) -> UpstreamImagesResponse:
    """Check an upstream success body has OpenAI's shape; a broken one is the upstream's fault."""
    try:
        if len(body) > SKELETON_ABOVE_BYTES:
            return decode(skeleton(body), _decoder)
        return decode(body, _decoder)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError; so is too deep a nesting
        raise ProviderError(f"The upstream answered 200 with an invalid images response: {exc}",
                            status=502, code="invalid_upstream_response", retryable=True) from None


def skeleton(body: bytes) -> bytes:
    """``body`` with the contents of every ``"b64_json": "..."`` string removed."""
    parts: list[bytes] = []
    view = memoryview(body)
    kept = 0  # body[kept:] is not yet in parts
    at = body.find(_KEY)
    while at != -1:
        value = at + len(_KEY)
        while value < len(body) and body[value] in _SKIP:
            value += 1
        if value < len(body) and body[value] == 0x3A:  # ':'
            value += 1
            while value < len(body) and body[value] in _SKIP:
                value += 1
            if value < len(body) and body[value] == 0x22:  # '"': a string value
                end = body.find(b'"', value + 1)
                if end == -1 or body.find(b"\\", value + 1, end) != -1:
                    return body  # unterminated or escaped: let msgspec judge the whole body
                parts.append(view[kept:value + 1])
                kept = value = end
        at = body.find(_KEY, value)
    if not parts:
        return body
    parts.append(view[kept:])
    return b"".join(parts)
