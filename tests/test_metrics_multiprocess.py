"""Several worker processes, one multiprocess directory: /metrics of any one shows the sum.

Two real ``python -m gateway serve`` processes share PROMETHEUS_MULTIPROC_DIR, one fake upstream
and one access-log file, as ``serve --workers N`` runs them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.conftest import GATEWAY_KEY, base_config_yaml
from tests.fake_upstream import error
from tests.metrics_reading import G1, MINI, ROUTE, ROUTER, Delta, parse, total

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


async def start_worker(config_path: Path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", "0",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen = b""
    for _ in range(200):  # bounded: start-up logs a handful of lines
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=60)
        seen += line
        if not line:
            break
        if m := _LISTENING.search(line):
            asyncio.get_running_loop().create_task(_drain(proc.stderr))
            return proc, int(m.group(1))
    proc.kill()
    await proc.wait()
    raise AssertionError(f"the worker did not start: {seen.decode(errors='replace')}")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


@pytest.fixture
async def workers(upstream: Any, tmp_path: Path) -> AsyncIterator[tuple[list[int], Path, Path]]:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    log_path = tmp_path / "access.log"
    config = tmp_path / "gateway.yaml"
    config.write_text(base_config_yaml(upstream.url, ROUTER + f'log: {{destination: "{log_path}"}}\n'))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROMETHEUS_", "OPENGATEWAY_", "OPENAI_")) or k == "OPENGATEWAY_TODAY"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    started = [await start_worker(config, env) for _ in range(2)]
    try:
        yield [port for _, port in started], log_path, metrics_dir
    finally:
        for proc, _ in started:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in started:
            await asyncio.wait_for(proc.wait(), timeout=60)


async def test_two_workers_add_up_exactly(upstream: Any, workers: tuple[list[int], Path, Path]) -> None:
    (port_a, port_b), log_path, metrics_dir = workers
    async with aiohttp.ClientSession() as http:
        async def scrape(port: int) -> Any:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                return parse(await resp.text())

        async def post(port: int) -> int:
            async with http.post(f"http://127.0.0.1:{port}{ROUTE}", headers=AUTH,
                                 json={"model": G1, "prompt": "A cube."}) as resp:
                await resp.read()
                return resp.status

        before = await scrape(port_a)
        assert [await post(port_a) for _ in range(3)] == [200, 200, 200]
        upstream.script("gpt-image-1", error(500))
        assert await post(port_b) == 200  # through the fallback
        upstream.script("gpt-image-1", error(500))
        upstream.script("gpt-image-1-mini", error(500))
        assert await post(port_b) == 502
        assert await post(port_b) == 200
        for port in (port_a, port_b):  # either worker answers with the merged totals
            d = Delta(before, await scrape(port))
            req = "opengateway_requests_total"
            assert d(req, http_route=ROUTE, gen_ai_request_model=G1, http_response_status_code="200") == 5
            assert d(req, http_route=ROUTE, gen_ai_request_model=G1, http_response_status_code="502") == 1
            assert d("opengateway_request_duration_seconds_count", http_route=ROUTE) == 6
            assert d("opengateway_upstream_attempts_total", gen_ai_request_model=G1, outcome="failed") == 2
            assert d("opengateway_upstream_attempts_total", gen_ai_request_model=MINI, outcome="failed") == 1
            assert d("opengateway_fallbacks_total", gen_ai_request_model=G1, gen_ai_response_model=MINI) == 1
            assert d("opengateway_images_generated_total") == 5
            assert d("opengateway_tokens_total", gen_ai_token_type="output", modality="image") == 5 * 1056
            # 4 x (20*5 + 1056*40) + (20*2 + 1056*8) per 1M tokens
            assert d("opengateway_cost_usd_total") == pytest.approx(4 * 0.04234 + 0.008488, abs=1e-9)
        after = await scrape(port_a)
    # Live gauges come from both processes: in-flight sums them (only the scrape itself is in flight).
    assert total(after, "opengateway_requests_in_flight") == 1
    assert total(after, "opengateway_build_info") == 1
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # one file per worker
    lines = [msgspec.json.decode(x) for x in log_path.read_bytes().splitlines()]
    assert sorted(x["status"] for x in lines if x["route"] == ROUTE) == [200] * 5 + [502]
