"""A client that disconnects cancels the upstream call: in the test server, and in the real
``python -m gateway serve`` process (which must ask aiohttp for handler cancellation itself)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import AUTH, base_config_yaml
from tests.fake_upstream import Behaviour, FakeUpstream
from tests.gateway_process import WAIT_S, GatewayProcess

BODY = {"model": "openai/gpt-image-1", "prompt": "A small red cube on a white background."}


def held(started: asyncio.Event, cancelled: asyncio.Event) -> Behaviour:
    """Signal ``started``, then hold the request until the gateway hangs up on it."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")
    return reply


async def disconnect_midway(upstream: FakeUpstream, session: aiohttp.ClientSession, url: str) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", held(started, cancelled))
    request = asyncio.create_task(session.post(url, json=BODY, headers=AUTH))
    await asyncio.wait_for(started.wait(), WAIT_S)
    request.cancel()  # the client goes away: its connection closes
    await asyncio.wait_for(cancelled.wait(), WAIT_S)
    assert upstream.cancelled == 1


async def test_a_disconnect_cancels_the_upstream_call(client: Any, upstream: FakeUpstream) -> None:
    await disconnect_midway(upstream, client.session, str(client.make_url("/v1/images/generations")))
    # The router let go of the target cleanly: the next request is served by it.
    resp = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
    assert resp.status == 200


async def test_the_served_process_cancels_too(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(base_config_yaml(upstream.url))
    gateway = await GatewayProcess.start(config)
    try:
        url = await gateway.url()
        async with aiohttp.ClientSession() as session:
            await disconnect_midway(upstream, session, f"{url}/v1/images/generations")
    finally:
        await gateway.close()
