"""Installs the benchmark's peers from the package registries and keeps them between runs.

* **LiteLLM**: ``pip install 'litellm[proxy]'`` into a fresh venv made with the Python running
  the benchmark (the project's, 3.11), so pip takes the newest release that installs on it.
* **Portkey**: ``npm install @portkey-ai/gateway`` in a directory of its own, run later with
  the machine's ``node`` (20 here); the newest release on the registry.

Each goes to ``CACHE/<peer>/`` (``--peers-cache``, default ``~/.cache/opengateway-bench``;
``none`` installs under the run's temp dir, removed at the end). ``installed.json`` is written
last, so an interrupted install is redone from scratch on the next run; an install that has it
is reused as it is, and ``--peers-update`` reinstalls (to take a newer release). The version
shown in the table is read from the installed package, not from the marker.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from procs import HarnessError, log, tail

DEFAULT_CACHE = Path.home() / ".cache" / "opengateway-bench"
MARKER = "installed.json"
PORTKEY_PACKAGE = "@portkey-ai/gateway"
PORTKEY_ENTRY = Path("node_modules/@portkey-ai/gateway/build/start-server.js")


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    home: Path
    runtime: str      # what runs it, e.g. "Python 3.11.7" or "Node v20.20.2"
    reused: bool      # found in the cache (True) or installed by this run


def install(name: str, cache: Path, update: bool) -> Installed:
    """The peer from the cache, or freshly installed there; one run at a time per cache."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{name}.lock", "w") as lock:
            # Two benchmarks sharing a cache (a shared machine) would otherwise install over
            # each other; the second waits and then finds the first one's install.
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _install_locked(name, cache, update)
    except OSError as exc:
        raise HarnessError(f"{name}: cannot install into {cache}: {exc}") from None


def _install_locked(name: str, cache: Path, update: bool) -> Installed:
    home = cache / name
    marker = home / MARKER
    if marker.exists() and not update and _complete(name, home):
        inst = _describe(name, home, reused=True)
        log(f"{name} {inst.version}: reusing the install in {home}")
        return inst
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    t0 = time.monotonic()
    (_install_litellm if name == "litellm" else _install_portkey)(home)
    inst = _describe(name, home, reused=False)
    marker.write_text(json.dumps({"name": name, "version": inst.version, "runtime": inst.runtime,
                                  "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    log(f"{name} {inst.version}: installed in {home} ({time.monotonic() - t0:.0f} s)")
    return inst


def litellm_bin(home: Path) -> Path:
    return home / "venv" / "bin" / "litellm"


def portkey_entry(home: Path) -> Path:
    return home / PORTKEY_ENTRY


def node_bin() -> str:
    node = shutil.which("node")
    if not node:
        raise HarnessError("--peers portkey needs node (20 or newer) and npm on PATH "
                           "(Debian: apt-get install -y nodejs npm)")
    return node


def _run(argv: list[str], log_path: Path, what: str, timeout_s: float, cwd: Path | None = None) -> None:
    log(f"{what}: {' '.join(argv)}")
    with open(log_path, "ab") as out:
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               cwd=cwd, timeout=timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            raise HarnessError(f"{what} failed: {exc}\n{tail(log_path)}") from None
    if r.returncode != 0:
        raise HarnessError(f"{what} failed (status {r.returncode}):\n{tail(log_path)}")


def _install_litellm(home: Path) -> None:
    log_path = home / "install.log"
    venv = home / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], log_path, "litellm: venv", 300)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
          "litellm[proxy]"], log_path, "litellm: pip install", 1800)


def _install_portkey(home: Path) -> None:
    node_bin()
    npm = shutil.which("npm")
    if not npm:
        raise HarnessError("--peers portkey needs npm on PATH (Debian: apt-get install -y npm)")
    (home / "package.json").write_text('{"private": true, "description": "OpenGateway bench peer"}\n')
    # --ignore-scripts: the package's only install script is patch-package, and the published
    # package ships no patches (its "files" are the build/ bundle and docs); npm 11 skips it
    # anyway unless approved, so this keeps older npm versions doing the same.
    _run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts",
          f"{PORTKEY_PACKAGE}@latest"], home / "install.log", "portkey: npm install", 900, cwd=home)


def _complete(name: str, home: Path) -> bool:
    if name == "litellm":
        return litellm_bin(home).exists() and (home / "venv" / "bin" / "python").exists()
    return portkey_entry(home).exists()


def _describe(name: str, home: Path, reused: bool) -> Installed:
    if name == "litellm":
        py = home / "venv" / "bin" / "python"
        try:
            r = subprocess.run([str(py), "-c", "import importlib.metadata as m, platform; "
                                "print(m.version('litellm'), platform.python_version())"],
                               capture_output=True, text=True, timeout=60)
            version, py_version = r.stdout.split()
        except (OSError, subprocess.SubprocessError, ValueError):
            raise HarnessError(f"litellm: the venv in {home} does not run; rerun with "
                               f"--peers-update") from None
        return Installed(name, version, home, f"Python {py_version}", reused)
    try:
        meta = json.loads((home / "node_modules" / PORTKEY_PACKAGE / "package.json").read_text())
        version = str(meta["version"])
    except (OSError, ValueError, KeyError):
        raise HarnessError(f"portkey: no {PORTKEY_PACKAGE} in {home}; rerun with --peers-update") from None
    node_v = subprocess.run([node_bin(), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return Installed(name, version, home, f"Node {node_v}", reused)
