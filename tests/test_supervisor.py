"""The lean supervisor of ``serve --workers N`` (gateway/supervisor.py): what it loads, and the
metric files it removes when a worker dies. What it does (start, restart, reload, stop) is in
tests/test_server_workers.py and tests/test_reload_workers.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.metrics_dir import mark_process_dead
from tests.conftest import base_config_yaml
from tests.gateway_process import GatewayProcess

REPO = Path(__file__).resolve().parent.parent

#: What a worker needs and the supervisor must not load: the app and its libraries, and the
#: modules that bring OpenSSL (asyncio imports ssl, hashlib and secrets load libcrypto).
HEAVY = ("asyncio", "ssl", "_ssl", "hashlib", "aiohttp", "prometheus_client", "msgspec", "yaml", "uvloop",
         "gateway.config", "gateway.app", "gateway.control", "typing")


def test_the_supervisor_imports_none_of_the_app() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys, gateway.supervisor; print(' '.join(sys.modules))"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "gateway.supervisor" in loaded
    assert not [m for m in HEAVY if m in loaded]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
async def test_serve_becomes_a_supervisor_that_loads_no_extension_of_the_app(tmp_path: Path, upstream: Any) -> None:
    """``opengateway serve --workers 2`` checks the config, then replaces itself by the supervisor:
    same pid, and none of the compiled modules the workers load (OpenSSL, aiohttp, msgspec, YAML,
    uvloop) mapped in it, whatever it imported while it runs."""
    config = tmp_path / "config.yaml"
    config.write_text(base_config_yaml(upstream.url))
    gateway = await GatewayProcess.start(config, "--workers", "2")
    try:
        await gateway.wait_for_lines(r"OpenGateway listening on http://[0-9.:]+$", count=2)
        pid = gateway.process.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert any(b"gateway.supervisor" in part for part in cmdline)
        assert b"-S" in cmdline  # without site: no .pth files, no editable-install finders
        maps = Path(f"/proc/{pid}/maps").read_text()
        for library in ("_ssl", "libssl", "libcrypto", "aiohttp", "msgspec", "_yaml", "uvloop", "multidict"):
            assert library not in maps, library
        # And a worker does load them (the check above can see them).
        worker = int((await gateway.wait_for_lines(r"worker 1 started \(pid (\d+)\)"))[0].group(1))
        assert "msgspec" in Path(f"/proc/{worker}/maps").read_text()
    finally:
        await gateway.close()


def test_a_dead_workers_live_gauges_go_as_prometheus_client_removes_them(tmp_path: Path) -> None:
    """prometheus_client's multiprocess mode: a process that died still counts in the totals of
    its counters, histograms and non-live gauges; its files of the ``live*`` gauge modes are
    removed by ``mark_process_dead`` (https://prometheus.github.io/client_python/multiprocess/,
    and https://github.com/prometheus/client_python/pull/794 for "any multiprocess mode whose
    name starts with live"). The supervisor's own version, which does not import the library,
    must remove the same files: both are run on the same directory's contents here."""
    from prometheus_client import Gauge
    from prometheus_client import multiprocess

    names = []
    for pid in (7, 77, 177, 1077):
        names += [f"counter_{pid}.db", f"histogram_{pid}.db", f"summary_{pid}.db"]
        names += [f"gauge_{mode}_{pid}.db" for mode in Gauge._MULTIPROC_MODES]
    names.append("gauge_livesum_77x.db")
    results = []
    for remove in (mark_process_dead, lambda pid, path: multiprocess.mark_process_dead(pid, path)):
        directory = tmp_path / f"run{len(results)}"
        directory.mkdir()
        for name in names:
            (directory / name).write_bytes(b"")
        remove(77, str(directory))
        results.append(sorted(os.listdir(directory)))
    assert results[0] == results[1]
    assert "gauge_livesum_77.db" not in results[0] and "gauge_livesum_177.db" in results[0]
    assert "counter_77.db" in results[0] and "gauge_max_77.db" in results[0]
