"""An edit's input images, held once for the whole request.

An image is read from the client (a multipart part, or a JSON ``data:`` URL) into memory while
the request's uploads stay under ``server.upload_memory_bytes``, and into a temporary file after
that; every attempt the router makes (a retry, a fallback) sends it from there, so the client's
upload is never read twice and never held twice. Its format (PNG, JPEG or WebP, by its magic
bytes) and size (read from its header by Pillow, which does not decode the pixels) are known
before any upstream call, so the plan can refuse a mask of the wrong size in OpenAI's words.
The files are removed when the request ends (``EditInputs.close``).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import IO, AsyncIterator, Iterator

from gateway.errors import InvalidRequest, PayloadTooLarge

#: Formats an edit accepts (OpenAI: png, webp or jpg), by their first bytes.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"))
_CHUNK_BYTES = 256 << 10


def sniff(head: bytes) -> str | None:
    """The image format of a file that starts with ``head`` (its first 12 bytes at least)."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


class InputImage:
    """One input image: its bytes (in memory or in a temporary file), format and dimensions."""

    __slots__ = ("field", "filename", "format", "width", "height", "size", "has_alpha", "_data", "_file", "_digest")

    def __init__(self, field: str, filename: str | None) -> None:
        self.field = field
        self.filename = filename or "image"
        self.format: str | None = None
        self.width = self.height = 0
        self.size = 0
        self.has_alpha = False
        self._data = bytearray()
        self._file: IO[bytes] | None = None
        self._digest: str | None = None

    @property
    def content_type(self) -> str:
        return f"image/{self.format or 'png'}"

    @property
    def digest(self) -> str:
        """The SHA-256 of the image's bytes (an idempotent request's fingerprint covers its
        uploads): computed when first asked, so that an edit without a key never pays for it
        (about 1 ms a MB)."""
        if self._digest is None:
            sha256 = hashlib.sha256()
            for chunk in self.chunks():
                sha256.update(chunk)
            self._digest = sha256.hexdigest()
        return self._digest

    def write(self, chunk: bytes, spill: bool) -> None:
        """Append a chunk; ``spill``: the request's uploads passed the memory bound, keep this on disk."""
        self.size += len(chunk)
        if self._file is None and spill:
            self._file = tempfile.TemporaryFile(prefix="opengateway-upload-")
            self._file.write(self._data)
            self._data = bytearray()
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._data += chunk

    def finish(self) -> None:
        """Check what was received is a PNG, JPEG or WebP image and read its dimensions."""
        from PIL import Image, UnidentifiedImageError  # imported by edits only (gateway/app.py stays lean)

        head = self.head(12)
        self.format = sniff(head)
        if self.format is None:
            raise InvalidRequest(
                f"Invalid file '{self.filename}': unsupported image format. Supported formats are: "
                "'png', 'webp', and 'jpeg'.", param=self.field, code="invalid_image_format")
        try:
            with Image.open(self._readable()) as image:
                self.width, self.height = image.size
                self.has_alpha = image.mode in ("RGBA", "LA", "PA") or (
                    image.mode == "P" and "transparency" in image.info)
        except (UnidentifiedImageError, OSError, ValueError):
            raise InvalidRequest(f"Invalid file '{self.filename}': the image could not be read.",
                                 param=self.field, code="invalid_image") from None

    def head(self, count: int) -> bytes:
        if self._file is None:
            return bytes(self._data[:count])
        self._file.seek(0)
        return self._file.read(count)

    def _readable(self) -> IO[bytes]:
        if self._file is None:
            return io.BytesIO(self._data)
        self._file.seek(0)
        return self._file

    def read(self) -> bytes:
        """The whole image (for a plugin that draws or converts it; senders use ``chunks``)."""
        if self._file is None:
            return bytes(self._data)
        self._file.seek(0)
        return self._file.read()

    def chunks(self) -> Iterator[memoryview | bytes]:
        """The image in slices of at most 256 KiB, without copying what is in memory."""
        if self._file is None:
            view = memoryview(self._data)
            for start in range(0, len(view), _CHUNK_BYTES):
                yield view[start:start + _CHUNK_BYTES]
            return
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # a TemporaryFile has no name on disk: closing frees it
            self._file = None
        self._data = bytearray()


class EditInputs:
    """An edit's images (``image`` / ``image[]``, in order) and its optional mask."""

    __slots__ = ("images", "mask")

    def __init__(self, images: tuple[InputImage, ...], mask: InputImage | None) -> None:
        self.images = images
        self.mask = mask

    @property
    def size(self) -> int:
        return sum(i.size for i in self.images) + (self.mask.size if self.mask is not None else 0)

    @property
    def fingerprint(self) -> str:
        """The digests of the images and mask, in order."""
        parts = [i.digest for i in self.images] + ([f"mask:{self.mask.digest}"] if self.mask is not None else [])
        return ",".join(parts)

    def close(self) -> None:
        for image in self.images:
            image.close()
        if self.mask is not None:
            self.mask.close()


class UploadLimits:
    """``server.max_upload_bytes`` a file, ``max_upload_total_bytes`` a request, the first
    ``upload_memory_bytes`` of a request held in memory (the rest in temporary files)."""

    def __init__(self, max_file_bytes: int, max_total_bytes: int, memory_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.memory_bytes = memory_bytes
        self.total = 0

    def take(self, image: InputImage, chunk: bytes) -> None:
        """Account for a chunk of ``image`` and keep it (in memory or on disk), or refuse it."""
        self.total += len(chunk)
        if image.size + len(chunk) > self.max_file_bytes:
            raise PayloadTooLarge(f"The file '{image.filename}' is larger than the limit of "
                                  f"{self.max_file_bytes} bytes.", param=image.field)
        if self.total > self.max_total_bytes:
            raise PayloadTooLarge(f"The uploaded files are larger than the limit of {self.max_total_bytes} bytes "
                                  "for one request.", param=image.field)
        image.write(chunk, spill=self.total > self.memory_bytes)


async def read_into(image: InputImage, chunks: AsyncIterator[bytes], limits: UploadLimits) -> InputImage:
    async for chunk in chunks:
        limits.take(image, chunk)
    image.finish()
    return image


def remove_all(images: list[InputImage]) -> None:
    for image in images:
        image.close()


__all__ = ["EditInputs", "InputImage", "UploadLimits", "read_into", "remove_all", "sniff"]

_ = os  # (kept for the temporary-file module's platform defaults)
