"""Discovery with real, broken, third-party distributions on the path of a fresh process.

Each fake distribution is a module plus a ``.dist-info`` folder (METADATA + entry_points.txt),
which is all ``importlib.metadata`` needs to find it through ``sys.path`` (PYTHONPATH here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.config import key_hash
from tests.conftest import GATEWAY_KEY

_GOOD_BODY = '''
import msgspec
from gateway.provider import ImageResult, Model, Provider

class {cls}(Provider):
    api_version = {api_version}

    class Settings(msgspec.Struct):
        pass

    def models(self):
        return [Model("thirdparty/{name}")]

    async def generate(self, request, call):
        return ImageResult(body=b'{{"created": 1, "data": []}}')
'''

# distribution -> (version, entry-point name, module name, module source)
DISTS: dict[str, tuple[str, str, str, str]] = {
    "og-good": ("1.2.0", "good", "og_good", _GOOD_BODY.format(cls="GoodProvider", api_version=2, name="good")),
    "og-broken-import": ("0.3.1", "broken", "og_broken", "import og_missing_dependency_xyz\n"),
    "og-wrong-api": ("2.0.0", "future", "og_future",
                     _GOOD_BODY.format(cls="GoodProvider", api_version=99, name="future")),
    "og-not-provider": ("0.1.0", "thing", "og_thing", "class GoodProvider:\n    pass\n"),
    "og-buggy": ("0.0.1", "buggy", "og_buggy", _GOOD_BODY.format(cls="GoodProvider", api_version=2, name="buggy")
                 .replace("return ImageResult(", "return 1 / 0, ImageResult(")),
    "og-abstract": ("0.1.0", "half", "og_half", textwrap.dedent('''
        import msgspec
        from gateway.provider import Provider

        class GoodProvider(Provider):
            api_version = 2

            class Settings(msgspec.Struct):
                pass

            def models(self):
                return []
        ''')),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for dist, (version, name, module, source) in DISTS.items():
        (root / f"{module}.py").write_text(source)
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[opengateway.providers]\n{name} = {module}:GoodProvider\n")
    return root


def gateway_cli(site: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, cwd=site, capture_output=True,
                          text=True, timeout=timeout_s)


def config_file(site: Path, plugin: str) -> Path:
    path = site / f"uses-{plugin}.yaml"
    path.write_text(f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:
  - id: p
    plugin: {plugin}
""")
    return path


def test_plugins_lists_every_provider_and_why_some_failed(site: Path) -> None:
    done = gateway_cli(site, "plugins", "--json")
    assert done.returncode == 0, done.stderr
    rows: dict[str, dict[str, Any]] = {r["name"]: r for r in msgspec.json.decode(done.stdout)}
    for name in ("openai", "azure_openai", "local", "google", "stability", "bfl", "fal"):
        assert (rows[name]["distribution"], rows[name]["ok"]) == ("opengateway", True)
    assert rows["good"] == {"name": "good", "distribution": "og-good", "version": "1.2.0",
                            "module": "og_good:GoodProvider", "api_version": 2, "ok": True,
                            "error": None, "fix": None}
    expected = {
        "broken": ("og-broken-import", "0.3.1", "import failed: ModuleNotFoundError: No module named "
                   "'og_missing_dependency_xyz'", "pip install --upgrade og-broken-import"),
        "future": ("og-wrong-api", "2.0.0", "written for plugin API version 99, this gateway speaks 2",
                   "install a release of og-wrong-api built for plugin API version 2"),
        "thing": ("og-not-provider", "0.1.0", "og_thing:GoodProvider is not a subclass of "
                  "gateway.provider.Provider", "pip install --upgrade og-not-provider"),
        "half": ("og-abstract", "0.1.0", "does not implement generate", "pip install --upgrade og-abstract"),
    }
    for name, (dist, version, error, fix) in expected.items():
        row = rows[name]
        assert (row["distribution"], row["version"], row["ok"]) == (dist, version, False)
        assert row["error"] == error
        assert fix in row["fix"]
    # One clear log line per skipped plugin.
    assert "provider plugin 'broken' (og-broken-import 0.3.1, og_broken:GoodProvider) skipped: " \
           "import failed" in done.stderr
    assert done.stderr.count("skipped:") == 4


