"""Request bodies for S6 and S7, and the checks that a proxy relayed their answers unchanged.

* S6: an images request with ``"stream": true`` and ``partial_images`` (JSON).
* S7: an edit as the official Python SDK sends ``client.images.edit(model=..., prompt=...,
  image=open("photo.png", "rb"))``: ``multipart/form-data`` with the text fields ``model`` and
  ``prompt`` first, then the file part ``image`` (a file name and ``Content-Type: image/png``).
  The file is a valid PNG (the gateway reads an upload's header with Pillow and refuses what is
  not an image) of about the asked size: random RGBA pixels stored uncompressed (zlib level 0),
  which is what a photo's PNG costs to hold, byte for byte.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from procs import BENCH_KEY, MODEL, HarnessError, http_request, image_b64s, tail

STREAM_PATH = "/v1/images/generations"
EDIT_PATH = "/v1/images/edits"
PROMPT = "A small red cube on a white background."


def stream_body(partials: int) -> bytes:
    return json.dumps({"model": MODEL, "prompt": PROMPT, "size": "1024x1024", "quality": "medium",
                       "stream": True, "partial_images": partials}).encode()


def png_file(size_bytes: int) -> bytes:
    """A valid 1024-pixel-wide RGBA PNG of at least ``size_bytes`` bytes (at most a row and a few
    hundred bytes of headers more)."""
    width = 1024
    row = 1 + 4 * width  # filter byte + pixels
    height = max(1, -(-size_bytes // row))
    raw = bytearray(os.urandom(row * height))
    raw[::row] = bytes(height)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw), 0))
            + chunk(b"IEND", b""))


def edit_form(png: bytes) -> tuple[str, bytes]:
    """(Content-Type, body) of one edit: fields model and prompt, file image."""
    boundary = "bench" + os.urandom(12).hex()
    parts = []
    for name, value in (("model", MODEL), ("prompt", PROMPT)):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def sse_images(body: bytes) -> list[tuple[str, str]]:
    """(event name, b64_json) of each event of a streamed answer's body."""
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "message", b""
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data += line[5:].strip()
        if data:
            out.append((name, json.loads(data).get("b64_json", "")))
    return out


def _auth(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Authorization": f"Bearer {BENCH_KEY}"}


def fetch_stream(port: int, partials: int) -> list[tuple[str, str]]:
    status, body = http_request(port, "POST", STREAM_PATH, stream_body(partials), _auth("application/json"), 30)
    if status != 200:
        raise HarnessError(f"port {port} answered {status} to a stream request: {body[:300]!r}")
    return sse_images(body)


def check_stream(name: str, port: int, partials: int, reference: list[tuple[str, str]],
                 log_path: Path | None = None) -> None:
    """One streamed request through a proxy: the upstream's events, names and images unchanged."""
    try:
        got = fetch_stream(port, partials)
    except HarnessError as exc:
        raise HarnessError(f"{name}: {exc}\n{tail(log_path)}") from None
    if got != reference:
        raise HarnessError(f"{name}: the stream differs from the upstream's: events "
                           f"{[(n, len(b)) for n, b in got]}, upstream {[(n, len(b)) for n, b in reference]}")


def check_edit(name: str, port: int, content_type: str, body: bytes, reference: list[str] | None,
               log_path: Path | None = None) -> list[str]:
    """One edit through a proxy (or straight to the upstream): 200 and the upstream's image."""
    status, answer = http_request(port, "POST", EDIT_PATH, body, _auth(content_type), 30)
    if status != 200:
        raise HarnessError(f"{name} answered {status} to the edit check: {answer[:500]!r}\n{tail(log_path)}")
    got = image_b64s(answer)
    if reference is not None and got != reference:
        raise HarnessError(f"{name}: the edit's image differs from the upstream's")
    return got
