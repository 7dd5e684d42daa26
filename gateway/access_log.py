"""The access log: one JSON line per request, encoded once with msgspec, written after the response.

Built from the request record (gateway/record.py). It never holds a key (only the key's name) and
holds the prompt only when ``log.include_prompt`` is on. ``write`` queues a line; the observers
(gateway/observers.py) call ``flush`` once per batch of finished requests, so the lines of one
event-loop turn go out together (one system call instead of one per request), in writes of
whole lines of at most ``PIPE_BUF`` bytes, which the kernel keeps whole on a pipe or
an ``O_APPEND`` file shared by several workers.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, BinaryIO

import msgspec

from gateway.config import Config, LogConfig
from gateway.record import RequestRecord

_LEVELS = {"info": 0, "warning": 400, "error": 500}
_PIPE_BUF = 4096


class LogLine(msgspec.Struct, omit_defaults=True):
    """One access-log line. Every field is always present except ``prompt`` (opt-in)."""

    ts: str
    level: str
    request_id: str
    method: str
    route: str
    status: int
    latency_ms: float
    upstream_latency_ms: float
    key_name: str | None
    user_id: str | None
    session_id: str | None
    client_ip: str | None
    model_asked: str | None
    model: str | None
    model_served: str | None
    provider: str | None
    region: str | None
    attempts: int
    images: int
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    cost_unknown_reason: str | None
    #: Attempts that may have been billed without an answer (gateway/cost.py), and their cost at most.
    possibly_billed_attempts: int
    possibly_billed_usd: float | None
    #: With an Idempotency-Key: new, replayed, or why it was refused (gateway/record.py).
    idempotency: str | None
    request_bytes: int
    response_bytes: int
    error_code: str | None
    prompt: str | None = None


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _timestamp(at: float) -> str:
    """RFC 3339 UTC with milliseconds; the seconds part is formatted once per second."""
    second = int(at)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int((at - second) * 1000):03d}Z"


def line_of(record: RequestRecord, prompt: str | None = None) -> LogLine:
    usage, cost = record.usage, record.cost
    status = record.status
    attempts = record.attempts
    return LogLine(
        ts=_timestamp(record.started_at),
        level="error" if status >= 500 else "warning" if status >= 400 else "info",
        request_id=record.request_id, method=record.method, route=record.route, status=status,
        latency_ms=round(record.duration_s * 1000, 3), upstream_latency_ms=round(record.upstream_s * 1000, 3),
        key_name=record.key_name, user_id=record.identity.user_id, session_id=record.identity.session_id,
        client_ip=record.client_ip, model_asked=record.model_asked, model=record.model,
        model_served=record.model_served, provider=record.provider, region=record.region,
        attempts=len(attempts) if len(attempts) == 1 and attempts[0].status != "skipped" else
        sum(1 for a in attempts if a.status != "skipped"), images=record.images,
        input_tokens=usage.input_tokens if usage is not None else None,
        output_tokens=usage.output_tokens if usage is not None else None,
        cost_usd=cost.cost_usd if cost is not None else None,
        cost_unknown_reason=cost.reason if cost is not None else None,
        possibly_billed_attempts=record.possibly_billed, possibly_billed_usd=record.possibly_billed_usd,
        idempotency=record.idempotency,
        request_bytes=record.request_bytes, response_bytes=record.response_bytes,
        error_code=record.error_code, prompt=prompt)


class AccessLog:
    """The destination is the process's (``log.destination``); the level and whether prompts are
    logged come from each request's configuration (``settings`` in ``write``)."""

    def __init__(self, stream: BinaryIO, owned: bool) -> None:
        self._stream = stream
        self._owned = owned
        self._encoder = msgspec.json.Encoder()
        self._pending: list[bytes] = []

    @classmethod
    def open(cls, config: Config) -> AccessLog | None:
        if not config.server.access_log:
            return None
        destination = config.log.destination
        if destination in ("stderr", "stdout"):
            stream = (sys.stderr if destination == "stderr" else sys.stdout).buffer
            return cls(stream, owned=False)
        fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return cls(os.fdopen(fd, "ab", buffering=0), owned=True)

    def write(self, record: RequestRecord, settings: LogConfig, prompt: str | None = None) -> None:
        """Queue the request's line (written by the next ``flush``)."""
        if record.status < _LEVELS[settings.level]:
            return
        line = line_of(record, prompt if settings.include_prompt else None)
        self._pending.append(self._encoder.encode(line) + b"\n")

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        batch: list[bytes] = []
        size = 0
        for line in pending:
            if batch and size + len(line) > _PIPE_BUF:
                self._stream.write(b"".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._stream.write(b"".join(batch))
        if not self._owned:
            self._stream.flush()

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._stream.close()