def test_plugins_table_marks_failures(site: Path) -> None:
    done = gateway_cli(site, "--log-level", "error", "plugins")
    assert done.returncode == 0
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert lines["NAME"].split() == ["NAME", "DISTRIBUTION", "VERSION", "MODULE", "STATUS"]
    assert lines["good"].split()[1:] == ["og-good", "1.2.0", "og_good:GoodProvider", "ok"]
    assert lines["future"].split()[1:4] == ["og-wrong-api", "2.0.0", "og_future:GoodProvider"]
    assert "FAILED: written for plugin API version 99" in lines["future"]


@pytest.mark.parametrize(("plugin", "fragments"), [
    ("broken", ["plugin 'broken' from the distribution og-broken-import 0.3.1 cannot be used",
                "ModuleNotFoundError", "pip install --upgrade og-broken-import"]),
    ("future", ["og-wrong-api 2.0.0", "written for plugin API version 99",
                "install a release of og-wrong-api built for plugin API version 2"]),
    ("nope", ["no provider plugin named 'nope' is installed", "good", "opengateway plugins"]),
])
def test_a_config_that_uses_a_broken_plugin_cannot_start(site: Path, plugin: str, fragments: list[str]) -> None:
    config = config_file(site, plugin)
    check = gateway_cli(site, "check-config", str(config))
    assert check.returncode == 1
    assert "$.providers[0].plugin" in check.stderr
    for fragment in fragments:
        assert fragment in check.stderr
    serve = gateway_cli(site, "serve", "--config", str(config), "--port", "0")
    assert serve.returncode == 2
    for fragment in fragments:
        assert fragment in serve.stderr


def test_broken_plugins_do_not_stop_a_config_that_does_not_use_them(site: Path) -> None:
    check = gateway_cli(site, "check-config", str(config_file(site, "good")))
    assert check.returncode == 0, check.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    with subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config_file(site, "local")),
                           "--port", "0"], env=env, cwd=site, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        try:
            seen = []
            for line in proc.stderr:  # ends at EOF if the gateway exits
                seen.append(line)
                if "listening on http://127.0.0.1:" in line:
                    break
            assert any("listening on" in line for line in seen), "".join(seen)
            assert any("'broken'" in line and "skipped" in line for line in seen)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
        assert proc.returncode == 0


async def test_a_plugin_that_raises_is_a_failed_attempt_and_the_fallback_answers(site: Path) -> None:
    """A third-party plugin's bug (here a ZeroDivisionError in ``generate``) is the plugin's, not the
    request's: the attempt fails with 502 ``provider_error`` (it may have reached its upstream, so
    it may have been billed), the traceback goes to the log for the plugin's author, and the
    request's fallback answers. Never a 500."""
    import aiohttp

    from tests.gateway_process import GatewayProcess
    config = site / "buggy.yaml"
    config.write_text(f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:
  - {{id: p, plugin: buggy}}
  - {{id: offline, plugin: local}}
models:
  thirdparty/buggy: {{targets: [p], fallbacks: [openai/gpt-image-1]}}
  openai/gpt-image-1: {{targets: [offline]}}
""")
    gateway = await GatewayProcess.start(config, env={"PYTHONPATH": str(site)})
    try:
        url = await gateway.url()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/images/generations", json={"model": "thirdparty/buggy", "prompt": "x"},
                                    headers={"Authorization": f"Bearer {GATEWAY_KEY}"}) as resp:
                body = await resp.json()
        assert resp.status == 200, body
        failed, served = body["extra"]["routing"]["attempts"]
        assert (failed["status"], failed["http_status"], failed["error_code"]) == ("failed", 502, "provider_error")
        assert failed["error_message"] == "The buggy provider plugin failed (ZeroDivisionError)."
        assert failed["possibly_billed"] is True and served["status"] == "succeeded"
        await gateway.wait_for_lines(r"target p:openai/gpt-image-1|target p:thirdparty/buggy: the buggy plugin raised")
        assert "ZeroDivisionError" in gateway.log()
    finally:
        await gateway.close()


def test_a_worker_imports_only_the_plugins_its_configuration_uses() -> None:
    """``provider_class`` imports the plugin asked for and no other (``discover``, which imports
    them all and logs the broken ones, runs once in ``serve`` before any worker starts): an
    unused plugin costs a worker nothing."""
    code = ("import sys; from gateway.plugins import provider_class; provider_class('openai'); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('plugins.'))))")
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["plugins.openai"]
