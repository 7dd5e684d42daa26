"""wrk runs and their parsed results; the upstream and gateway process records."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import API_PATH, BENCH_KEY, POST_LUA, HarnessError, Procs, log, tail

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
            stop_after: int | None = None, label: str = "",
            headers: dict[str, str] | None = None, path: str = API_PATH,
            body: tuple[Path, str] | None = None, request_hook: str | None = None) -> WrkResult:
        """One wrk run at http://127.0.0.1:port/v1/images/generations (or ``path``).

        With ``stop_after`` the run ends after that many responses (each thread stops at its
        share and drops a marker file; then wrk gets SIGINT), ``duration_s`` being the bound.
        ``body``: (file, Content-Type) of the body to send instead of post.lua's JSON request.
        ``request_hook``: "key" (an Idempotency-Key of its own on every request) or "plain" (the
        same Lua hook without it), post.lua's BENCH_REQUEST_HOOK.
        """
        self.count += 1
        threads = max(1, min(threads, conns))
        out_path = self.tmp / f"wrk-{self.count}.out"
        env = dict(os.environ, BENCH_KEY=BENCH_KEY)
        if headers:
            env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
        if body is not None:
            env.update(BENCH_BODY_FILE=str(body[0]), BENCH_CONTENT_TYPE=body[1])
        if request_hook is not None:
            # Keys unique across runs: a key seen in an earlier run would be a replay.
            env.update(BENCH_REQUEST_HOOK=request_hook, BENCH_KEY_PREFIX=f"bench-{os.getpid()}-{self.count}")
        stop_base = None
        per_thread = 0
        if stop_after:
            per_thread = math.ceil(stop_after / threads)
            stop_base = self.tmp / f"wrk-{self.count}.stop"
            env.update(BENCH_MAX_REQUESTS=str(per_thread), BENCH_STOP_FILE=str(stop_base))
        argv = [self.path, "-t", str(threads), "-c", str(conns), "-d", f"{max(1, math.ceil(duration_s))}s",
                "--timeout", f"{max(1, math.ceil(timeout_s))}s", "-s", str(POST_LUA),
                f"http://127.0.0.1:{port}{path}"]
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
    kind: str = "images"        # what it answers: "images" (JSON), "stream" (SSE), "edit" (JSON to edits)
    stream_partials: int = 0    # kind "stream": partial images before the completed one
    event_gap_s: float = 0.0    # kind "stream": seconds between events
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    images: list[str] | None = None  # the b64_json strings it answers with, once seen
    events: list[tuple[str, str]] | None = None  # kind "stream": (event name, b64_json), once seen


@dataclass
class Gateway:
    name: str
    upstream: Upstream
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    conf: Path | None = None
