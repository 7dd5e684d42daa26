"""What a request can make the process keep after it has been answered (docs/security.md, "Limits
and timeouts": the memory bound per request). A request's record lives on in the dashboard's recent
requests and goes to the access log; every string in it that a client or an upstream chose is
bounded where it is stored (gateway/bounded.py), whatever was sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from gateway.appkeys import STATS
from gateway.bounded import MESSAGE_CHARS, NAME_CHARS
from tests.conftest import ADMIN, ADMIN_KEY, AUTH, eventually
from tests.fake_upstream import FakeUpstream, error

ROUTE = "/v1/images/generations"
#: The most one finished request's record may weigh, encoded (its attempts' bounded messages,
#: its bounded names, its usage and cost): a few kilobytes, whatever the request.
RECORD_BOUND_BYTES = 8 * 1024


async def test_huge_client_and_upstream_strings_are_kept_bounded(make_client: Any, upstream: FakeUpstream,
                                                                 tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    client = await make_client(ADMIN + f"log: {{destination: '{log}'}}\n")
    huge_model = "openai/" + "m" * 900_000  # within the 1 MiB body limit
    for _ in range(5):
        resp = await client.post(ROUTE, headers=AUTH, json={"model": huge_model, "prompt": "x"})
        assert resp.status in (400, 404)
    # An upstream whose error message is a megabyte (and whose code is 100 KB).
    upstream.script("gpt-image-1", error(400, code="c" * 100_000, message="upstream says " + "e" * 1_000_000))
    resp = await client.post(ROUTE, headers=AUTH, json={"model": "openai/gpt-image-1", "prompt": "x"})
    answered = await resp.json()
    assert resp.status == 400 and len(answered["error"]["message"]) < MESSAGE_CHARS + 100
    assert await eventually(lambda: log.exists() and len(log.read_text().splitlines()) == 6)

    records = list(client.app[STATS].recent)
    assert len(records) == 6
    for record in records:
        assert len(msgspec.json.encode(record)) < RECORD_BOUND_BYTES
    assert records[-1].model_asked is not None and len(records[-1].model_asked) < NAME_CHARS + 50
    assert records[-1].model_asked.endswith(f"({len(huge_model) - NAME_CHARS} more characters)")
    [attempt] = records[0].attempts
    assert attempt.error_message is not None and len(attempt.error_message) < MESSAGE_CHARS + 50
    for line in log.read_text().splitlines():
        assert len(line) < 4096  # one log line, not a megabyte
        json.loads(line)
    # The dashboard page that lists them stays small too.
    page = await client.get("/dashboard/data.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert page.status == 200 and len(await page.read()) < 64 * 1024
