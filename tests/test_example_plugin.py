"""The template plugin, proven as a third party would use it: its own distribution, installed
from its folder into a clean virtualenv next to the gateway, its own tests run there (the
gateway's contract suite, gateway.testing), served, then uninstalled.

The gateway and the example are copied to a temporary directory first, so building them leaves
nothing in the work tree. Dependencies come from the pip cache or the package index.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "opengateway-example-provider"
KEY = "og-example-plugin-test-key-1c9e"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".venv", "*.pyc")


async def run(*argv: str | Path, timeout_s: float = 600) -> str:
    # Run away from the work tree: ``python -c`` would otherwise import it from the cwd.
    proc = await asyncio.create_subprocess_exec(*map(str, argv), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=_clean_env(),
                                                cwd=Path(str(argv[0])).parent)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{text[-3000:]}"
    return text


def _clean_env() -> dict[str, str]:
    # Nothing from the test run's own environment may leak the work tree onto the new venv's path.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "OPENGATEWAY_"))}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


async def plugins(venv: Path) -> dict[str, dict[str, Any]]:
    rows = msgspec.json.decode(await run(venv / "bin" / "opengateway", "--log-level", "error", "plugins", "--json"))
    return {row["name"]: row for row in rows}


@pytest.mark.slow
async def test_example_plugin_from_its_own_folder_in_a_clean_venv(tmp_path: Path) -> None:
    src, example, venv = tmp_path / "opengateway", tmp_path / "example", tmp_path / "venv"
    for name in ("gateway", "plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=_IGNORE)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(EXAMPLE, example, ignore=_IGNORE)

    await run(sys.executable, "-m", "venv", venv)  # no --system-site-packages: nothing borrowed
    pip = (venv / "bin" / "python", "-m", "pip", "install", "-q")
    await run(*pip, src)
    where = await run(venv / "bin" / "python", "-c", "import gateway, sys; print(gateway.__file__, sys.prefix)")
    assert str(ROOT) not in where and str(venv) in where, where
    assert "example" not in await plugins(venv)

    await run(*pip, f"{example}[test]")
    # The example's own tests: the gateway's contract suite (gateway.testing) as a third party runs it.
    report = await run(venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", example / "tests")
    assert " passed" in report and "failed" not in report, report
    listed = await plugins(venv)
    assert {"openai", "azure_openai", "local", "example"} <= set(listed)
    row = listed["example"]
    assert (row["distribution"], row["version"], row["module"], row["ok"], row["api_version"]) == (
        "opengateway-example-provider", "0.2.0", "opengateway_example:ExampleProvider", True, 2)
    table = await run(venv / "bin" / "opengateway", "plugins")
    assert any(line.split()[:3] == ["example", "opengateway-example-provider", "0.2.0"]
               for line in table.splitlines())

    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
keys:
  - name: test
    hash: "sha256:{hashlib.sha256(KEY.encode()).hexdigest()}"
providers:
  - id: swatches
    plugin: example
    settings:
      color: "#ff8800"
""")
    png = await _generate_through_served_gateway(venv, config, {"model": "example/solid-color",
                                                                "prompt": "A plain swatch", "size": "512x512"})
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size) == ("PNG", (512, 512))
    assert image.convert("RGB").getpixel((100, 300)) == (255, 136, 0)

    await run(venv / "bin" / "python", "-m", "pip", "uninstall", "-y", "-q", "opengateway-example-provider")
    listed = await plugins(venv)
    assert "example" not in listed and {"openai", "azure_openai", "local"} <= set(listed)


async def _generate_through_served_gateway(venv: Path, config: Path, payload: dict[str, Any]) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "opengateway"), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=_clean_env(), cwd=venv)
    assert proc.stderr is not None
    log: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        port = None
        while port is None:  # the server logs its bound port once it listens
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode(errors="replace")
            assert line, "the gateway exited before listening:\n" + "".join(log)
            log.append(line)
            if "listening on http://127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1])
        drain = asyncio.create_task(_drain(proc.stderr, log))  # a full pipe would stall the server
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/images/generations", json=payload,
                                    headers={"Authorization": f"Bearer {KEY}"}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
        assert body["extra"]["routing"]["attempts"][0]["provider"] == "example"
        return base64.b64decode(body["data"][0]["b64_json"])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
        if drain is not None:
            await drain


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace"))
