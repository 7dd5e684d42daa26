"""A ``multipart/form-data`` body (RFC 7578) sent in pieces: text fields and files, each file sent
from where the gateway holds it (gateway/uploads.py), so an edit's images are neither copied into
the body nor held twice. ``UpstreamHTTP.request(..., body=form)`` writes it with backpressure.
Names may repeat (``image[]`` once per image)."""

from __future__ import annotations

import secrets
from typing import Iterator

from gateway.uploads import InputImage


def _quoted(text: str) -> str:
    # RFC 7578 4.2: a name or file name is a quoted string; quotes and line breaks percent-encoded.
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class Form:
    def __init__(self) -> None:
        # 128 random bits: no text or image the gateway sends will contain it.
        self.boundary = "opengateway-" + secrets.token_hex(16)
        self._pieces: list[bytes | InputImage] = []

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def field(self, name: str, value: str | int | float | bool) -> None:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        self._pieces.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'
                            f"{text}\r\n".encode("utf-8"))

    def file(self, name: str, image: InputImage) -> None:
        self._pieces.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"; '
                            f'filename="{_quoted(image.filename)}"\r\nContent-Type: {image.content_type}\r\n\r\n'
                            .encode("utf-8"))
        self._pieces.append(image)
        self._pieces.append(b"\r\n")

    def _closing(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_length(self) -> int:
        return sum(p.size if isinstance(p, InputImage) else len(p) for p in self._pieces) + len(self._closing())

    def parts(self) -> Iterator[bytes | memoryview]:
        for piece in self._pieces:
            if isinstance(piece, InputImage):
                yield from piece.chunks()
            else:
                yield piece
        yield self._closing()
