"""SIGTERM drains: the real ``python -m gateway serve`` process, slow requests in flight through the
openai plugin to the fake upstream, then the signal. Every request in flight completes with 200,
new connections are refused, and the process exits 0; past drain_timeout_s it still exits 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.conftest import GATEWAY_KEY, base_config_yaml
from tests.fake_upstream import block
from tests.gateway_process import GatewayProcess

IN_FLIGHT = 4


def write_config(tmp_path: Path, upstream_url: str, server: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(base_config_yaml(upstream_url) + f"server:\n{server}")
    return path


@pytest.fixture
async def gateway_factory(tmp_path: Path, upstream: Any) -> Any:
    started: list[GatewayProcess] = []

    async def start(server: str = "  drain_timeout_s: 30\n", *args: str) -> GatewayProcess:
        process = await GatewayProcess.start(write_config(tmp_path, upstream.url, server), *args)
        started.append(process)
        return process
    yield start
    for process in started:
        await process.close()


async def refused(url: str) -> bool:
    """A new connection is refused or reset (never answered)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
            await response.read()
    except (aiohttp.ClientConnectionError, ConnectionError):
        return True
    return False


async def hold_requests(upstream: Any, url: str, count: int) -> tuple[asyncio.Task[list[Any]], asyncio.Event]:
    """``count`` image requests (the official SDK, one connection each) held at the upstream."""
    release = asyncio.Event()
    arrived = [asyncio.Event() for _ in range(count)]
    upstream.script("gpt-image-1", *(block(event, release) for event in arrived))
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=120)

    async def one(i: int) -> Any:
        return await client.images.with_raw_response.generate(model="openai/gpt-image-1", prompt=f"p{i}")

    async def all_then_close() -> list[Any]:
        try:
            return await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        finally:
            await client.close()
    task = asyncio.create_task(all_then_close())
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in arrived)), 60)
    return task, release


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_completes_requests_in_flight_and_refuses_new_ones(
        gateway_factory: Any, upstream: Any, workers: int) -> None:
    gateway = await gateway_factory("  drain_timeout_s: 30\n", "--workers", str(workers))
    url = await gateway.url()
    if workers > 1:
        await gateway.wait_for_lines(r"OpenGateway listening on http://[0-9.:]+$", count=workers)
    task, release = await hold_requests(upstream, url, IN_FLIGHT)

    gateway.signal(signal.SIGTERM)
    # Every process has closed its listening socket once each has logged this (and the
    # supervisor closes its own copy before it forwards the signal).
    await gateway.wait_for_lines(r"draining: listener closed", count=workers)
    assert await refused(url)
    assert not task.done()  # still held at the upstream

    release.set()
    responses = await task
    assert [r.http_response.status_code for r in responses] == [200] * IN_FLIGHT
    assert all(len(r.parse().data) == 1 for r in responses)
    assert await gateway.wait() == 0
    assert upstream.cancelled == 0


async def test_drain_timeout_bounds_the_wait_and_still_exits_0(gateway_factory: Any, upstream: Any) -> None:
    gateway = await gateway_factory("  drain_timeout_s: 0.5\n")
    url = await gateway.url()
    task, release = await hold_requests(upstream, url, 1)

    gateway.signal(signal.SIGTERM)
    assert await gateway.wait() == 0  # the upstream was never released: the drain gave up
    (outcome,) = await task
    assert isinstance(outcome, Exception)  # the connection closed without an answer
    release.set()
