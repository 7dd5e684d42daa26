"""The benchmark's plumbing: constants, tools, child processes, free ports, HTTP probes, RSS."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
POST_LUA = BENCH_DIR / "post.lua"
FAKE_UPSTREAM = BENCH_DIR / "fake_upstream.py"

#: The key wrk sends; the gateway config stores only its SHA-256.
BENCH_KEY = "og-bench-0f3a9c1e5b7d4a2c8e6f"
API_PATH = "/v1/images/generations"
MODEL = "openai/gpt-image-1"
TARGETS = ("direct", "nginx", "aiohttp", "gateway")
BARE_PROXY = Path(__file__).resolve().parent / "bare_proxy.py"
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7")
PAGE = os.sysconf("SC_PAGE_SIZE")
T0 = time.monotonic()


class HarnessError(RuntimeError):
    """The benchmark itself could not run (not a gateway MISS)."""


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)



# --------------------------------------------------------------------------------------------
# Tools


def find_tool(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def ensure_tools() -> tuple[str, str]:
    """nginx and wrk, installed with apt-get (nginx-light) when missing."""
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if nginx and wrk:
        return nginx, wrk
    if not shutil.which("apt-get"):
        raise HarnessError("nginx and wrk are needed; install them (Debian: apt-get install -y "
                           "nginx-light wrk)")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise HarnessError("nginx/wrk missing and not root: run `apt-get install -y nginx-light wrk`")
        sudo = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep the package's post-install from starting a system nginx on port 80 (this benchmark
    # listens on loopback only): a policy-rc.d that forbids service starts, only for the install
    # and only if none exists.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if os.geteuid() == 0 and not policy.exists():
        policy.write_text("#!/bin/sh\n# temporary, written by OpenGateway bench/run.py\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        log("nginx/wrk missing: apt-get update && apt-get install -y nginx-light wrk")
        subprocess.run(sudo + ["apt-get", "update"], env=env, check=False, timeout=600,
                       stdout=subprocess.DEVNULL)
        r = subprocess.run(sudo + ["apt-get", "install", "-y", "--no-install-recommends",
                                   "nginx-light", "wrk"], env=env, timeout=900)
        if r.returncode != 0:  # Debian 13 dropped nginx-light: the plain package then.
            subprocess.run(sudo + ["apt-get", "install", "-y", "--no-install-recommends",
                                   "nginx", "wrk"], env=env, timeout=900, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        raise HarnessError(f"installing nginx-light and wrk failed: {exc}") from None
    finally:
        if made_policy:
            with contextlib.suppress(OSError):
                policy.unlink()
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if not (nginx and wrk):
        raise HarnessError("nginx or wrk still missing after apt-get install")
    return nginx, wrk


def tool_version(argv: list[str], pattern: str) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def compile_bytecode() -> None:
    """gateway/ and plugins/ compiled to bytecode first, as pip does when it installs a package:
    a gateway's start then loads what a deployed one loads, not the compiler's work (where
    PYTHONDONTWRITEBYTECODE is set, as in the sandbox this was written in, every process would
    compile every module of the gateway at start, about 2 MB of RSS more each)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "gateway", "plugins"], cwd=REPO_DIR,
                   stdout=subprocess.DEVNULL, check=False, timeout=300)


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by every child); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# Processes


