"""The JSON access log: one line per request, no keys, the prompt only when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.conftest import AUTH, GATEWAY_KEY, UPSTREAM_KEY
from tests.fake_upstream import error

ROUTE = "/v1/images/generations"
PROMPT = "A small red cube, prompt marker 0c7e."


def read(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]


async def test_a_line_has_every_field(upstream: Any, make_client: Any, tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    client = await make_client(f"log: {{destination: '{log}'}}\n")
    resp = await client.post(ROUTE, headers={**AUTH, "x-opengateway-user-id": "<u1>", "x-request-id": "req-abc",
                                             "x-opengateway-session-id": "s1"},
                             json={"model": "openai/gpt-image-1", "prompt": PROMPT, "quality": "medium"})
    assert resp.status == 200
    (line,) = read(log)
    body = await resp.read()
    assert line == {
        "ts": line["ts"], "level": "info", "request_id": "req-abc", "method": "POST", "route": ROUTE,
        "status": 200, "latency_ms": line["latency_ms"], "upstream_latency_ms": line["upstream_latency_ms"],
        "key_name": "test", "user_id": "<u1>", "session_id": "s1", "client_ip": "127.0.0.1",
        "model_asked": "openai/gpt-image-1", "model": "openai/gpt-image-1",
        "model_served": "openai/gpt-image-1", "provider": "openai", "region": "global", "attempts": 1,
        "images": 1, "input_tokens": 20, "output_tokens": 1056, "cost_usd": 0.04234,
        "cost_unknown_reason": None, "possibly_billed_attempts": 0, "possibly_billed_usd": None,
        "idempotency": None, "request_bytes": line["request_bytes"], "response_bytes": len(body),
        "error_code": None}
    assert line["latency_ms"] >= line["upstream_latency_ms"] > 0
    assert line["ts"].endswith("Z") and line["ts"][10] == "T"
    text = log.read_text()
    assert GATEWAY_KEY not in text and UPSTREAM_KEY not in text and "0c7e" not in text


async def test_prompt_is_logged_only_when_opted_in(upstream: Any, make_client: Any, tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    client = await make_client(f"log: {{destination: '{log}', include_prompt: true}}\n")
    await client.post(ROUTE, headers=AUTH, json={"model": "openai/gpt-image-1", "prompt": PROMPT})
    (line,) = read(log)
    assert line["prompt"] == PROMPT


@pytest.mark.parametrize(("level", "expected"), [("info", [200, 502, 400]), ("warning", [502, 400]),
                                                 ("error", [502])])
async def test_level_filters_by_status(upstream: Any, make_client: Any, tmp_path: Path, level: str,
                                       expected: list[int]) -> None:
    log = tmp_path / "l.log"
    client = await make_client(f"router: {{max_attempts_per_target: 1}}\nlog: {{destination: '{log}', level: {level}}}\n")
    await client.post(ROUTE, headers=AUTH, json={"model": "openai/gpt-image-1", "prompt": "x"})
    upstream.script("gpt-image-1", error(500))
    await client.post(ROUTE, headers=AUTH, json={"model": "openai/gpt-image-1", "prompt": "x"})
    await client.post(ROUTE, headers=AUTH, json={"model": "openai/gpt-image-1", "prompt": "x", "n": 0})
    assert [line["status"] for line in read(log)] == expected


async def test_access_log_off(upstream: Any, make_client: Any, tmp_path: Path) -> None:
    log = tmp_path / "off.log"
    client = await make_client(f"server: {{access_log: false}}\nlog: {{destination: '{log}'}}\n")
    assert (await client.get("/healthz")).status == 200
    assert not log.exists()


async def test_stderr_by_default(upstream: Any, make_client: Any, capfd: pytest.CaptureFixture[str]) -> None:
    client = await make_client()
    resp = await client.get("/v1/models", headers={**AUTH, "x-request-id": "req-stderr-1"})
    assert resp.status == 200
    lines = [msgspec.json.decode(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    assert [x["status"] for x in lines if x["request_id"] == "req-stderr-1"] == [200]
