"""The command line as an operator uses it: real processes, real ports."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import msgspec
import pytest
import urllib.request
from PIL import Image

SEED = {"model": "openai/gpt-image-2", "prompt": "A small red cube on a white background.",
        "size": "1024x1024", "quality": "medium"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("""providers:
  - id: a
    plugin: not-installed
  - id: b
    plugin: openai
    settings: {api_key: sk-x, colour: red}
models:
  openai/gpt-image-1: {targets: [c]}
""")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert f"{path}:line 8: $.models.openai/gpt-image-1.targets[0]: no provider with id 'c'" in result.stderr
    # Plugin problems come from a second pass once the file itself is consistent.
    path.write_text("""providers:
  - id: a
    plugin: not-installed
  - id: b
    plugin: openai
    settings: {api_key: sk-x, colour: red}
""")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert "line 3: $.providers[0].plugin: no provider plugin named 'not-installed'" in result.stderr
    assert "$.providers[1].settings.colour" in result.stderr and "line 6" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("providers:\n  - {id: local, plugin: local}\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_refuses_public_address_without_keys() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0", env={"OPENGATEWAY_API_KEY": ""})
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr


def test_plugins_lists_builtin_providers() -> None:
    result = run_cli("plugins")
    assert result.returncode == 0
    # Every provider that ships, the four of issue 17 (google, bfl, stability, fal) among them.
    for name in ("openai", "azure_openai", "local", "google", "bfl", "stability", "fal"):
        assert re.search(rf"^{name}\s+opengateway \S+\s+plugins\.{name}:\w+\s+ok$", result.stdout, re.M), result.stdout


@pytest.fixture
def offline_gateway() -> Iterator[str]:
    """`opengateway serve` exactly as the quick start runs it: no config, no provider key."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENGATEWAY_CONFIG")}
    env["OPENGATEWAY_API_KEY"] = "og-quickstart"
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    drain = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    try:
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                drain.start()  # keep reading so the child never blocks on a full pipe
                assert any("embedded local provider" in line for line in lines)
                yield found.group(1)
                break
        else:
            pytest.fail("gateway did not start:\n" + "".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        if drain.is_alive() or drain.ident is not None:
            drain.join(timeout=5)
        proc.stdout.close()


def test_quick_start_seed_curl_offline(offline_gateway: str) -> None:
    request = urllib.request.Request(
        offline_gateway + "/v1/images/generations", data=msgspec.json.encode(SEED), method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer og-quickstart"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        body = msgspec.json.decode(resp.read())
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert image.format == "PNG" and image.size == (1024, 1024)
    assert body["usage"]["output_tokens_details"]["image_tokens"] > 0
    assert body["extra"]["routing"]["attempts"][0] == {
        **body["extra"]["routing"]["attempts"][0], "provider": "local", "status": "succeeded"}
