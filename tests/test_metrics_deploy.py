"""deploy/: the alert rules pass promtool, and every metric the rules, the Grafana dashboard and
the documentation name is one the gateway really exports (read from its /metrics)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/alerts.yml"
SCRAPE = ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/opengateway.json"
METRICS_PAGE = ROOT / "docs/observability/metrics.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
_METRIC = re.compile(r"\bopengateway_[a-z0-9_]+")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if not os.path.exists(PROMTOOL) and not os.environ.get("CI"):
        pytest.skip("promtool is not installed (Debian package prometheus; CI installs it)")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    rules = promtool("check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = promtool("check", "config", str(SCRAPE))
    assert config.returncode == 0, config.stdout + config.stderr


def test_alerts_fire_on_the_figures_they_watch() -> None:
    """deploy/prometheus/alerts_test.yml: burn rate, all targets of a model down, cost rate."""
    result = promtool("test", "rules", str(RULES.with_name("alerts_test.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


async def exported_names(client: Any) -> tuple[set[str], set[str]]:
    """(every sample name /metrics can show, the metric family names) of the real app."""
    await client.post("/v1/images/generations", headers=AUTH, json={"model": "openai/gpt-image-1", "prompt": "x"})
    text = await (await client.get("/metrics")).text()
    samples, families = set(), set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        samples.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        samples.update(s.name for s in family.samples)
    return samples, families


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])] + [
        v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]


async def test_every_metric_used_in_deploy_is_exported(make_client: Any) -> None:
    samples, _ = await exported_names(await make_client())
    used_in_rules = set(_METRIC.findall(RULES.read_text()))
    used_in_dashboard = {m for expr in dashboard_exprs() for m in _METRIC.findall(expr)}
    assert len(used_in_rules) >= 6 and len(used_in_dashboard) >= 15
    assert used_in_rules - samples == set()
    assert used_in_dashboard - samples == set()


async def test_docs_list_every_metric(make_client: Any) -> None:
    _, families = await exported_names(await make_client())
    ours = {f for f in families if f.startswith("opengateway_")}
    assert len(ours) >= 16
    section = METRICS_PAGE.read_text()
    missing = sorted(f for f in ours if not re.search(rf"`{f}(_total|_seconds|_bytes)?`", section)
                     and f"`{f}" not in section)
    assert not missing, f"metrics missing from docs/observability/metrics.md: {missing}"


def test_grafana_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
