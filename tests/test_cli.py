"""The command line as an operator uses it: real processes, real ports."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
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
    # The file's own problems and the plugins' come out of one run, in the file's order.
    assert result.stderr.splitlines() == [
        f"{path}:line 3: $.providers[0].plugin: no provider plugin named 'not-installed' is installed "
        "(installed: azure_openai, bfl, fal, google, local, openai, stability); install the distribution that provides it, e.g. "
        "`pip install <its package>`, and check `opengateway plugins`",
        f"{path}:line 6: $.providers[1].settings.colour: unknown field",
        f"{path}:line 8: $.models.openai/gpt-image-1.targets[0]: no provider with id 'c'",
        f"{path}: 3 problem(s)"]


def test_check_config_reports_an_unset_variable_and_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("""providers:
  - id: a
    plugin: openai
    settings:
      api_key: "${OG_TEST_UNSET_KEY}"
      colour: red
  - id: b
    plugin: openai
    settings: {api_key: "${OG_TEST_UNSET_OTHER}"}
models:
  openai/gpt-image-1: {targets: [c]}
server: {port: "${OG_TEST_UNSET_PORT}"}
cors: {allow_origins: ["https://app.example.com/"]}
bogus: 1
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OG_TEST_UNSET")}
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines == [
        f"{path}:line 5: $.providers[0].settings.api_key: environment variable OG_TEST_UNSET_KEY is not set",
        f"{path}:line 6: $.providers[0].settings.colour: unknown field",
        f"{path}:line 9: $.providers[1].settings.api_key: environment variable OG_TEST_UNSET_OTHER is not set",
        f"{path}:line 11: $.models.openai/gpt-image-1.targets[0]: no provider with id 'c'",
        f"{path}:line 12: $.server.port: environment variable OG_TEST_UNSET_PORT is not set",
        f"{path}:line 13: $.cors.allow_origins[0]: write it as browsers send it: 'https://app.example.com' "
        "(lower case, no path, no default port)",
        f"{path}:line 14: $.bogus: unknown section (expected one of: server, providers, models, aliases, "
        "bare_model_ids, keys, router, admin_keys, limits, idempotency, metrics, dashboard, log, cors, tracing)",
        f"{path}: 7 problem(s)"], result.stderr
    # Each unset variable is reported once: not again as the empty key the plugin refuses, nor as
    # the empty port that is not a number.


def test_check_config_falls_back_to_opengateway_config(tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text("providers:\n  - {id: local, plugin: local}\n")
    result = run_cli("check-config", env={"OPENGATEWAY_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK")
    assert f"checking {path} (from OPENGATEWAY_CONFIG)" in result.stderr
    path.write_text("providers: 3\n")
    result = run_cli("check-config", env={"OPENGATEWAY_CONFIG": str(path)})
    assert result.returncode == 1 and f"{path}: 1 problem(s)" in result.stderr
    result = run_cli("check-config", env={"OPENGATEWAY_CONFIG": ""})
    assert result.returncode == 2
    assert result.stderr.startswith("check-config: no file given and OPENGATEWAY_CONFIG is not set;")
    assert "Traceback" not in result.stderr


def test_help_is_plain_text() -> None:
    """--help is read in a terminal: no reStructuredText (``literal``, :role:) in any command's."""
    for args in ([], ["serve"], ["check-config"], ["plugins"], ["keys"], ["keys", "create"]):
        result = run_cli(*args, "--help")
        assert result.returncode == 0, result.stderr
        assert "``" not in result.stdout and not re.search(r":\w+:`", result.stdout), (args, result.stdout)
    top = run_cli("--help").stdout
    assert "OpenGateway: a self-hosted, OpenAI-compatible gateway for image generation." in " ".join(top.split())
    assert re.search(r"--log-level LEVEL\s+debug, info, warning, error or critical", top), top


def test_log_level_is_checked_case_insensitively() -> None:
    assert run_cli("--log-level", "debug", "plugins").returncode == 0
    assert run_cli("--log-level", "Warning", "plugins").returncode == 0
    for result in (run_cli("--log-level", "loud", "plugins"), run_cli("plugins", env={"OPENGATEWAY_LOG_LEVEL": "loud"})):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "invalid choice" in errors[0] and "loud" in errors[0].lower(), result.stderr


def _busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    busy, port = _busy_port()
    with busy:
        result = run_cli("serve", "--port", str(port), env={"OPENGATEWAY_API_KEY": "og-x", "OPENGATEWAY_CONFIG": ""})
        assert result.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port} (the API port): Address already in use" in result.stderr
        assert "None" not in result.stderr and "Traceback" not in result.stderr
        path = tmp_path / "admin.yaml"
        path.write_text(f"server: {{admin_port: {port}}}\nproviders: [{{id: local, plugin: local}}]\n")
        result = run_cli("serve", "--config", str(path), "--port", "0")
        assert result.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port} (server.admin_port): Address already in use" in result.stderr


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:{port}/v1", "http://localhost:{port}/v1"])
def test_openai_base_url_aimed_at_the_gateway_itself_is_refused(base_url: str) -> None:
    port = _free_port()
    url = base_url.format(port=port)
    result = run_cli("serve", "--port", str(port), env={
        "OPENGATEWAY_API_KEY": "og-x", "OPENGATEWAY_CONFIG": "", "OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": url})
    assert result.returncode == 2, result.stderr
    assert (f"refusing to start: provider 'openai' would send requests to {url} (OPENAI_BASE_URL), which is this "
            "gateway's own address, so every request would come back to it.") in result.stderr
    assert "unset it for `opengateway serve`" in result.stderr


def test_a_provider_setting_aimed_at_the_gateway_itself_is_refused(tmp_path: Path) -> None:
    port = _free_port()
    path = tmp_path / "loop.yaml"
    path.write_text(f"providers:\n  - id: self\n    plugin: openai\n    settings: {{api_key: sk-x, "
                    f"base_url: 'http://127.0.0.1:{port}/v1'}}\n")
    result = run_cli("serve", "--config", str(path), "--port", str(port))
    assert result.returncode == 2
    assert f"provider 'self' would send requests to http://127.0.0.1:{port}/v1 (its settings)" in result.stderr


def test_loops_back_compares_addresses_not_just_ports() -> None:
    from gateway.cli import _loops_back
    from gateway.config import Config, ProviderInstance
    from gateway.listeners import Listeners, bind_socket

    def config(url: str) -> Config:
        return Config(providers=[ProviderInstance(id="p", plugin="openai", settings={"api_key": "k", "base_url": url})])

    for host, own in (("127.0.0.1", True), ("0.0.0.0", True)):
        listeners = Listeners(bind_socket(host, 0))
        try:
            port = listeners.port
            assert _loops_back(config(f"http://127.0.0.1:{port}/v1"), listeners) == ("p", f"http://127.0.0.1:{port}/v1")
            assert _loops_back(config(f"http://LOCALHOST:{port}"), listeners) is not None
            assert _loops_back(config(f"http://127.0.0.1:{port + 1}/v1"), listeners) is None  # another port
            assert _loops_back(config(f"https://api.openai.com:{port}/v1"), listeners) is None  # another host
            assert _loops_back(config(f"http://10.1.2.3:{port}/v1"), listeners) is None
        finally:
            listeners.close()


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
