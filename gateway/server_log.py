"""aiohttp's log of malformed HTTP requests: one line each, at a bounded rate, counted.

aiohttp's parser refuses a malformed request (a bad header, an oversized line, TLS on the HTTP
port, ...) before any middleware runs, and ``RequestHandler.handle_error`` logs it on the
``aiohttp.server`` logger at ERROR with a traceback: about 550 bytes per request, from anyone
who can open a connection. That is the only place such a request can be observed, so this
filter, on that logger, turns each into one WARNING line without traceback (a client's fault,
not the server's), lets at most ``LINES_PER_WINDOW`` through per ``WINDOW_S``, says once per
window how many it held back, and counts every one in ``opengateway_malformed_requests_total``.
The line quotes what the client sent: the ``RedactingFilter`` (gateway/redact.py) after this one
scrubs it with the current configuration's redactor, as it does every record of the logger.
Every other record passes this filter untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from aiohttp.http_exceptions import HttpProcessingError

from gateway import metrics

#: At most this many malformed-request lines per window; the rest are counted, not logged.
LINES_PER_WINDOW = 10
WINDOW_S = 10.0
#: The offending text aiohttp quotes (a header line, a request line) is cut to this many characters.
MAX_DETAIL_CHARS = 200
_SUMMARY = "opengateway_summary"  # marks this filter's own summary record


def _line(remote: object, exc: BaseException) -> str:
    """The one line for a malformed request (redacted by the next filter)."""
    detail = " ".join(str(exc).split())  # aiohttp's message spans lines (the quoted line, a caret)
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "..."
    return f"malformed HTTP request from {remote} refused with 400: {detail}"


class MalformedRequestLog(logging.Filter):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._window_ends = 0.0
        self._logged = 0
        self._held_back = 0
        self._summary: asyncio.TimerHandle | None = None
        self.logger: logging.Logger | None = None  # where the summary goes (set by install)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if getattr(record, _SUMMARY, False) or not isinstance(exc, HttpProcessingError):
            return True
        metrics.MALFORMED_REQUESTS.inc()
        now = self._clock()
        if now >= self._window_ends:
            self.flush()
            self._window_ends, self._logged = now + WINDOW_S, 0
        if self._logged >= LINES_PER_WINDOW:
            self._held_back += 1
            self._schedule_summary(self._window_ends - now)
            return False
        self._logged += 1
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg, record.args = _line(remote, exc), ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

    def _schedule_summary(self, delay_s: float) -> None:
        if self._summary is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: the next window's first request flushes it
            return
        self._summary = loop.call_later(max(0.0, delay_s), self.flush)

    def flush(self) -> None:
        """Log how many lines the window held back, if any."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        held_back, self._held_back = self._held_back, 0
        if held_back and self.logger is not None:
            self.logger.warning("%d more malformed HTTP requests refused with 400 in the last %g s were not "
                                "logged (at most %d lines per %g s; opengateway_malformed_requests_total "
                                "counts them all)", held_back, WINDOW_S, LINES_PER_WINDOW, WINDOW_S,
                                extra={_SUMMARY: True})


def install(logger: logging.Logger | None = None) -> MalformedRequestLog:
    """Put the filter on aiohttp's server logger (once per process), ahead of every other
    filter there: the RedactingFilter turns tracebacks into text, after which a malformed
    request could no longer be told from a server error."""
    logger = logger or logging.getLogger("aiohttp.server")
    for existing in logger.filters:
        if isinstance(existing, MalformedRequestLog):
            return existing
    log_filter = MalformedRequestLog()
    log_filter.logger = logger
    logger.filters.insert(0, log_filter)
    return log_filter