class Procs:
    """Every process the benchmark starts, each in its own session, stopped by its own pid."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        f = open(log_path, "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 env=env, cwd=cwd, start_new_session=True)
        finally:
            f.close()
        self.started.append((name, p, log_path))
        return p

    @staticmethod
    def _session_members(sid: int) -> list[int]:
        """Pids whose session id is ``sid``: the process we started and what it forked."""
        return [pid for pid, fields in proc_stats() if int(fields[3]) == sid]

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        # Workers it forked that outlived it: same session (a session id is never reused while
        # any member lives), so these are ours.
        for pid in self._session_members(p.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for _name, p, _log in reversed(self.started):
            with contextlib.suppress(Exception):
                self.stop(p, timeout=5.0)
        self.started.clear()

    def sids(self) -> set[int]:
        return {p.pid for _n, p, _l in self.started}

    def check_alive(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is not None:
            for name, q, log_path in self.started:
                if q is p:
                    raise HarnessError(f"{name} exited with status {p.returncode}:\n{tail(log_path)}")
            raise HarnessError(f"process {p.pid} exited with status {p.returncode}")

    def log_of(self, p: subprocess.Popen[bytes]) -> Path | None:
        for _name, q, log_path in self.started:
            if q is p:
                return log_path
        return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """user + nice + system ticks of the whole machine (irq, softirq and steal left out)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return int(parts[1]) + int(parts[2]) + int(parts[3])


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name: [0] state, [1] ppid, [3] session id, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_stats() -> list[tuple[int, list[str]]]:
    """Every live process with its stat fields (processes that exit meanwhile are skipped)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out.append((int(d), _stat_fields(d)))
            except OSError:
                continue
    return out


class LoadWatcher:
    """Measures, once a second, the CPU used by processes this run did not start.

    Machine busy time (user+nice+system from /proc/stat) minus our own: this process (its reaped
    children, wrk and the stopped servers, included through cutime/cstime), every process
    still alive in the sessions we started, and kernel threads. The result, in cores, says how disturbed a
    measurement was on a shared machine.
    """

    def __init__(self, procs: Procs, interval: float = 1.0) -> None:
        self.procs, self.interval = procs, interval
        self.phase = "start-up"
        self.by_phase: dict[str, list[float]] = {}   # phase -> [foreign core-seconds, seconds]
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _own_ticks(self) -> int:
        f = _stat_fields(os.getpid())
        total = sum(int(x) for x in f[11:15])
        sids = self.procs.sids()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                f = _stat_fields(d)
                # Ours, and kernel threads (children of kthreadd, pid 2: ksoftirqd and kworkers
                # mostly carry our own network load).
                if int(f[3]) in sids or f[1] == "2" or d == "2":
                    total += sum(int(x) for x in f[11:15])
            except (OSError, ValueError, IndexError):
                continue
        return total

    def _run(self) -> None:
        t0, busy0, own0 = time.monotonic(), _busy_ticks(), self._own_ticks()
        while not self._stop.wait(self.interval):
            t1, busy1, own1 = time.monotonic(), _busy_ticks(), self._own_ticks()
            dt = t1 - t0
            if dt <= 0:
                continue
            # Own time only grows (a worker killed and reaped by init takes its ticks along).
            foreign = max(0.0, ((busy1 - busy0) - max(0, own1 - own0)) / CLK_TCK)
            acc = self.by_phase.setdefault(self.phase, [0.0, 0.0])
            acc[0] += foreign
            acc[1] += dt
            self.peak[self.phase] = max(self.peak.get(self.phase, 0.0), foreign / dt)
            t0, busy0, own0 = t1, busy1, own1

    def average(self, phase: str) -> float | None:
        acc = self.by_phase.get(phase)
        return acc[0] / acc[1] if acc and acc[1] else None

    def __enter__(self) -> "LoadWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def tail(path: Path | None, lines: int = 25) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


#: Every port free_ports has handed out in this process: the kernel may give a port that was bound
#: and released a moment ago to the next bind, and two servers told the same port collide (nginx:
#: "duplicate listen options").
_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` loopback ports that are free now, distinct from each other and from every port
    this process was handed before."""
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)  # held until the end, so the kernel cannot give it again in this call
            port = s.getsockname()[1]
            if port not in _handed_out:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    _handed_out.update(ports)
    return ports


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def post_images(port: int, timeout: float = 30.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    body = json.dumps({"model": MODEL, "prompt": "A small red cube on a white background.",
                       "size": "1024x1024", "quality": "medium"}).encode()
    return http_request(port, "POST", API_PATH, body, {
        "Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}", **(headers or {})},
        timeout)


def image_b64s(body: bytes) -> list[str]:
    """The ``b64_json`` strings of an OpenAI images answer, in order (ValueError if none)."""
    data = json.loads(body)["data"]
    out = [item["b64_json"] for item in data]
    if not out or not all(isinstance(b, str) and b for b in out):
        raise ValueError("no b64_json images")
    return out


def check_images(name: str, port: int, reference: list[str], headers: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
    """One request through a proxy: 200, and the upstream's images come back unchanged."""
    status, body = post_images(port, headers=headers)
    if status != 200:
        raise HarnessError(f"{name} answered {status} to the check request: {body[:500]!r}\n{tail(log_path)}")
    try:
        got = image_b64s(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"{name}: not an images answer ({exc}): {body[:300]!r}") from None
    if got != reference:
        raise HarnessError(f"{name}: the images differ from the upstream's ({len(got)} image(s), "
                           f"{[len(b) for b in got]} base64 chars; upstream {[len(b) for b in reference]})")


def wait_until(what: str, check: Callable[[], bool], procs: Procs, p: subprocess.Popen[bytes],
               timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        procs.check_alive(p)
        try:
            if check():
                return
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.05)
    raise HarnessError(f"{what} not ready after {timeout:.0f} s ({last}):\n{tail(procs.log_of(p))}")


# --------------------------------------------------------------------------------------------
# RSS from /proc


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, fields in proc_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def tree_pids(root: int) -> list[int]:
    children = _ppid_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_of(pid: int) -> int:
    """VmRSS of one process in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def rss_bytes(pids: list[int]) -> int:
    return sum(rss_of(pid) for pid in pids)


def rss_tree(root: int) -> int:
    return rss_bytes(tree_pids(root))


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` s in a thread; keeps the peak of the
    tree and of each of its processes (``peaks``)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.peak = 0
        self.peaks: dict[int, int] = {}
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pids: list[int] = []
        self._pids_at = 0.0

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - self._pids_at > 1.0:  # the tree rarely changes; rescan /proc each second
                self._pids, self._pids_at = tree_pids(self.root), now
            each = {pid: rss_of(pid) for pid in self._pids}
            rss = sum(each.values())
            self.peak = max(self.peak, rss)
            for pid, value in each.items():
                self.peaks[pid] = max(self.peaks.get(pid, 0), value)
            self.samples.append((round(now - t0, 2), rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------
# wrk
