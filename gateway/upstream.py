"""Reading an upstream's images answer: its shape is checked, its base64 is never decoded.

A GPT Image answer is megabytes of base64 inside a small JSON skeleton. msgspec checks every
byte of a JSON string one at a time, which for a 2 MB image costs more than everything else the
gateway does for that request. Large bodies are therefore checked in two parts: each
``"b64_json"`` string is located with ``bytes.find`` (memchr speed) and must hold only base64's
alphabet (one ``bytes.translate`` pass deleting it must leave nothing: about 0.3 ms per MB), so
it can be neither invalid UTF-8 nor a control byte nor anything else JSON would refuse; the
skeleton with those strings emptied is then decoded by msgspec exactly like a small body. A
string with a backslash (a JSON escape, legal if unusual) is not vouched for: the body is then
decoded whole. Either way the bytes msgspec reads must be UTF-8 (``_check_utf8``).
"""

from __future__ import annotations

import msgspec

from gateway.api import UpstreamImagesResponse
from gateway.provider_error import ProviderError
from gateway.upstream_json import decode

_decoder = msgspec.json.Decoder(UpstreamImagesResponse)
_KEY = b'"b64_json"'
_SKIP = b" \t\r\n"
#: Standard base64 (RFC 4648 section 4), padding included: what OpenAI's b64_json holds.
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_SCAN_BYTES = 262_144
#: Below this size the whole body is decoded directly; the skeleton is not worth building.
SKELETON_ABOVE_BYTES = 65_536


def parse_upstream(body: bytes) -> UpstreamImagesResponse:
    """Check an upstream success body has OpenAI's shape; a broken one is the upstream's fault."""
    try:
        checked = skeleton(body) if len(body) > SKELETON_ABOVE_BYTES else body
        _check_utf8(checked)
        return decode(checked, _decoder)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError; so is too deep a nesting
        raise ProviderError(f"The upstream answered 200 with an invalid images response: {exc}",
                            status=502, code="invalid_upstream_response", retryable=True) from None


def _check_utf8(data: bytes) -> None:
    """msgspec checks UTF-8 only in the strings it decodes: not in a key it skips, a value of an
    unknown field, or a ``msgspec.Raw`` (each ``data`` item). The body is relayed to the client,
    so all of it must be UTF-8 (found by tests/test_fuzz_upstream.py). ASCII, the usual case, is
    one word-at-a-time scan."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise msgspec.ValidationError(f"the body is not UTF-8 (byte {exc.start})") from None


def _outside_base64(body: bytes, start: int, end: int) -> bytes:
    """The bytes of ``body[start:end]`` that are not base64 (of the first slice that has any).
    Slices of ``_SCAN_BYTES`` keep both copies in the CPU cache: about twice as fast as one
    megabyte-sized slice and its megabyte-sized ``translate`` buffer."""
    for at in range(start, end, _SCAN_BYTES):
        stray = body[at:min(at + _SCAN_BYTES, end)].translate(None, _BASE64)
        if stray:
            return stray
    return b""


def skeleton(body: bytes, check: bool = True) -> bytes:
    """``body`` with the contents of every ``"b64_json": "..."`` string removed. A string with a
    byte outside base64's alphabet (bar a backslash) raises ``msgspec.ValidationError``.
    ``check=False`` leaves the alphabet to whoever checks it (a megabyte scan, done once per body
    or event: ``parse_upstream``, ``gateway.streaming.read_event``) and only strips."""
    parts: list[bytes | memoryview] = []
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
                if end == -1:
                    return body  # unterminated: let msgspec judge the whole body
                if check:
                    stray = _outside_base64(body, value + 1, end)
                    if stray and b"\\" not in stray:
                        raise msgspec.ValidationError(
                            f"b64_json holds {stray[:1]!r}, which is not base64 (at byte {body.find(stray[:1], value)})")
                    escaped = bool(stray)
                else:
                    escaped = body.find(b"\\", value + 1, end) != -1
                if escaped:
                    return body  # escaped: let msgspec judge the whole body
                parts.append(view[kept:value + 1])
                kept = value = end
        at = body.find(_KEY, value)
    if not parts:
        return body
    parts.append(view[kept:])
    return b"".join(parts)
