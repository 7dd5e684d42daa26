"""Inflating a gzip or deflate answer a slice at a time, never past a size limit.

The gateway asks upstreams for ``identity``, but inflates what comes back compressed anyway.
A megabyte of gzip can inflate to gigabytes, and one ``zlib`` call that inflates it all holds
the event loop for seconds and the memory until it ends. Here each call inflates at most
``SLICE_BYTES`` of output, the caller runs one call per event-loop turn, and the answer is
refused the moment its inflated size passes the limit.
"""

from __future__ import annotations

import collections
import zlib

#: Output of one inflate call: about a millisecond of CPU on the machine docs/performance.md measures.
SLICE_BYTES = 256 << 10


class InflatedTooLarge(Exception):
    """The inflated body passed the limit (the caller's ``ResponseTooLarge``)."""


class Inflater:
    """One answer's ``gzip`` or ``deflate`` body: ``feed`` it the compressed bytes as they
    arrive, call ``inflate_slice`` while ``busy``, and take ``result`` once the body is in."""

    __slots__ = ("limit", "slice_bytes", "_encoding", "_zlib", "_pending", "_tail", "_full", "_fed", "_out")

    def __init__(self, encoding: str, limit: int, slice_bytes: int = SLICE_BYTES) -> None:
        self.limit = limit
        self.slice_bytes = slice_bytes
        self._encoding = encoding
        # deflate is zlib-wrapped (RFC 1950) or raw, as servers differ: decided by the first byte.
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "deflate" else None
        self._pending: collections.deque[bytes] = collections.deque()
        self._tail = b""      # input zlib left unconsumed because the last slice's output was full
        self._full = False    # ... in which case zlib may still hold output without more input
        self._fed = False
        # One buffer, grown in place: past glibc's mmap threshold it is remapped rather than
        # copied, and a refused body goes back to the system at once, not into the heap.
        self._out = bytearray()

    @property
    def busy(self) -> bool:
        """There is input (or zlib output) not inflated yet."""
        return bool(self._tail or self._pending or self._full)

    @property
    def size(self) -> int:
        return len(self._out)

    def feed(self, data: bytes) -> None:
        if data:
            self._pending.append(data)
            self._fed = True

    def inflate_slice(self) -> bool:
        """Inflate at most ``slice_bytes`` of output; True while there is more to do.
        Raises InflatedTooLarge past the limit, zlib.error on a corrupt stream."""
        if not self._tail and self._pending:
            self._tail = self._pending.popleft()
        d = self._zlib
        if d is None:
            raw = not (self._tail[0] & 0x0F == 8 and self._tail[0] >> 4 <= 7)  # RFC 1950 CMF byte
            d = self._zlib = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        if d.eof:  # bytes after the end of the stream: ignored, as before
            self._tail, self._full = b"", False
            self._pending.clear()
            return False
        piece = d.decompress(self._tail, self.slice_bytes)
        self._tail = d.unconsumed_tail
        self._full = len(piece) == self.slice_bytes and not d.eof
        if len(self._out) + len(piece) > self.limit:
            self.close()
            raise InflatedTooLarge(self.limit)
        self._out += piece
        return self.busy

    def result(self) -> bytes:
        """The whole inflated body (after every slice). zlib.error if the stream stopped short."""
        if not self._fed:
            return b""
        if self._zlib is None or not self._zlib.eof:
            raise zlib.error(f"the {self._encoding} stream ends before its end marker")
        out = bytes(self._out)
        self.close()
        return out

    def close(self) -> None:
        """Drop what is held (a failed or abandoned answer)."""
        self._out = bytearray()
        self._pending.clear()
        self._tail = b""
        self._full = False
