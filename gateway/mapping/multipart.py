"""A ``multipart/form-data`` body (RFC 7578) for ``UpstreamHTTP.request``: some upstreams (Stability
AI's generate endpoints) take their parameters as form fields rather than JSON."""

from __future__ import annotations

import secrets
from typing import Mapping, NamedTuple


class FilePart(NamedTuple):
    """A file field: its bytes, the file name sent, and its type."""

    data: bytes
    filename: str
    content_type: str = "application/octet-stream"


FieldValue = str | int | float | bool | FilePart


def _quoted(text: str) -> str:
    # RFC 7578 4.2: a name or file name is a quoted string; quote and line breaks percent-encoded.
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _value(value: FieldValue) -> bytes:
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode("utf-8")


def multipart_body(fields: Mapping[str, FieldValue]) -> tuple[bytes, str]:
    """``(body, content_type)``: send ``body`` with ``Content-Type: content_type``. Text fields
    are UTF-8; ``FilePart`` fields carry a file name and their own type. The boundary is random
    and checked against every part, so no value can end a part early."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, FilePart):
            head = (f'Content-Disposition: form-data; name="{_quoted(name)}"; filename="{_quoted(value.filename)}"\r\n'
                    f"Content-Type: {value.content_type}\r\n\r\n")
            parts.append((head.encode("utf-8"), value.data))
        else:
            parts.append((f'Content-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'.encode("utf-8"),
                          _value(value)))
    while True:
        boundary = "opengateway-" + secrets.token_hex(16)
        marker = boundary.encode("ascii")
        if not any(marker in data for _, data in parts):
            break
    body = b"".join(b"--%s\r\n%s%s\r\n" % (marker, head, data) for head, data in parts) + b"--%s--\r\n" % marker
    return body, f"multipart/form-data; boundary={boundary}"
