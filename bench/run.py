#!/usr/bin/env python3
"""OpenGateway performance benchmark: one command, one table.

Run (from the repository root, with the project's Python environment)::

    python bench/run.py                  # full run: 3 rounds, about 7 minutes on 2 cores
    python bench/run.py --quick          # CI smoke run: 1 round, short, reduced counts, no targets
    python bench/run.py --rounds 5 --workers 2 --json out.json
    python bench/run.py --only direct,nginx --scenarios S1,S3   # harness without the gateway

What it starts, all on free ports of 127.0.0.1 and in a temporary directory (removed at the end
unless ``--keep-tmp``), every process by its own pid, all of them stopped on exit, error or
Ctrl-C:

* ``bench/fake_upstream.py`` three times: *small* (1 KB base64 image), *large* (2 MB base64
  image) and *slow* (1 KB, each answer held ``--s4-delay-s`` = 5 s). It is a raw asyncio
  Protocol on uvloop answering with pre-built bytes (one process each by default,
  ``--upstream-workers`` for more, SO_REUSEPORT); alone it serves ~80k req/s of the small answer
  on this class of machine, well above what either proxy reaches.
* nginx (Debian's ``nginx-light``; installed with apt-get if ``nginx`` or ``wrk`` is missing) as
  the reference reverse proxy: a generated config with one server block per upstream,
  ``worker_processes`` equal to the gateway's ``--workers``, upstream keepalive,
  ``proxy_http_version 1.1``, an access log (the gateway logs every request too), response
  buffering in memory (``proxy_buffers 32 64k``, never to a temp file), error log and pid file in
  the temp dir, run as ``nginx -c CONF -p PREFIX -g 'daemon off;'``.
* the gateway, ``python -m gateway serve --config CONF --host 127.0.0.1 --port P``
  (``--workers N`` when N > 1), with the production features on: key auth (one key, stored as
  its SHA-256), request validation, the router, metrics and the access log (written with the
  gateway's stderr to a file in the temp dir). One instance per upstream plus a fresh one for
  the soak. Ready when ``GET /healthz`` answers 200; each proxy is then checked with one real
  request before it is measured.

and drives them with ``wrk`` and ``bench/post.lua`` (a POST of an OpenAI images request with a
bearer key; the Lua ``done()`` hook prints latency percentiles and error counts as JSON).

Scenarios (``direct`` is wrk straight at the fake upstream, measured in the same run):

S1  1 KB image, 32 connections, 2 wrk threads: req/s and p50/p99 for direct, nginx, gateway.
    Target: gateway req/s >= 0.40 x nginx.
S2  1 connection: added p50 and p99 latency of nginx and of the gateway versus direct.
    Target: gateway adds <= 0.35 ms at p50 and <= 1 ms at p99.
S3  2 MB base64 image, 8 connections: req/s and MB/s (wrk's bytes read, headers included).
    Target: gateway req/s >= 0.65 x nginx.
S4  10,000 connections (one in-flight request each) against the slow upstream (5 s) for
    ``--s4-duration-s``: errors (wrk socket errors + non-2xx) and peak RSS (sampled every
    0.1 s) of nginx and of the gateway. Target: 0 errors, peak RSS <= 300 MB. Each proxied
    in-flight request holds two file descriptors (client + upstream), so the connection count
    is capped to what the hard RLIMIT_NOFILE allows (2 fds per request plus 10 % spare: with the
    20,000 of the sandbox this was written in, 9,000); the table says when that happened.
S5  soak on a freshly started gateway: idle RSS after start-up (before any request), then a
    warm-up of ``--s5-warmup`` 2 MB requests, RSS after warm-up, then ``--s5-requests``
    (20,000) more, RSS at the end (wrk stops by count; bounded by ``--s5-max-s``).
    Target: growth <= 10 % after warm-up, idle RSS <= 60 MB.

S1-S3 run ``--rounds`` times, interleaving direct/nginx/gateway in rotating order, after one
short warm-up per target; the table shows the median of the rounds (ratios and added latencies
are computed per round, then the median taken). RSS is VmRSS summed over the process tree
(master + workers) read from /proc. Nothing is pinned to a CPU: the machine is shared, so
expect noise between runs and compare ratios rather than absolute numbers. To tell a clean run
from a disturbed one, the CPU time used by processes this run did not start is measured once a
second (machine busy time from /proc/stat minus our own process trees) and shown in the header;
a note flags any phase where it averaged 0.15 cores or more.

``--quick`` (for CI): 1 round, 2 s per measurement, S4 with 500 connections and a 1 s
upstream, S5 with 600 requests; the targets are not judged. Finishes in well under a minute.

Exit status: 0 when every measurement ran (whatever the PASS/MISS column says; ``--strict``
makes a MISS exit 3), 1 when the harness failed (a process did not start, a proxy answered an
error to the check request, wrk failed), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
POST_LUA = BENCH_DIR / "post.lua"
FAKE_UPSTREAM = BENCH_DIR / "fake_upstream.py"

#: The key wrk sends; the gateway config stores only its SHA-256.
BENCH_KEY = "og-bench-0f3a9c1e5b7d4a2c8e6f"
API_PATH = "/v1/images/generations"
MODEL = "openai/gpt-image-1"
TARGETS = ("direct", "nginx", "gateway")
SCENARIOS = ("S1", "S2", "S3", "S4", "S5")
PAGE = os.sysconf("SC_PAGE_SIZE")
T0 = time.monotonic()


class HarnessError(RuntimeError):
    """The benchmark itself could not run (not a gateway MISS)."""


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Settings


@dataclass
class Settings:
    quick: bool
    rounds: int
    workers: int
    upstream_workers: int
    duration_s: float      # S1 and S3, per measurement
    s2_duration_s: float
    warmup_s: float
    s1_conns: int = 32
    s3_conns: int = 8
    small_bytes: int = 1024
    large_bytes: int = 2 * 1024 * 1024
    n: int = 1
    s4_conns: int = 10_000
    s4_delay_s: float = 5.0
    s4_duration_s: float = 12.0
    s5_warmup: int = 2_000
    s5_requests: int = 20_000
    s5_conns: int = 8
    s5_max_s: float = 900.0
    s4_conns_requested: int = 10_000
    s4_cap_reason: str = ""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    ap = argparse.ArgumentParser(
        description="OpenGateway benchmark: fake upstream + nginx + gateway, driven by wrk.",
        epilog="See the module docstring (bench/run.py) for what each scenario measures.",
    )
    ap.add_argument("--quick", action="store_true", help="CI mode: 1 round, seconds, no targets")
    ap.add_argument("--rounds", type=int, help="rounds of S1-S3 (median shown); default 3, quick 1")
    ap.add_argument("--workers", type=int, default=1,
                    help="gateway worker processes = nginx worker_processes (default 1)")
    ap.add_argument("--upstream-workers", type=int, default=1,
                    help="fake upstream processes per upstream (SO_REUSEPORT; default 1)")
    ap.add_argument("--json", metavar="FILE", help="write every raw measurement and the medians")
    ap.add_argument("--only", default=",".join(TARGETS),
                    help="targets to run, comma-separated subset of direct,nginx,gateway")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="scenarios to run, comma-separated subset of S1..S5")
    ap.add_argument("--duration-s", type=int, help="seconds per S1/S3 measurement (default 10)")
    ap.add_argument("--s2-duration-s", type=int, help="seconds per S2 measurement (default 10)")
    ap.add_argument("--s4-conns", type=int, help="S4 connections (default 10000, quick 500)")
    ap.add_argument("--s4-delay-s", type=float, help="S4 upstream delay (default 5, quick 1)")
    ap.add_argument("--s4-duration-s", type=int, help="S4 wrk duration (default 12, quick 3)")
    ap.add_argument("--s5-requests", type=int, help="S5 soak requests (default 20000, quick 500)")
    ap.add_argument("--s5-warmup", type=int, help="S5 warm-up requests (default 2000, quick 100)")
    ap.add_argument("--s5-max-s", type=float, help="upper bound on the S5 soak time (default 900)")
    ap.add_argument("--strict", action="store_true", help="exit 3 when a target is MISSed")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--verbose", "-v", action="store_true", help="log every measurement")
    args = ap.parse_args(argv)

    args.only = [t.strip() for t in args.only.split(",") if t.strip()]
    bad = [t for t in args.only if t not in TARGETS]
    if bad:
        ap.error(f"--only: unknown target(s) {bad}; choose from {TARGETS}")
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad:
        ap.error(f"--scenarios: unknown scenario(s) {bad}; choose from {SCENARIOS}")
    if args.workers < 1 or args.upstream_workers < 1:
        ap.error("--workers and --upstream-workers must be >= 1")

    q = args.quick
    s = Settings(
        quick=q,
        rounds=args.rounds or (1 if q else 3),
        workers=args.workers,
        upstream_workers=args.upstream_workers,
        duration_s=args.duration_s or (2 if q else 10),
        s2_duration_s=args.s2_duration_s or (2 if q else 10),
        warmup_s=1 if q else 2,
        s4_conns=args.s4_conns or (500 if q else 10_000),
        s4_delay_s=args.s4_delay_s if args.s4_delay_s is not None else (1.0 if q else 5.0),
        s4_duration_s=args.s4_duration_s or (3.0 if q else 12.0),
        s5_requests=args.s5_requests or (500 if q else 20_000),
        s5_warmup=args.s5_warmup if args.s5_warmup is not None else (100 if q else 2_000),
        s5_max_s=args.s5_max_s or (60.0 if q else 900.0),
    )
    s.s4_conns_requested = s.s4_conns
    return args, s


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
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                out.append(int(d))
        return out

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
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


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


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
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


def post_images(port: int, timeout: float = 30.0) -> tuple[int, bytes]:
    body = json.dumps({"model": MODEL, "prompt": "A small red cube on a white background.",
                       "size": "1024x1024", "quality": "medium"}).encode()
    return http_request(port, "POST", API_PATH, body, {
        "Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}, timeout)


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
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    return children


def tree_pids(root: int) -> list[int]:
    children = _ppid_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_tree(root: int) -> int:
    return rss_bytes(tree_pids(root))


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` s in a thread; keeps the peak."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.peak = 0
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
            rss = rss_bytes(self._pids)
            self.peak = max(self.peak, rss)
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


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int]
    non2xx: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    mean_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def mbps(self) -> float:
        return self.bytes / self.duration_s / 1e6 if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        e = self.errors
        return e["connect"] + e["read"] + e["write"] + e["timeout"] + self.non2xx

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(rps=round(self.rps, 1), mbps=round(self.mbps, 2), error_count=self.error_count)
        return d


class Wrk:
    def __init__(self, path: str, procs: Procs, tmp: Path, verbose: bool) -> None:
        self.path, self.procs, self.tmp, self.verbose = path, procs, tmp, verbose
        self.count = 0
        self.requests_by_port: dict[int, int] = {}

    def run(self, port: int, conns: int, threads: int, duration_s: float, timeout_s: float = 5.0,
            stop_after: int | None = None, label: str = "") -> WrkResult:
        """One wrk run at http://127.0.0.1:port/v1/images/generations.

        With ``stop_after`` the run ends after that many responses (each thread stops at its
        share and drops a marker file; then wrk gets SIGINT), ``duration_s`` being the bound.
        """
        self.count += 1
        threads = max(1, min(threads, conns))
        out_path = self.tmp / f"wrk-{self.count}.out"
        env = dict(os.environ, BENCH_KEY=BENCH_KEY)
        stop_base = None
        per_thread = 0
        if stop_after:
            per_thread = math.ceil(stop_after / threads)
            stop_base = self.tmp / f"wrk-{self.count}.stop"
            env.update(BENCH_MAX_REQUESTS=str(per_thread), BENCH_STOP_FILE=str(stop_base))
        argv = [self.path, "-t", str(threads), "-c", str(conns), "-d", f"{max(1, math.ceil(duration_s))}s",
                "--timeout", f"{max(1, math.ceil(timeout_s))}s", "-s", str(POST_LUA),
                f"http://127.0.0.1:{port}{API_PATH}"]
        p = self.procs.start(f"wrk {label}", argv, out_path, env=env)
        deadline = time.monotonic() + duration_s + 30 + timeout_s
        interrupted = False
        while p.poll() is None:
            if time.monotonic() > deadline:
                self.procs.stop(p, signal.SIGKILL)
                raise HarnessError(f"wrk {label} did not finish in time:\n{tail(out_path)}")
            if stop_base is not None and not interrupted and all(
                    Path(f"{stop_base}.{i}").exists() for i in range(1, threads + 1)):
                p.send_signal(signal.SIGINT)  # wrk prints its summary and runs done()
                interrupted = True
            time.sleep(0.02)
        self.procs.started = [x for x in self.procs.started if x[1] is not p]
        text = out_path.read_text(errors="replace")
        m = re.search(r"^BENCH_RESULT (\{.*\})\s*$", text, re.M)
        if p.returncode != 0 or not m:
            raise HarnessError(f"wrk {label} failed (status {p.returncode}):\n{text[-3000:]}")
        d = json.loads(m.group(1))
        r = WrkResult(requests=d["requests"], duration_s=d["duration_us"] / 1e6, bytes=d["bytes"],
                      errors=d["errors"], non2xx=d["non2xx"], p50_us=d["p50_us"], p90_us=d["p90_us"],
                      p99_us=d["p99_us"], p999_us=d["p999_us"], max_us=d["max_us"],
                      mean_us=d["mean_us"])
        self.requests_by_port[port] = self.requests_by_port.get(port, 0) + r.requests
        if self.verbose:
            log(f"  wrk {label}: {r.rps:,.0f} req/s, {r.mbps:,.1f} MB/s, p50 {r.p50_us/1000:.3f} ms, "
                f"p99 {r.p99_us/1000:.3f} ms, {r.requests} requests, errors {r.error_count}")
        return r


# --------------------------------------------------------------------------------------------
# The systems under test


@dataclass
class Upstream:
    name: str
    image_bytes: int
    delay_s: float
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Gateway:
    name: str
    upstream: Upstream
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    conf: Path | None = None


NGINX_CONF = """\
# Generated by OpenGateway bench/run.py: the reference reverse proxy.
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections {worker_connections};
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_max_body_size 1m;
{blocks}
}}
"""

NGINX_BLOCK = """
    upstream {name} {{
        server 127.0.0.1:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 120s;
            proxy_buffer_size 64k;
            proxy_buffers 32 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""

GATEWAY_CONF = """\
# Generated by OpenGateway bench/run.py
server: {{host: 127.0.0.1, port: {port}, access_log: true}}
keys:
  - name: bench
    hash: "sha256:{key_hash}"
providers:
  - id: upstream
    plugin: openai
    region: bench
    settings: {{api_key: sk-bench-upstream, base_url: "http://127.0.0.1:{upstream_port}/v1"}}
models:
  {model}: {{targets: [upstream]}}
"""


class Bench:
    def __init__(self, args: argparse.Namespace, s: Settings, nginx: str, wrk: str) -> None:
        self.args, self.s = args, s
        self.nginx_bin = nginx
        self.procs = Procs()
        self.tmp = Path(tempfile.mkdtemp(prefix="og-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers may run as another user
        self.wrk = Wrk(wrk, self.procs, self.tmp, args.verbose)
        self.targets = args.only
        self.scenarios = args.scenarios
        self.upstreams = {
            "small": Upstream("small", s.small_bytes, 0.0),
            "large": Upstream("large", s.large_bytes, 0.0),
            "slow": Upstream("slow", s.small_bytes, s.s4_delay_s),
        }
        self.nginx_ports: dict[str, int] = {}
        self.nginx_proc: subprocess.Popen[bytes] | None = None
        self.gateways: dict[str, Gateway] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_DIR)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
        self.env["NO_PROXY"] = self.env["no_proxy"] = "127.0.0.1,localhost"
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.results: dict[str, Any] = {"rounds": [], "s4": {}, "s5": {}}
        self.load = LoadWatcher(self.procs)

    def phase(self, name: str) -> None:
        """Close the load accounting of the current phase (logging it), then start ``name``."""
        prev = self.load.phase
        avg = self.load.average(prev)
        if avg is not None and avg >= 0.15:
            log(f"warning: other processes used {avg:.2f} cores on average during {prev} "
                f"(peak {self.load.peak.get(prev, 0):.2f}): the numbers are disturbed")
        self.load.phase = name

    # -- which upstreams / gateways are needed ------------------------------------------------

    def _needed_profiles(self) -> set[str]:
        need = set()
        if {"S1", "S2"} & set(self.scenarios):
            need.add("small")
        if {"S3", "S5"} & set(self.scenarios):
            need.add("large")
        if "S4" in self.scenarios and ({"nginx", "gateway"} & set(self.targets)):
            need.add("slow")
        return need

    # -- start ----------------------------------------------------------------------------------

    def start_upstreams(self, names: set[str]) -> None:
        for name in sorted(names):
            u = self.upstreams[name]
            u.port = free_ports(1)[0]
            argv = [sys.executable, str(FAKE_UPSTREAM), "--port", str(u.port),
                    "--image-bytes", str(u.image_bytes), "--n", str(self.s.n),
                    "--delay-s", str(u.delay_s), "--workers", str(self.s.upstream_workers)]
            u.proc = self.procs.start(f"fake upstream {name}", argv, self.tmp / f"upstream-{name}.log",
                                      env=self.env)
        for name in sorted(names):
            u = self.upstreams[name]
            assert u.proc is not None
            wait_until(f"fake upstream {name}",
                       lambda u=u: "READY" in (self.tmp / f"upstream-{u.name}.log").read_text(),
                       self.procs, u.proc, 30)
            if u.delay_s == 0:
                status, body = post_images(u.port)
                if status != 200:
                    raise HarnessError(f"fake upstream {name} answered {status}: {body[:200]!r}")

    def start_nginx(self, names: set[str], nofile: int) -> None:
        prefix = self.tmp / "nginx"
        for d in ("", "tmp", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (prefix / d).mkdir(parents=True, exist_ok=True)
        os.chmod(prefix, 0o755)
        blocks = []
        for name in sorted(names):
            port = free_ports(1)[0]
            self.nginx_ports[name] = port
            blocks.append(NGINX_BLOCK.format(name=f"up_{name}", port=port,
                                             upstream_port=self.upstreams[name].port))
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            workers=self.s.workers, nofile=nofile, prefix=prefix,
            worker_connections=max(1024, nofile - 64), blocks="".join(blocks)))
        argv = [self.nginx_bin, "-e", str(prefix / "error.log"), "-c", str(conf), "-p", str(prefix),
                "-g", "daemon off;"]
        self.nginx_proc = self.procs.start("nginx", argv, self.tmp / "nginx-stderr.log")
        for name, port in self.nginx_ports.items():
            wait_until(f"nginx ({name})", lambda port=port: _connects(port), self.procs,
                       self.nginx_proc, 15)
            if self.upstreams[name].delay_s == 0:
                status, body = post_images(port)
                if status != 200:
                    raise HarnessError(f"nginx ({name}) answered {status}: {body[:300]!r}\n"
                                       f"{tail(prefix / 'error.log')}")

    def start_gateway(self, name: str, upstream: Upstream) -> Gateway:
        g = Gateway(name, upstream, port=free_ports(1)[0])
        g.conf = self.tmp / f"gateway-{name}.yaml"
        g.conf.write_text(GATEWAY_CONF.format(
            port=g.port, key_hash=hashlib.sha256(BENCH_KEY.encode()).hexdigest(),
            upstream_port=upstream.port, model=MODEL))
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(g.conf),
                "--host", "127.0.0.1", "--port", str(g.port)]
        if self.s.workers > 1:
            argv += ["--workers", str(self.s.workers)]
        # The access log (and anything else the gateway prints) goes to a file.
        g.proc = self.procs.start(f"gateway {name}", argv, self.tmp / f"gateway-{name}.log",
                                  env=self.env, cwd=REPO_DIR)
        self.gateways[name] = g
        return g

    def wait_gateway(self, g: Gateway, check_post: bool = True) -> None:
        assert g.proc is not None
        wait_until(f"gateway {g.name}",
                   lambda: http_request(g.port, "GET", "/healthz", timeout=2)[0] == 200,
                   self.procs, g.proc, 60)
        if check_post:
            status, body = post_images(g.port)
            if status != 200:
                raise HarnessError(f"gateway {g.name} answered {status} to the check request: "
                                   f"{body[:500]!r}\n{tail(self.tmp / f'gateway-{g.name}.log')}")
            try:
                data = json.loads(body)["data"]
                assert len(data) == self.s.n and len(data[0]["b64_json"]) >= g.upstream.image_bytes
            except Exception as exc:  # noqa: BLE001
                raise HarnessError(f"gateway {g.name}: unexpected answer ({exc}): {body[:300]!r}") from None

    def stop_gateway(self, g: Gateway) -> None:
        if g.proc is not None:
            self.procs.stop(g.proc)
            self.procs.started = [x for x in self.procs.started if x[1] is not g.proc]

    # -- scenarios ------------------------------------------------------------------------------

    def port_of(self, target: str, profile: str) -> int:
        if target == "direct":
            return self.upstreams[profile].port
        if target == "nginx":
            return self.nginx_ports[profile]
        return self.gateways[profile].port

    def rounds(self) -> None:
        s = self.s
        plan = [sc for sc in ("S1", "S2", "S3") if sc in self.scenarios]
        if not plan:
            return
        profile = {"S1": "small", "S2": "small", "S3": "large"}
        # Warm-up: each target on each profile once (connection pools, lazy imports, caches).
        for prof in sorted({profile[sc] for sc in plan}):
            for t in self.targets:
                conns = s.s1_conns if prof == "small" else s.s3_conns
                self.wrk.run(self.port_of(t, prof), conns, 2, s.warmup_s, label=f"warm-up {t} {prof}")
        for r in range(s.rounds):
            k = r % len(self.targets)
            order = self.targets[k:] + self.targets[:k]
            rnd: dict[str, dict[str, Any]] = {}
            for sc in plan:
                rnd[sc] = {}
                for t in order:
                    port = self.port_of(t, profile[sc])
                    if sc == "S1":
                        res = self.wrk.run(port, s.s1_conns, 2, s.duration_s, label=f"S1 {t} r{r + 1}")
                    elif sc == "S2":
                        res = self.wrk.run(port, 1, 1, s.s2_duration_s, label=f"S2 {t} r{r + 1}")
                    else:
                        res = self.wrk.run(port, s.s3_conns, 2, s.duration_s, timeout_s=10,
                                           label=f"S3 {t} r{r + 1}")
                    rnd[sc][t] = res.as_dict()
                log(f"round {r + 1}/{s.rounds} {sc}: " + ", ".join(
                    f"{t} {rnd[sc][t]['rps']:,.0f} req/s p50 {rnd[sc][t]['p50_us'] / 1000:.2f} ms"
                    for t in self.targets))
            self.results["rounds"].append(rnd)


    def s4(self, nofile: int) -> None:
        s = self.s
        # Every proxied in-flight request holds a client and an upstream socket; nginx also
        # needs headroom (seen here: 1 worker with 20,000 fds handles 9,000 but starts "reusing
        # connections" at 9,500), so keep 10 % of the descriptors spare.
        budget = int(nofile * 0.9) // 2 * s.workers
        if s.s4_conns > budget:
            s.s4_cap_reason = (f"S4 capped at {budget:,} connections: the hard RLIMIT_NOFILE is "
                               f"{nofile:,} per process, each proxied request holds 2 fds, 10 % kept "
                               f"spare; raise the hard limit (ulimit -Hn) to run 10,000")
            s.s4_conns = budget
            log(s.s4_cap_reason)
        # Waves that surely complete within the run (the last one may straddle its end).
        expected = s.s4_conns * max(1, math.ceil(s.s4_duration_s / s.s4_delay_s) - 1)
        for t in [x for x in ("nginx", "gateway") if x in self.targets]:
            if t == "gateway":
                g = self.gateways["slow"]
                root = g.proc.pid if g.proc else 0
            else:
                root = self.nginx_proc.pid if self.nginx_proc else 0
            idle = rss_tree(root)
            with RssSampler(root) as sampler:
                res = self.wrk.run(self.port_of(t, "slow"), s.s4_conns, 2, s.s4_duration_s,
                                   timeout_s=max(30.0, 4 * s.s4_delay_s), label=f"S4 {t}")
            after = rss_tree(root)
            self.results["s4"][t] = {
                "conns": s.s4_conns, "delay_s": s.s4_delay_s, "wrk": res.as_dict(),
                "errors": res.error_count, "completed": res.requests,
                "expected_at_least": expected, "idle_rss": idle, "peak_rss": sampler.peak,
                "rss_after": after,
            }
            log(f"S4 {t}: {res.requests:,} completed, {res.error_count} errors, "
                f"peak RSS {sampler.peak / 1e6:.1f} MB")
            if t == "gateway":
                self.stop_gateway(self.gateways["slow"])

    def s5(self) -> None:
        s = self.s
        g = self.gateways["soak"]
        assert g.proc is not None
        port, root = g.port, g.proc.pid
        time.sleep(1.0 if s.quick else 2.0)
        idle = rss_tree(root)
        log(f"S5 idle RSS {idle / 1e6:.1f} MB; warm-up {s.s5_warmup:,} requests")
        if s.s5_warmup:
            warm = self.wrk.run(port, s.s5_conns, 2, s.s5_max_s, timeout_s=10,
                                stop_after=s.s5_warmup, label="S5 warm-up")
        else:
            warm = None
        time.sleep(0.5)
        rss_warm = rss_tree(root)
        log(f"S5 RSS after warm-up {rss_warm / 1e6:.1f} MB; soak {s.s5_requests:,} requests")
        with RssSampler(root, interval=0.5) as sampler:
            res = self.wrk.run(port, s.s5_conns, 2, s.s5_max_s, timeout_s=10,
                               stop_after=s.s5_requests, label="S5 soak")
        time.sleep(0.5)
        rss_end = rss_tree(root)
        time.sleep(1.0 if s.quick else 3.0)
        rss_idle_end = rss_tree(root)
        self.results["s5"] = {
            "idle_rss": idle, "warmup_requests": warm.requests if warm else 0,
            "warmup_wrk": warm.as_dict() if warm else None,
            "rss_after_warmup": rss_warm, "soak_wrk": res.as_dict(), "soak_requests": res.requests,
            "rss_end": rss_end, "rss_idle_after_soak": rss_idle_end, "peak_rss": sampler.peak,
            "growth": (rss_end - rss_warm) / rss_warm if rss_warm else None,
            "errors": res.error_count + (warm.error_count if warm else 0),
            "samples": sampler.samples,
        }
        log(f"S5: {res.requests:,} requests at {res.rps:,.0f} req/s, RSS {rss_warm / 1e6:.1f} -> "
            f"{rss_end / 1e6:.1f} MB, errors {self.results['s5']['errors']}")

    # -- main -----------------------------------------------------------------------------------

    def run(self) -> None:
        with self.load:
            self._run()
            self.phase("end")
        self.results["other_cpu_cores"] = {
            ph: {"average": round(self.load.average(ph) or 0.0, 3),
                 "peak": round(self.load.peak.get(ph, 0.0), 3)} for ph in self.load.by_phase}

    def _run(self) -> None:
        nofile = raise_nofile()
        self.results["nofile"] = nofile
        self.results["loadavg_start"] = os.getloadavg()
        profiles = self._needed_profiles()
        log(f"temp dir {self.tmp}; starting fake upstreams {sorted(profiles)}")
        self.start_upstreams(profiles)
        if "nginx" in self.targets:
            nginx_profiles = {p for p in profiles if not (p == "large" and not {"S3"} & set(self.scenarios))}
            self.start_nginx(nginx_profiles, nofile)
        if "gateway" in self.targets:
            wanted = []
            if {"S1", "S2"} & set(self.scenarios):
                wanted.append(("small", "small"))
            if "S3" in self.scenarios:
                wanted.append(("large", "large"))
            if "S4" in self.scenarios:
                wanted.append(("slow", "slow"))
            if "S5" in self.scenarios:
                wanted.append(("soak", "large"))
            for name, prof in wanted:  # start them all, then wait: start-ups overlap
                self.start_gateway(name, self.upstreams[prof])
            for name, _ in wanted:
                # The soak gateway gets no request before S5: its idle RSS is a fresh process's.
                self.wait_gateway(self.gateways[name], check_post=name not in ("soak", "slow"))
            for name, g in self.gateways.items():
                assert g.proc is not None
                log(f"gateway {name}: pid {g.proc.pid}, port {g.port}, tree {tree_pids(g.proc.pid)}")
        if self.nginx_proc is not None:
            log(f"nginx: pid {self.nginx_proc.pid}, ports {self.nginx_ports}")
        self.phase("S1-S3")
        self.rounds()
        self.check_access_log()
        for name in ("small", "large"):
            if name in self.gateways:
                self.stop_gateway(self.gateways[name])
        if "S4" in self.scenarios and ({"nginx", "gateway"} & set(self.targets)):
            self.phase("S4")
            self.s4(nofile)
        if "S5" in self.scenarios and "gateway" in self.targets:
            self.phase("S5")
            self.s5()
            self.stop_gateway(self.gateways["soak"])

    def check_access_log(self) -> None:
        """The gateway must run with its access log on: count the lines it wrote."""
        g = self.gateways.get("small")
        if g is None:
            return
        served = self.wrk.requests_by_port.get(g.port, 0)
        try:
            with open(self.tmp / "gateway-small.log", "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except OSError:
            lines = 0
        self.results["access_log"] = {"requests": served, "log_lines": lines}
        if served and lines < served * 0.9:
            self.results.setdefault("notes", []).append(
                f"the gateway wrote {lines:,} log lines for {served:,} requests: its access log "
                f"looks off (server.access_log: true is set), so it was measured without it")

    def close(self) -> None:
        self.procs.stop_all()
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept {self.tmp}")


def _connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


# --------------------------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def fmt_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def summarize(b: Bench) -> tuple[list[list[str]], dict[str, Any], list[str], list[str]]:
    """Table rows, medians (for --json), notes and misses."""
    s, res = b.s, b.results
    rows: list[list[str]] = []
    med: dict[str, Any] = {}
    notes: list[str] = list(res.get("notes", []))
    for ph in ("S1-S3", "S4", "S5"):
        avg = b.load.average(ph)
        if avg is not None and avg >= 0.15:
            notes.append(f"other processes used {avg:.2f} of the {os.cpu_count()} cores on average "
                         f"during {ph} (peak {b.load.peak.get(ph, 0):.2f}): those numbers are disturbed")
    misses: list[str] = []
    rounds = res["rounds"]
    targets = b.targets

    def judge(ok: bool | None, what: str) -> str:
        if s.quick:
            return "(quick)"
        if ok is None:
            return "n/a"
        if not ok:
            misses.append(what)
        return "PASS" if ok else "MISS"

    def col(sc: str, t: str, key: str) -> float | None:
        if t not in targets:
            return None
        return median([r[sc][t][key] for r in rounds if sc in r and t in r[sc]])

    def ratio(sc: str, key: str, num: str, den: str) -> float | None:
        if num not in targets or den not in targets:
            return None
        return median([r[sc][num][key] / r[sc][den][key] for r in rounds
                       if sc in r and r[sc][den][key]])

    def errs(sc: str, t: str) -> int:
        return sum(r[sc][t]["error_count"] for r in rounds if sc in r and t in r[sc])

    for sc in ("S1", "S3"):
        if not rounds or sc not in rounds[0]:
            continue
        label = (f"S1 1 KB, {s.s1_conns} conns" if sc == "S1" else f"S3 2 MB, {s.s3_conns} conns")
        rps = {t: col(sc, t, "rps") for t in TARGETS}
        gn, gd = ratio(sc, "rps", "gateway", "nginx"), ratio(sc, "rps", "gateway", "direct")
        nd = ratio(sc, "rps", "nginx", "direct")
        thr = 0.40 if sc == "S1" else 0.65
        gw_errs = errs(sc, "gateway") if "gateway" in targets else 0
        ok = None if gn is None else (gn >= thr and gw_errs == 0)
        rows.append([label, "req/s", fmt_num(rps["direct"]), fmt_num(rps["nginx"]),
                     fmt_num(rps["gateway"]), fmt_num(gn, 2), fmt_num(gd, 2),
                     f">= {thr:.2f} x nginx", judge(ok, f"{sc} req/s")])
        med[sc] = {"rps": rps, "gateway_over_nginx": gn, "gateway_over_direct": gd,
                   "nginx_over_direct": nd}
        if sc == "S1":
            p50 = {t: col(sc, t, "p50_us") for t in TARGETS}
            p99 = {t: col(sc, t, "p99_us") for t in TARGETS}
            rows.append([label, "p50 / p99 ms"] + [
                "-" if p50[t] is None else f"{fmt_ms(p50[t])} / {fmt_ms(p99[t])}" for t in TARGETS]
                + ["", "", "", ""])
            med[sc].update(p50_us=p50, p99_us=p99)
        else:
            mb = {t: col(sc, t, "mbps") for t in TARGETS}
            rows.append([label, "MB/s", fmt_num(mb["direct"]), fmt_num(mb["nginx"]),
                         fmt_num(mb["gateway"]), fmt_num(ratio(sc, "mbps", "gateway", "nginx"), 2),
                         fmt_num(ratio(sc, "mbps", "gateway", "direct"), 2), "", ""])
            med[sc]["mbps"] = mb
        for t in targets:
            if errs(sc, t):
                notes.append(f"{sc} {t}: {errs(sc, t)} errors (socket errors + non-2xx) over the rounds")

    if rounds and "S2" in rounds[0]:
        label = "S2 1 conn"
        p50 = {t: col("S2", t, "p50_us") for t in TARGETS}
        p99 = {t: col("S2", t, "p99_us") for t in TARGETS}
        rows.append([label, "p50 / p99 ms"] + [
            "-" if p50[t] is None else f"{fmt_ms(p50[t])} / {fmt_ms(p99[t])}" for t in TARGETS]
            + ["", "", "", ""])

        def added(t: str, key: str) -> float | None:
            if t not in targets or "direct" not in targets:
                return None
            return median([r["S2"][t][key] - r["S2"]["direct"][key] for r in rounds if "S2" in r])

        a50 = {t: added(t, "p50_us") for t in ("nginx", "gateway")}
        a99 = {t: added(t, "p99_us") for t in ("nginx", "gateway")}

        def fa(v: float | None) -> str:
            return "-" if v is None else f"{v / 1000:+.3f}"

        rows.append([label, "added p50 ms", "-", fa(a50["nginx"]), fa(a50["gateway"]), "", "",
                     "<= 0.35 ms", judge(None if a50["gateway"] is None else
                                         a50["gateway"] <= 350 and errs("S2", "gateway") == 0,
                                         "S2 added p50")])
        rows.append([label, "added p99 ms", "-", fa(a99["nginx"]), fa(a99["gateway"]), "", "",
                     "<= 1 ms", judge(None if a99["gateway"] is None else a99["gateway"] <= 1000,
                                      "S2 added p99")])
        med["S2"] = {"p50_us": p50, "p99_us": p99, "added_p50_us": a50, "added_p99_us": a99}
        for t in targets:
            if errs("S2", t):
                notes.append(f"S2 {t}: {errs('S2', t)} errors over the rounds")
    # Order rows S1, S2, S3 (S3 was built with S1 above).
    rows.sort(key=lambda r: r[0][:2])

    s4 = res.get("s4") or {}
    if s4:
        label = f"S4 {s.s4_conns:,} in-flight"

        def cell(t: str, key: str) -> str:
            if t not in s4:
                return "-"
            if key == "errors":
                return f"{s4[t]['errors']:,} ({s4[t]['completed']:,} ok)"
            return fmt_num(s4[t][key] / 1e6)

        gw = s4.get("gateway")
        rows.append([label, "errors", "-", cell("nginx", "errors"), cell("gateway", "errors"), "", "",
                     "0", judge(None if gw is None else gw["errors"] == 0, "S4 errors")])
        rows.append([label, "peak RSS MB", "-", cell("nginx", "peak_rss"), cell("gateway", "peak_rss"),
                     "", "", "<= 300 MB",
                     judge(None if gw is None else gw["peak_rss"] <= 300e6, "S4 peak RSS")])
        med["S4"] = {t: {k: v for k, v in d.items()} for t, d in s4.items()}
        if s.s4_cap_reason:
            notes.append(s.s4_cap_reason + f" (asked for {s.s4_conns_requested:,})")
        for t, d in s4.items():
            if d["completed"] < d["expected_at_least"] * 0.9:
                notes.append(f"S4 {t}: only {d['completed']:,} requests completed in "
                             f"{s.s4_duration_s:g} s (>= {d['expected_at_least']:,} expected with a "
                             f"{s.s4_delay_s:g} s upstream)")
    s5 = res.get("s5") or {}
    if s5:
        label = f"S5 soak {s5['soak_requests']:,} x 2 MB"
        g = s5["growth"]
        rows.append([label, "RSS warm -> end MB", "-", "-",
                     f"{s5['rss_after_warmup'] / 1e6:.0f} -> {s5['rss_end'] / 1e6:.0f} ({g * 100:+.1f} %)",
                     "", "", "<= +10 %",
                     judge(g is not None and g <= 0.10 and s5["errors"] == 0, "S5 RSS growth")])
        rows.append(["S5 idle (fresh start)", "RSS MB", "-", "-", f"{s5['idle_rss'] / 1e6:.1f}", "", "",
                     "<= 60 MB", judge(s5["idle_rss"] <= 60e6, "S5 idle RSS")])
        med["S5"] = {k: v for k, v in s5.items() if k != "samples"}
        if s5["errors"]:
            notes.append(f"S5: {s5['errors']} errors (socket errors + non-2xx)")
        if s5["soak_requests"] < s.s5_requests:
            notes.append(f"S5: stopped by the {s.s5_max_s:g} s bound after {s5['soak_requests']:,} "
                         f"of {s.s5_requests:,} requests")
        notes.append(f"S5: soak at {s5['soak_wrk']['rps']:,.0f} req/s; peak RSS "
                     f"{s5['peak_rss'] / 1e6:.0f} MB; idle after soak "
                     f"{s5['rss_idle_after_soak'] / 1e6:.0f} MB")
    return rows, med, notes, misses


def render(rows: list[list[str]]) -> str:
    head = ["scenario", "metric", "direct", "nginx", "gateway", "gw/nginx", "gw/direct", "target",
            "result"]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    right = {2, 3, 4, 5, 6}

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def header(b: Bench, nginx_v: str, wrk_v: str) -> str:
    s = b.s
    mode = "quick (CI smoke: 1 round, reduced counts, targets not judged)" if s.quick else \
        f"full, median of {s.rounds} rounds"
    return (f"OpenGateway benchmark - {mode}\n"
            f"gateway --workers {s.workers}, nginx worker_processes {s.workers}, fake upstream "
            f"{s.upstream_workers} process(es) per upstream; S1/S3 {s.duration_s:g} s, S2 "
            f"{s.s2_duration_s:g} s per measurement\n"
            f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Linux {platform.release()}; "
            f"Python {platform.python_version()}; nginx {nginx_v}; wrk {wrk_v}; load average at "
            f"start {b.results.get('loadavg_start', (0,))[0]:.2f}; CPU used by other processes "
            f"during S1-S3: {fmt_num(b.load.average('S1-S3'), 2)} cores")


def main(argv: list[str] | None = None) -> int:
    args, s = parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, on_term)
    try:
        nginx, wrk = ensure_tools()
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    nginx_v = tool_version([nginx, "-v"], r"nginx/(\S+)")
    wrk_v = tool_version([wrk, "-v"], r"wrk (?:debian/)?(\S+)")
    b = Bench(args, s, nginx, wrk)
    status = 0
    try:
        b.run()
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything it started", file=sys.stderr)
        status = 130
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        status = 1
    finally:
        b.close()
    if status:
        return status
    rows, med, notes, misses = summarize(b)
    out = [header(b, nginx_v, wrk_v), "", render(rows)]
    if notes:
        out += [""] + [f"note: {n}" for n in notes]
    print("\n".join(out), flush=True)
    if args.json:
        doc = {"settings": s.__dict__, "targets": b.targets, "scenarios": b.scenarios,
               "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
                           "python": platform.python_version(), "nginx": nginx_v, "wrk": wrk_v},
               "medians": med, "raw": b.results, "misses": misses, "table": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    log(f"done in {time.monotonic() - T0:.0f} s")
    if args.strict and misses and not s.quick:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
