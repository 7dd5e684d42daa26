"""The official openai Node SDK (``tests/node``, installed by ``.ci/run`` with npm) as a client of the
real app: generations, streams, edits (one image and a list), a stream that fails mid-way, and a
400 in OpenAI's words. Each scenario is one ``node tests/node/sdk.mjs`` run, whose outcome is one
JSON line."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.conftest import GATEWAY_KEY
from tests.fake_upstream import FakeUpstream, streamed

NODE_DIR = Path(__file__).parent / "node"
NODE = shutil.which("node")


def _require_sdk() -> str:
    if NODE is None or not (NODE_DIR / "node_modules" / "openai").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or the openai npm package is missing, and CI is set: .ci/run installs them "
                        "(cd tests/node && npm ci)")
        pytest.skip("node or tests/node/node_modules is missing (cd tests/node && npm ci)")
    return NODE


async def run(client: Any, scenario: str) -> dict[str, Any]:
    node = _require_sdk()
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "sdk.mjs"), str(client.make_url("/v1")), GATEWAY_KEY, scenario,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return msgspec.json.decode(out.splitlines()[-1])


async def test_generate(client: Any) -> None:
    outcome = await run(client, "generate")
    assert outcome["images"] == 1 and outcome["attempts"][0]["status"] == "succeeded"


async def test_stream(client: Any) -> None:
    events = (await run(client, "stream"))["events"]
    assert [e["type"] for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    done = events[-1]
    assert done["extra"]["routing"]["attempts"][0]["status"] == "succeeded" and done["usage"]["output_tokens"] == 1056


async def test_edit_with_a_list_of_images(client: Any, upstream: FakeUpstream) -> None:
    outcome = await run(client, "edit")
    assert outcome["images"] == 1 and outcome["attempts"][0]["status"] == "succeeded"
    assert [f[0] for f in upstream.received[-1].files] == ["image[]", "image[]"]


async def test_streaming_edit(client: Any) -> None:
    events = (await run(client, "edit-stream"))["events"]
    assert [e["type"] for e in events] == ["image_edit.partial_image", "image_edit.completed"]


async def test_a_stream_that_fails_mid_way_raises_with_the_attempts(client: Any, upstream: FakeUpstream) -> None:
    upstream.script("gpt-image-1", streamed(fail_after=1))
    outcome = await run(client, "stream-error")
    assert outcome["raised"] is True and outcome["seen"] == ["image_generation.partial_image"]
    assert outcome["error"]["extra"]["routing"]["attempts"][0]["status"] == "failed"


async def test_a_bad_request(client: Any) -> None:
    outcome = await run(client, "bad-request")
    assert (outcome["status"], outcome["code"], outcome["param"], outcome["kind"]) == (
        400, "invalid_value", "quality", "BadRequestError")
