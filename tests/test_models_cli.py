"""``opengateway models`` and the shutdown warnings of ``check-config``, as an operator runs them.

Dates are the providers' (tests/test_lifecycle.py cites the pages): on 2026-12-02 OpenAI has shut
down gpt-image-1 (2026-10-23) and gpt-image-1-mini and gpt-image-1.5 (2026-12-01); Azure retires
gpt-image-1.5 on 2027-06-16.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec

from gateway.catalog import openai_image_models

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs/configuration.md").read_text()
TODAY = "2026-12-02"
#: The variables the configuration reference's example config references (any value: nothing is called).
CREDENTIALS = {"OPENAI_API_KEY": "sk-example", "AZURE_OPENAI_API_KEY": "az-example"}
#: The example config (then in the README) before issue 14, which routed to and fell back to retired models.
OLD_EXAMPLE = """
keys:
  - name: team-a
    hash: "sha256:1b5226a148719344d097e0c22b761312e37dc889b98d7fc98075062fca875677"
providers:
  - {id: openai-global, plugin: openai, settings: {api_key: "${OPENAI_API_KEY}"}}
  - id: azure-sweden
    plugin: azure_openai
    settings: {endpoint: "https://my-resource.openai.azure.com", api_key: "${AZURE_OPENAI_API_KEY}",
               deployments: {openai/gpt-image-1: gpt-image-1}}
models:
  openai/gpt-image-1:
    targets: [openai-global, azure-sweden]
    fallbacks: [openai/gpt-image-1-mini]
  openai/gpt-image-1-mini: {targets: [openai-global]}
