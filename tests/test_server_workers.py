"""``opengateway serve --workers 2``: real processes on one port, a killed worker replaced, and
``/metrics`` summing every worker's requests (the dead one's included) through the multiprocess
directory the supervisor sets up.

Which worker accepts a connection is the kernel's choice, so the test decides it: it stops
(SIGSTOP) every worker but one while it sends that worker's share of the requests.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH, base_config_yaml
from tests.gateway_process import GatewayProcess

ROUTE = "/v1/images/generations"
WORKER_STARTED = r"worker (\d+) started \(pid (\d+)\)"


def requests_total(families: Any) -> float:
    return sum(s.value for f in families for s in f.samples
               if s.name == "opengateway_requests_total" and s.labels.get("http_route") == ROUTE)


async def send(url: str, count: int) -> None:
    # A new connection per request, so that the worker chosen by the test accepts each one.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for i in range(count):
            async with session.post(f"{url}/v1/images/generations", headers=AUTH,
                                    json={"model": "openai/gpt-image-1", "prompt": f"p{i}"}) as response:
                assert response.status == 200, await response.text()


async def send_through(process_pids: list[int], only: int, url: str, count: int) -> None:
    """Send ``count`` requests while every worker but ``only`` is stopped."""
    others = [pid for pid in process_pids if pid != only]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        await send(url, count)
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def counted_by(metrics_dir: Path, pid: int, scratch: Path) -> float:
    """One worker's own total, read from its file in the multiprocess directory."""
    scratch.mkdir()
    shutil.copy(metrics_dir / f"counter_{pid}.db", scratch)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return requests_total(registry.collect())


@pytest.fixture
async def supervisor(tmp_path: Path, upstream: Any) -> Any:
    config = tmp_path / "config.yaml"
    config.write_text(base_config_yaml(upstream.url))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over from an earlier run")  # must be emptied
    process = await GatewayProcess.start(config, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    yield process, metrics_dir
    await process.close()


async def test_two_workers_share_the_port_restart_and_sum_their_metrics(supervisor: Any, tmp_path: Path) -> None:
    gateway, metrics_dir = supervisor
    url = await gateway.url()
    started = await gateway.wait_for_lines(WORKER_STARTED, count=2)
    await gateway.wait_for_lines(r"OpenGateway listening on http://[0-9.:]+$", count=2)
    first, second = (int(m.group(2)) for m in started)
    assert not (metrics_dir / "counter_1.db").exists()

    await send_through([first, second], first, url, 3)
    await send_through([first, second], second, url, 4)

    os.kill(first, signal.SIGKILL)
    await gateway.wait_for_lines(rf"worker 1 \(pid {first}\) died \(signal 9\); restarting in")
    restarted = await gateway.wait_for_lines(WORKER_STARTED, count=3)
    replacement = int(restarted[2].group(2))
    assert restarted[2].group(1) == "1" and replacement not in (first, second)
    await gateway.wait_for_lines(r"OpenGateway listening on http://[0-9.:]+$", count=3)
    await send_through([replacement, second], replacement, url, 2)

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        families = list(text_string_to_metric_families(await response.text()))
    assert requests_total(families) == 3 + 4 + 2
    by_worker = [counted_by(metrics_dir, pid, tmp_path / f"w{pid}") for pid in (first, second, replacement)]
    assert by_worker == [3, 4, 2]

    gateway.signal(signal.SIGTERM)
    assert await gateway.wait() == 0
    assert "all workers stopped" in gateway.log()
