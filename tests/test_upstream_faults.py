"""Upstream faults against a real fake upstream on loopback, with short deadlines.

Each fault must give the client the right status in OpenAI's shape with every attempt listed,
must not hold the request past its deadline, and must leave no task, no checked-out upstream
connection and no in-flight count behind.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config_load import parse_config
from gateway.appkeys import HTTP_CLIENT
from tests import fake_upstream as fu
from tests.conftest import AUTH, base_config_yaml, eventually, in_flight

ATTEMPT_TIMEOUT_S = 0.5
DEADLINE_S = 1.5
LIMIT_BYTES = 65_536
LIMITS = f"""
server:
  max_upstream_body_bytes: {LIMIT_BYTES}
router:
  attempt_timeout_s: {ATTEMPT_TIMEOUT_S}
  deadline_s: {DEADLINE_S}
"""
BODY = {"model": "openai/gpt-image-1", "prompt": "A small red cube"}
#: A guard, not a measurement: a request that outlives its deadline by this much is hung.
HUNG_AFTER_S = DEADLINE_S + 10


settle = eventually
pytestmark = pytest.mark.usefixtures("loop_stall_guard")


@pytest.fixture
def fake(upstream: fu.FakeUpstream) -> fu.FakeUpstream:
    # aiohttp's TestServer cancels a handler when its client hangs up, as a real upstream stops work.
    return upstream


@pytest.fixture
async def gateway(aiohttp_client: Callable[..., Awaitable[TestClient]], fake: fu.FakeUpstream) -> TestClient:
    config = parse_config(base_config_yaml(fake.url, LIMITS), env={})  # type: ignore[attr-defined]
    return await aiohttp_client(create_app(config))


async def _request_and_check_cleanup(client: TestClient) -> tuple[int, dict[str, Any], Any]:
    """One request after a warm-up, with the leak checks around it."""
    warm = await client.post("/v1/images/generations", json={**BODY, "model": "openai/gpt-image-1-mini"},
                             headers=AUTH)
    assert warm.status == 200
    await warm.read()
    http = client.server.app[HTTP_CLIENT]
    tasks_before = len(asyncio.all_tasks())
    gauge_before = in_flight()
    async with asyncio.timeout(HUNG_AFTER_S):
        resp = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
        body = await resp.json()
    assert await settle(lambda: len(asyncio.all_tasks()) <= tasks_before), \
        f"tasks: {len(asyncio.all_tasks())} after, {tasks_before} before"
    assert await settle(lambda: http.in_use == 0), "an upstream connection is still checked out"
    assert in_flight() == gauge_before
    return resp.status, body, resp.headers


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def assert_error_shape(body: dict[str, Any]) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


#: Every attempt timed out: a gateway timeout (504), whether or not the deadline itself passed.
TIMED_OUT = (504,)


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """A JSON value ``depth`` arrays deep (2 bytes a level): msgspec recurses once per level and
    stops at the interpreter's recursion limit with RecursionError, not a DecodeError
    (https://github.com/msgspec/msgspec/pull/646: "we properly manage recursion limits")."""
    return b"[" * depth + inner + b"]" * depth


#: Twenty times the default recursion limit, in 40 KB (under this gateway's 64 KiB answer limit).
DEEP = 20_000

# (id, behaviour factory, client statuses, attempt status, attempt error code)
FAULTS: list[tuple[str, Callable[[], fu.Behaviour], int | tuple[int, ...], str, str | None]] = [
    ("reset before headers", fu.reset, 502, "failed", "connection_error"),
    ("reset mid-body", fu.reset_mid_body, 502, "failed", "connection_error"),
    ("slow headers", lambda: fu.hang(30), TIMED_OUT, "timeout", "timeout"),
    ("slow body", lambda: fu.slow_body(0.2, 50), TIMED_OUT, "timeout", "timeout"),
    ("200 not JSON", lambda: fu.raw(200, b"not json at all", "text/plain"), 502, "failed",
     "invalid_upstream_response"),
    ("200 truncated JSON", lambda: fu.raw(200, b'{"created": 1, "data": [{"b64_json": "iVBO'), 502, "failed",
     "invalid_upstream_response"),
    ("200 without data", lambda: fu.raw(200, b'{"created": 1}'), 502, "failed", "invalid_upstream_response"),
    ("HTML 502 page", lambda: fu.raw(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
     502, "failed", None),
    ("200 nested deep in data", lambda: fu.raw(200, b'{"created":1,"data":[' + nested(DEEP) + b"]}"), 502, "failed",
     "invalid_upstream_response"),
    ("200 nested deep in an unknown field", lambda: fu.raw(200, b'{"data":[],"x":' + nested(DEEP) + b"}"), 502,
     "failed", "invalid_upstream_response"),
    ("200 with invalid UTF-8 where msgspec skips", lambda: fu.raw(
        200, b'{"created":1,"data":[{"b64_json":"QUFB","x":"\xff"}],"\xfe":1}'), 502, "failed",
     "invalid_upstream_response"),
    ("500 with an error nested deep", lambda: fu.raw(500, b'{"error":{"message":"x","details":' + nested(DEEP)
                                                      + b"}}"), 502, "failed", None),
    ("body over the limit", lambda: fu.oversized(4 * LIMIT_BYTES), 502, "failed", "upstream_response_too_large"),
    ("chunked body over the limit", lambda: fu.oversized(4 * LIMIT_BYTES, declare_length=False), 502, "failed",
     "upstream_response_too_large"),
]


@pytest.mark.parametrize("fault, behaviour, status, attempt_status, code", FAULTS, ids=[f[0] for f in FAULTS])
async def test_upstream_fault(gateway: TestClient, fake: fu.FakeUpstream, fault: str,
                              behaviour: Callable[[], fu.Behaviour], status: int | tuple[int, ...],
                              attempt_status: str,
                              code: str | None) -> None:
    # Enough copies that a retry of the same target meets the same fault.
    fake.script("gpt-image-1", *(behaviour() for _ in range(20)))
    got, body, _ = await _request_and_check_cleanup(gateway)
    assert got in (status if isinstance(status, tuple) else (status,)), body
    assert_error_shape(body)
    attempts = body["extra"]["routing"]["attempts"]
    sent = [r for r in fake.received if r.body.get("model") == "gpt-image-1"]
    assert attempts, body
    if attempt_status == "timeout":
        # A timed-out attempt may end before the upstream even read the request (a loaded machine).
        assert len(sent) <= len(attempts), (len(sent), attempts)
    else:  # every upstream call is listed, and nothing else
        assert len(attempts) == len(sent), (len(sent), attempts)
    for attempt in attempts:
        assert attempt["status"] == attempt_status
        assert attempt["target"].startswith("openai-main") and attempt["model"] == "openai/gpt-image-1"
        if code is not None:
            assert attempt["error_code"] == code


#: Room for answers past the skeleton threshold (64 KiB), and a limit at which inflating a bomb
#: in one call held the loop for about half a second here.
BOMB_LIMIT_BYTES = 64 << 20


@pytest.fixture
async def roomy_gateway(aiohttp_client: Callable[..., Awaitable[TestClient]], fake: fu.FakeUpstream) -> TestClient:
    # Inflating 64 MiB takes a quarter of a second of CPU: more than 0.5 s on a busy machine.
    limits = f"""
server:
  max_upstream_body_bytes: {BOMB_LIMIT_BYTES}
router:
  attempt_timeout_s: 30
  deadline_s: 60
"""
    return await aiohttp_client(create_app(parse_config(base_config_yaml(fake.url, limits), env={})))  # type: ignore[attr-defined]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
@pytest.mark.parametrize("status", [200, 500], ids=["answer", "error"])
async def test_compression_bomb_is_refused_without_holding_the_loop(roomy_gateway: TestClient, fake: fu.FakeUpstream,
                                                                     encoding: str, status: int) -> None:
    """An answer that inflates to four times the limit (256 MiB from about 260 KB) is refused as
    it inflates, a slice per loop turn: the loop-stall guard fails the test otherwise."""
    bomb = fu.compression_bomb(4 * BOMB_LIMIT_BYTES, encoding)
    assert len(bomb) < BOMB_LIMIT_BYTES // 200
    sent_as = "deflate" if encoding == "deflate-raw" else encoding
    fake.script("gpt-image-1", *(fu.compressed(status, bomb, sent_as) for _ in range(20)))
    got, body, _ = await _request_and_check_cleanup(roomy_gateway)
    assert got == 502, body
    attempts = body["extra"]["routing"]["attempts"]
    assert [a["error_code"] for a in attempts] == ["upstream_response_too_large"]  # final: not retried


@pytest.mark.parametrize("stray", [b"\xff\xfe", b"\x00", b"\x1b[2J"], ids=["invalid utf-8", "NUL", "escape sequence"])
async def test_an_answer_with_bytes_outside_base64_goes_to_the_next_target(roomy_gateway: TestClient,
                                                                           fake: fu.FakeUpstream, stray: bytes) -> None:
    """Past 64 KiB the base64 is checked by byte class, not by msgspec: bytes no JSON parser
    accepts must fail the attempt (retryable), never reach the client as a 200."""
    bad = b'{"created":1,"data":[{"b64_json":"' + b"QUFB" * 20_000 + stray + b"QUFB" * 100 + b'"}]}'
    fake.script("gpt-image-1", *(fu.raw(200, bad) for _ in range(20)))
    async with asyncio.timeout(HUNG_AFTER_S):
        resp = await roomy_gateway.post("/v1/images/generations", headers=AUTH,
                                        json={**BODY, "extra": {"fallbacks": ["openai/gpt-image-1-mini"]}})
        body = await resp.json()  # whatever the status, the client gets JSON
    assert resp.status == 200
    attempts = body["extra"]["routing"]["attempts"]
    assert attempts[0]["status"] == "failed" and attempts[0]["error_code"] == "invalid_upstream_response"
    assert attempts[-1]["status"] == "succeeded" and attempts[-1]["model"] == "openai/gpt-image-1-mini"


async def test_html_error_page_is_reported_not_parsed(gateway: TestClient, fake: fu.FakeUpstream) -> None:
    fake.script("gpt-image-1", *(fu.raw(502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html")
                                 for _ in range(20)))
    _, body, _ = await _request_and_check_cleanup(gateway)
    attempt = body["extra"]["routing"]["attempts"][0]
    assert attempt["http_status"] == 502
    assert "502 Bad Gateway" in attempt["error_message"]


async def test_connection_refused(aiohttp_client: Callable[..., Awaitable[TestClient]]) -> None:
    config = parse_config(base_config_yaml(_closed_port_url(), LIMITS), env={})
    client = await aiohttp_client(create_app(config))
    gauge_before = in_flight()
    async with asyncio.timeout(HUNG_AFTER_S):
        resp = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
        body = await resp.json()
    assert resp.status == 502
    assert_error_shape(body)
    attempts = body["extra"]["routing"]["attempts"]
    assert attempts and all(a["status"] == "failed" and a["error_code"] == "connection_error" for a in attempts)
    assert in_flight() == gauge_before
    assert client.server.app[HTTP_CLIENT].in_use == 0


async def test_429_with_retry_after_beyond_the_deadline(gateway: TestClient, fake: fu.FakeUpstream) -> None:
    """The gateway must not sleep 30 s inside a 1.5 s deadline: it answers 429 at once."""
    fake.script("gpt-image-1", *(fu.error(429, "rate_limit_exceeded", "Rate limit reached",
                                          type="requests", headers={"retry-after": "30"}) for _ in range(20)))
    status, body, headers = await _request_and_check_cleanup(gateway)
    assert status == 429
    assert_error_shape(body)
    assert body["error"]["code"] == "rate_limit_exceeded"
    attempts = body["extra"]["routing"]["attempts"]
    assert len(attempts) == len([r for r in fake.received if r.body.get("model") == "gpt-image-1"]) >= 1
    assert all(a["http_status"] == 429 for a in attempts if a["status"] == "failed")
    assert int(headers["retry-after"]) >= 1


@pytest.mark.parametrize("fault", [fu.reset, lambda: fu.raw(200, b'{"data":' + nested(DEEP) + b"}"),
                                   lambda: fu.raw(503, b'{"error":{"details":' + nested(DEEP) + b"}}")],
                         ids=["reset", "deeply nested answer", "deeply nested error"])
async def test_fault_then_fallback_lists_both_attempts(gateway: TestClient, fake: fu.FakeUpstream,
                                                       fault: Callable[[], fu.Behaviour]) -> None:
    fake.script("gpt-image-1", *(fault() for _ in range(20)))
    async with asyncio.timeout(HUNG_AFTER_S):
        resp = await gateway.post("/v1/images/generations",
                                  json={**BODY, "extra": {"fallbacks": ["openai/gpt-image-1-mini"]}}, headers=AUTH)
        body = await resp.json()
    assert resp.status == 200
    attempts = body["extra"]["routing"]["attempts"]
    assert attempts[-1]["status"] == "succeeded" and attempts[-1]["model"] == "openai/gpt-image-1-mini"
    assert all(a["status"] == "failed" for a in attempts[:-1]) and len(attempts) >= 2