"""


def reference_example() -> str:
    """The example config of the configuration reference (docs/configuration.md), as printed there."""
    [example] = [b for b in re.findall(r"```yaml\n(.*?)```", REFERENCE, re.S) if "providers:" in b and "models:" in b]
    return example


def run(*args: str, today: str = TODAY, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENGATEWAY_CONFIG", "OPENAI_API_KEY")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                          env={**environ, "OPENGATEWAY_TODAY": today, **env})


def test_models_check_on_the_reference_example_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(reference_example())
    # Today: nothing it routes to or falls back to is past its shutdown.
    result = run("models", "--check", "--config", str(path), **CREDENTIALS)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("openai/gpt-image-2", "openai-global", "active"), ("openai/gpt-image-2", "azure-sweden", "active"),
        ("openai/gpt-image-1.5", "azure-sweden", "active")]
    assert "2027-06-16" in result.stdout and "2027-10-21" in result.stdout
    # 27 days before Azure retires gpt-image-1.5: a warning, not a failure.
    result = run("models", "--check", "--config", str(path), today="2027-05-20", **CREDENTIALS)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "warning: model openai/gpt-image-1.5 on azure-sweden (azure_openai) shuts down on 2027-06-16, in 27 days"]
    # After it: the check fails, naming the shut-down deployment.
    result = run("models", "--check", "--config", str(path), today="2027-06-17", **CREDENTIALS)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "past shutdown: model openai/gpt-image-1.5 on azure-sweden (azure_openai) was shut down on 2027-06-16; "
        "requests for it are skipped on this target (404 model_not_found once no target serves it)",
        "1 deployment(s) of configured models past their shutdown"]


def test_models_check_on_the_deployed_example_config() -> None:
    # deploy/config.example.yaml is the container image's config (and the Kubernetes ConfigMap's).
    from tests.test_deploy import secret_example_env
    path = ROOT / "deploy" / "config.example.yaml"
    result = run("models", "--check", "--json", "--config", str(path), **secret_example_env())
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    models = msgspec.json.decode(result.stdout)
    assert [(m["id"], [t["status"] for t in m["targets"]]) for m in models] == [
        ("openai/gpt-image-2", ["active"]), ("openai/gpt-image-2.5-flare", ["active"])]


def test_models_check_reports_the_shut_down_models_of_the_old_example(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(OLD_EXAMPLE)
    result = run("models", "--check", "--config", str(path), **CREDENTIALS)
    assert result.returncode == 1
    failing = [line for line in result.stderr.splitlines() if line.startswith("past shutdown: ")]
    assert [re.match(r"past shutdown: model (\S+) on (\S+) .* on (\S+?);", f).groups() for f in failing] == [
        ("openai/gpt-image-1", "openai-global", "2026-10-23"), ("openai/gpt-image-1", "azure-sweden", "2026-10-23"),
        ("openai/gpt-image-1-mini", "openai-global", "2026-12-01")]
    assert "'openai/gpt-image-2.5-sunburst' or 'openai/gpt-image-2.5-flare'" in failing[0]
    # Pinned, the same models are reported but no longer fail the check.
    path.write_text(OLD_EXAMPLE.replace("    targets: [openai-global, azure-sweden]",
                                        "    targets: [openai-global, azure-sweden]\n    pinned: true")
                    .replace("{targets: [openai-global]}", "{targets: [openai-global], pinned: true}"))
    result = run("models", "--check", "--config", str(path), **CREDENTIALS)
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.splitlines()) == 3 and "it is pinned" in result.stderr
    assert "shut down (pinned)" in result.stdout


def test_models_json_without_a_config_lists_the_catalogue() -> None:
    result = run("models", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["id"]: m for m in msgspec.json.decode(result.stdout)}
    assert set(models) == set(openai_image_models())  # the local provider serves the whole catalogue
    gpt1 = models["openai/gpt-image-1"]
    assert (gpt1["configured"], gpt1["pinned"], gpt1["price"]["image_output"]) == (False, False, 40.0)
    [target] = gpt1["targets"]
    assert target == {"target": "local", "plugin": "local", "region": "local", "status": "shut_down",
                      "deprecated": "2026-04-22", "shutdown": "2026-10-23", "days_left": -40,
                      "successors": ["openai/gpt-image-2.5-sunburst", "openai/gpt-image-2.5-flare"],
                      "source": "https://developers.openai.com/api/docs/deprecations"}
    assert models["openai/gpt-image-2"]["snapshots"] == ["openai/gpt-image-2-2026-04-21"]
    assert models["openai/gpt-image-2-2026-04-21"]["snapshot_of"] == "openai/gpt-image-2"
    assert models["openai/gpt-image-2"]["targets"][0]["status"] == "active"
    assert models["openai/gpt-image-2.5-flare"]["capabilities"]["qualities"][-1] == "max"
    # On 2026-09-01 the mini's shutdown was announced, not yet due.
    result = run("models", "--json", today="2026-09-01")
    mini = {m["id"]: m for m in msgspec.json.decode(result.stdout)}["openai/gpt-image-1-mini"]
    assert mini["targets"][0]["status"] == "deprecated" and mini["targets"][0]["days_left"] == 91
    # Without --check there is no verdict, whatever the dates.
    assert run("models").returncode == 0


def test_check_config_warns_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(OLD_EXAMPLE)
    result = run("check-config", str(path), **CREDENTIALS)
    assert result.returncode == 0  # a warning: the file itself is valid
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith(f"{path}: warning: line ") for w in warnings)
    assert "line 13: model openai/gpt-image-1 on openai-global (openai) was shut down on 2026-10-23" in warnings[0]
    assert "line 15: model openai/gpt-image-1-mini on openai-global" in warnings[2]
    assert result.stdout.startswith(f"{path}: OK")
    path.write_text(reference_example())
    result = run("check-config", str(path), **CREDENTIALS)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_wrong_day_is_refused() -> None:
    result = run("models", "--today", "2026-13-01")
    assert result.returncode == 2 and "--today: expected YYYY-MM-DD" in result.stderr
    result = run("models", today="tomorrow")
    assert result.returncode == 2 and "OPENGATEWAY_TODAY: expected YYYY-MM-DD" in result.stderr


def test_the_readme_quick_start_names_no_retired_model() -> None:
    quick = README.split("<!-- section: quick-start -->", 1)[1].split("<!-- /section: quick-start -->", 1)[0]
    code = "\n".join(re.findall(r"```\w*\n(.*?)```", quick, re.S))
    named = set(re.findall(r"\bopenai/[a-z0-9.-]+", code))
    assert named == {"openai/gpt-image-2", "openai/gpt-image-2.5-flare"}
    catalog = openai_image_models()
    for model in named:
        assert catalog[model].lifecycle["openai"].shutdown is None, model
