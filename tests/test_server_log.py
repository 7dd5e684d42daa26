"""Malformed HTTP requests (refused by aiohttp's parser before any middleware): one line each in
the log, at a bounded rate, never a credential, and every one counted in a metric."""

from __future__ import annotations

import asyncio
import logging
from typing import Iterator

import pytest

from gateway import metrics, server_log
from gateway.redact import RedactingFilter, Redactor
from tests.conftest import eventually

pytestmark = pytest.mark.usefixtures("loop_stall_guard")

SECRET = "og-live-secret-0123456789abcdef"
#: What aiohttp refuses, quoting the offending line back (the bare CR, the NUL) in its message.
MALFORMED = [
    f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\x01\r\n\r\n".encode(),
    f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\x00\r\n\r\n".encode(),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS sent to the HTTP port
    b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
]


@pytest.fixture
def malformed_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[server_log.MalformedRequestLog]:
    """The filter on aiohttp's logger, as the app installs it, with a short window for the test."""
    monkeypatch.setattr(server_log, "WINDOW_S", 1.0)
    logger = logging.getLogger("aiohttp.server")
    installed = server_log.install(logger)
    try:
        yield installed
    finally:
        installed.flush()
        logger.removeFilter(installed)


@pytest.fixture
def port(served_port: int) -> int:
    return served_port


def malformed_total() -> float:
    return metrics.MALFORMED_REQUESTS._value.get()  # type: ignore[attr-defined]


async def send_raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_a_flood_of_malformed_requests_is_logged_at_a_bounded_rate(
        port: int, malformed_log: server_log.MalformedRequestLog, caplog: pytest.LogCaptureFixture) -> None:
    before = malformed_total()
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    answers = await asyncio.gather(*(send_raw(port, MALFORMED[i % len(MALFORMED)]) for i in range(400)))
    refused = sum(1 for a in answers if a.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")))
    assert refused == len(answers), {a[:40] for a in answers}
    assert malformed_total() - before == refused
    def accounted() -> int:  # lines logged plus those the summaries say were held back
        messages = [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"]
        return (sum(1 for m in messages if m.startswith("malformed HTTP request")) +
                sum(int(m.split()[0]) for m in messages if "were not logged" in m))
    # Each window closes with one summary line (a loaded machine may spread the flood over two).
    assert await eventually(lambda: accounted() == refused, 3 * server_log.WINDOW_S + 2)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    lines = [r.getMessage() for r in records]
    assert 1 <= len(lines) <= 2 * (server_log.LINES_PER_WINDOW + 1), lines
    assert all(r.exc_info is None and not r.exc_text and r.levelno == logging.WARNING for r in records)
    assert all("\n" not in line and len(line) < 400 and SECRET not in line for line in lines), lines
    assert any(line.startswith("malformed HTTP request from 127.0.0.1") for line in lines)
    assert any("were not logged" in line for line in lines)
    held_back = sum(int(line.split()[0]) for line in lines if "were not logged" in line)
    logged = sum(1 for line in lines if line.startswith("malformed HTTP request"))
    assert logged + held_back == malformed_total() - before
    formatted = sum(len(logging.Formatter().format(r)) for r in records)
    assert formatted < 8_000  # aiohttp's own lines: ~550 bytes each, 200 KB for these 400


def test_the_window_and_its_summary(caplog: pytest.LogCaptureFixture) -> None:
    """Ten lines per window, then silence, then one summary once the window is over."""
    now = [0.0]
    logger = logging.getLogger("test.malformed")
    log_filter = server_log.MalformedRequestLog(clock=lambda: now[0])
    log_filter.logger = logger
    logger.addFilter(log_filter)
    redacting = RedactingFilter(lambda: Redactor())  # after it, as the app installs them
    logger.addFilter(redacting)
    caplog.set_level(logging.DEBUG, logger="test.malformed")
    try:
        from aiohttp.http_exceptions import BadHttpMessage

        def refuse() -> None:
            try:
                raise BadHttpMessage(f"Invalid header value char: b'Authorization: Bearer {SECRET}'")
            except BadHttpMessage:
                logger.exception("Error handling request from %s", "203.0.113.9")

        for _ in range(25):
            refuse()
        assert len(caplog.records) == server_log.LINES_PER_WINDOW
        logger.error("a real server error", exc_info=ValueError("kept whole"))  # other records pass
        other = caplog.records[-1]  # its traceback kept (as text, by the redacting filter), still an ERROR
        assert "kept whole" in (other.exc_text or "") and other.levelno == logging.ERROR
        now[0] = server_log.WINDOW_S + 1  # the next window: its first line comes after the summary
        refuse()
        messages = [r.getMessage() for r in caplog.records]
        assert messages[-2].startswith("15 more malformed HTTP requests")
        assert messages[-1].startswith("malformed HTTP request from 203.0.113.9 refused with 400")
        assert all(SECRET not in m for m in messages) and "[redacted]" in messages[0]
    finally:
        logger.removeFilter(log_filter)
        logger.removeFilter(redacting)


def test_install_is_once_and_first(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.malformed.install")
    logger.addFilter(RedactingFilter(lambda: Redactor()))
    first = server_log.install(logger)
    assert server_log.install(logger) is first and logger.filters[0] is first and len(logger.filters) == 2
