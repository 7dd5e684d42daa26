"""The benchmark's quick mode runs end to end, so that bench/run.py cannot rot.

Skipped unless nginx and wrk are installed or CI is set (CI installs them; bench/run.py itself
installs them with apt-get when they are missing, so under CI this test runs, never skips).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.model_lifecycle import TODAY_ENV

REPO = Path(__file__).resolve().parent.parent


def _have(name: str) -> bool:
    return bool(shutil.which(name) or any(
        os.access(os.path.join(d, name), os.X_OK) for d in ("/usr/sbin", "/usr/local/sbin", "/sbin")))


pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not (_have("nginx") and _have("wrk")),
    reason="needs nginx and wrk on PATH (or CI set, where bench/run.py installs them)",
)


def test_bench_quick_prints_every_scenario(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    # On the real date, not the suite's fixed one (tests/conftest.py): the bench must run today.
    env = {k: v for k, v in os.environ.items() if k != TODAY_ENV}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(out_json)],
        cwd=REPO, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, env=env,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    for scenario in ("S1", "S2", "S3", "S4", "S5"):
        assert re.search(rf"^{scenario} .*\S", proc.stdout, re.M), f"no {scenario} row\n{report}"
    # Every target was measured in S1: the direct, nginx and gateway req/s cells are numbers.
    s1 = next(line for line in proc.stdout.splitlines() if line.startswith("S1") and " req/s " in line)
    cells = re.split(r"\s{2,}", s1)
    assert all(re.fullmatch(r"[\d,]+", c) for c in cells[2:5]), s1
    assert out_json.exists()
