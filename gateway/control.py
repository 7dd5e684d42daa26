"""The control channel between the supervisor and each worker (``serve --workers N``).

One Unix socket pair per worker, newline-delimited JSON messages (``Message``). It carries what
must reach every worker or none:

- at start, the supervisor sends the configuration the workers run (``start``: the file's text
  as last committed, and a per-run dashboard session secret), so a worker started during a
  reload never runs a config that its siblings do not;
- a reload is two-phase: the supervisor reads the file once and sends its text to every worker
  (``prepare``); each builds a Runtime without using it and answers (``prepared``, with any
  problems); only when all of them succeeded does the supervisor say ``commit`` (else ``abort``),
  so a key revoked by a reload stops working on every connection at once, or on none;
- a worker asked to reload (SIGHUP, ``POST /admin/reload``) asks the supervisor (``reload``) and
  gets the outcome (``reloaded``): how many workers took the new config;
- ``broadcast``: a message a worker sends to its siblings (a dashboard sign-out).

The workers read and write these messages with the msgspec types below; the supervisor, which
imports no msgspec, reads and writes the same JSON lines with the standard library's json module
(gateway/supervisor_loop.py, ``LineChannel``).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable

import msgspec

#: The most a single message may hold (a config file's text is well below; the supervisor's side
#: has the same bound, gateway.supervisor_loop.MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 16 << 20


class Problem(msgspec.Struct, frozen=True):
    """A config problem as a worker found it (gateway.config.Problem, over the wire)."""

    path: str
    message: str
    line: int | None = None


class Outcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How a reload ended, as ``POST /admin/reload`` answers it."""

    #: reloaded; refused (the config has problems); failed (a worker did not answer: none switched)
    status: str
    #: Workers running the new config, and workers in all.
    workers: int = 0
    of: int = 0
    generation: int = 0
    providers: int = 0
    models: int = 0
    keys: int = 0
    problems: list[Problem] = []
    #: Process settings the new config changes; they take effect at the next restart.
    restart_required: list[str] = []


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    op: str
    #: Correlates a request with its answer (prepare/prepared, reload/reloaded).
    id: int = 0
    #: The config generation a message is about (1 at start, +1 per committed reload).
    generation: int = 0
    #: A config file's text; None when the gateway runs on the environment (no file).
    text: str | None = None
    session_secret: str | None = None
    outcome: Outcome | None = None
    #: What a broadcast carries.
    payload: dict[str, Any] | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message) + b"\n"


def decode(line: bytes) -> Message:
    return _decoder.decode(line)


def read_first(sock: socket.socket) -> Message:
    """The worker's first message (``start``), read before its event loop runs."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the supervisor closed the control channel before sending the config")
        data += chunk
        if len(data) > MAX_MESSAGE_BYTES:
            raise ConnectionError("the supervisor's first message is too long")
    return decode(bytes(data))


class Channel:
    """One end of a control socket, on an event loop: send messages, dispatch those received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE_BYTES)
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        if not self._writer.is_closing():
            self._writer.write(encode(message))

    async def serve(self, handle: Callable[[Message], Awaitable[None] | None]) -> None:
        """Dispatch every message received until the other end closes."""
        while True:
            try:
                line = await self._reader.readline()
            except (ConnectionError, asyncio.LimitOverrunError, ValueError):
                return
            if not line:
                return
            try:
                message = decode(line)
            except msgspec.DecodeError:
                continue
            result = handle(message)
            if result is not None:
                await result

    def close(self) -> None:
        self._writer.close()
