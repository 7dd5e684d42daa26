"""The README's quick start, run as a newcomer pastes it: its code blocks are taken from README.md
and run with bash in a copy of the source tree (a fresh clone has no .venv): the first command
makes a new virtualenv, installs the gateway and starts it; then the product page's curl, the
command that saves the image, the SDK install and the SDK example saved as the file it names.

One change is made to the text: the port. 8080 may be taken on a shared machine, so the serve
command gets ``--port N`` and every ``127.0.0.1:8080`` reads ``127.0.0.1:N``. The "run the tests"
block is the suite itself and is not run here.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import msgspec
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
QUICK_START = README.split("<!-- section: quick-start -->", 1)[1].split("<!-- /section: quick-start -->", 1)[0]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", QUICK_START, re.S)
#: What a fresh clone does not have: built or installed things, and the repository's own data.
NOT_IN_A_CLONE = shutil.ignore_patterns(".venv", "node_modules", ".git", "__pycache__", "*.egg-info", "build",
                                        "dist", ".pytest_cache", ".hypothesis")


def block(language: str, marker: str) -> str:
    """The one quick-start block in ``language`` whose text contains ``marker``."""
    [found] = [text for lang, text in BLOCKS if lang == language and marker in text]
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, dict[str, str]]]:
    """The first command, run in a copy of the tree; yields the directory, the port and the
    shell's environment once the gateway says it is listening."""
    clone = tmp_path_factory.mktemp("clone") / "opengateway"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE)
    port = _free_port()
    command = block("bash", "opengateway serve").strip()
    assert command.endswith("opengateway serve"), command
    # A newcomer's shell: no config file and no provider settings of their own, on today's date
    # (not the suite's fixed day: the quick start must work on the models served today).
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENGATEWAY_CONFIG", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENGATEWAY_API_KEY",
                        "VIRTUAL_ENV", "PYTHONPATH", "OPENGATEWAY_TODAY")}
    proc = subprocess.Popen(["bash", "-c", f"{command} --port {port}"], cwd=clone, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    lines: list[str] = []
    drain = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    try:
        for line in proc.stdout:  # pip's install, then the gateway's start-up log
            lines.append(line)
            if f"listening on http://127.0.0.1:{port}" in line:
                drain.start()  # keep reading so the gateway never blocks on a full pipe
                break
        else:
            pytest.fail("the quick start's first command did not start a gateway:\n" + "".join(lines[-40:]))
        assert any("embedded local provider" in line for line in lines)
        yield clone, port, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the session this fixture started: bash and the gateway
        proc.wait(timeout=60)
        if drain.ident is not None:
            drain.join(timeout=5)
        proc.stdout.close()


def run(text: str, clone: Path, port: int, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    return subprocess.run(["bash", "-c", text], cwd=clone, env={**env, "API_KEY": "og-demo-key"},
                          capture_output=True, timeout=300)


@pytest.mark.slow
def test_the_quick_start_as_pasted(newcomer: tuple[Path, int, dict[str, str]]) -> None:
    clone, port, env = newcomer
    # The product page's request: OpenAI's response shape plus the routing attempts.
    product = block("bash", "export API_KEY=og-demo-key")
    result = run(product, clone, port, env)
    assert result.returncode == 0, result.stderr
    body = msgspec.json.decode(result.stdout)
    assert body["data"][0]["b64_json"] and body["usage"]["output_tokens"] > 0
    assert body["extra"]["routing"]["attempts"][0]["status"] == "succeeded"

    # Saving the image: complete as written, and quiet (no progress meter, nothing on stderr).
    save = block("bash", "> cube.png")
    assert "..." not in save
    result = run(save, clone, port, env)
    assert result.returncode == 0 and result.stderr == b"" and result.stdout == b"", result.stderr
    image = Image.open(io.BytesIO((clone / "cube.png").read_bytes()))
    assert image.format == "PNG" and image.size == (1024, 1024)

    # The SDK example: installed into the environment the first command made, then run as the file it names.
    install = block("bash", "pip install openai")
    result = run(install, clone, port, env)
    assert result.returncode == 0, result.stderr
    named = re.search(r"save this as `(\w+\.py)` and run it with `(\.venv/bin/python \1)`", QUICK_START)
    assert named, "the README says where to save the SDK example and how to run it"
    (clone / named.group(1)).write_text(block("python", "from openai import OpenAI")
                                        .replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    result = run(named.group(2), clone, port, env)
    assert result.returncode == 0, result.stderr.decode()
    assert "'status': 'succeeded'" in result.stdout.decode() and "'provider': 'local'" in result.stdout.decode()
