"""Decoding JSON an upstream sent: whatever the bytes, a value or ``msgspec.DecodeError``.

msgspec decodes nested arrays and objects recursively, guarded by the interpreter's recursion
limit: a body nested deeper than about a thousand levels (a few kilobytes) raises
``RecursionError``, which is a RuntimeError, not a DecodeError. Every reader of an upstream
body (the success answer, OpenAI's and Azure's error dialects) decodes through ``decode`` so
that such a body is an invalid answer like any other, and never escapes as a 500. Skipped
fields and ``msgspec.Raw`` values recurse the same way, so the typed decoders are no shield.

The recursion limit is also what keeps msgspec within the C stack (before Python 3.14 it does
not measure the stack itself): the gateway never raises it, and decodes on the event loop's
thread, whose stack is the process's main one.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

T = TypeVar("T")


def decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """``decoder.decode(body)``; too deep a nesting is a ``msgspec.DecodeError`` too."""
    try:
        return decoder.decode(body)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None
