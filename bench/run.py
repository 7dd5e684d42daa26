#!/usr/bin/env python3
"""OpenGateway performance benchmark: one command, one table.

Run (from the repository root, with the project's Python environment)::

    python bench/run.py                  # full run: 3 rounds, about 11 minutes on 2 cores
    python bench/run.py --quick          # CI smoke run: 1 round, short, reduced counts, no targets
    python bench/run.py --rounds 5 --workers 2 --json out.json
    python bench/run.py --only direct,nginx --scenarios S1,S3   # harness without the gateway
    python bench/run.py --peers litellm,portkey --scenarios S1,S2,S3,S4   # with the peers

What it starts, all on free ports of 127.0.0.1 and in a temporary directory (removed at the end
unless ``--keep-tmp``), every process by its own pid, all of them stopped on exit, error or
Ctrl-C:

* ``bench/fake_upstream.py`` three times: *small* (1 KB base64 image), *large* (2 MB base64
  image) and *slow* (1 KB, each answer held ``--s4-delay-s`` = 5 s); for S6 and S7 four more:
  *stream* and *relay* (image streams as Server-Sent Events, see S6), *edit* (answers
  ``POST /v1/images/edits`` with a 1 KB image) and *edit_slow* (the same, held ``--s7-delay-s``). It is a raw asyncio
  Protocol on uvloop answering with pre-built bytes (one process each by default,
  ``--upstream-workers`` for more, SO_REUSEPORT); alone it serves ~80k req/s of the small answer
  on this class of machine, well above what either proxy reaches.
* nginx (Debian's ``nginx-light``; installed with apt-get if ``nginx`` or ``wrk`` is missing) as
  the reference reverse proxy: a generated config with one server block per upstream,
  ``worker_processes`` equal to the gateway's ``--workers``, upstream keepalive,
  ``proxy_http_version 1.1``, an access log (the gateway logs every request too), response
  buffering in memory (``proxy_buffers 32 64k``, never to a temp file), error log and pid file in
  the temp dir, run as ``nginx -c CONF -p PREFIX -g 'daemon off;'``. In front of the streams
  ``proxy_buffering off`` (each event goes out as it arrives); in front of the edits
  ``client_max_body_size 64m`` and ``client_body_buffer_size 8m`` with request buffering on (its
  default): like the gateway, it reads the whole upload into memory before calling the upstream.
* ``bench/bare_proxy.py`` per upstream for S1-S3 ("aiohttp" in the table): an aiohttp handler
  that decodes the body with msgspec and forwards it with an aiohttp ClientSession, no features:
  the floor of any aiohttp + msgspec proxy on this machine, measured in the same run.
* the gateway, ``python -m gateway serve --config CONF --host 127.0.0.1 --port P``
  (``--workers N`` when N > 1), with the production features on: key auth (one key, stored as
  its SHA-256), request validation, the router, metrics and the access log (written with the
  gateway's stderr to a file in the temp dir). One instance per upstream plus a fresh one for
  the soak. Ready when ``GET /healthz`` answers 200; each proxy is then checked with one real
  request before it is measured.

and drives them with ``wrk`` and ``bench/post.lua`` (a POST of an OpenAI images request with a
bearer key; the Lua ``done()`` hook prints latency percentiles and error counts as JSON).

Scenarios (``direct`` is wrk straight at the fake upstream, measured in the same run):

S1  1 KB image, 32 connections, 2 wrk threads: req/s and p50/p99 for direct, nginx, aiohttp,
    gateway. Target: gateway req/s >= 0.40 x nginx; also judged: >= 0.75 x the bare aiohttp
    proxy (the issue's reasoning behind the 0.40).
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
S6  image streams (``stream: true``; the gateway's openai plugin sends ``stream`` and
    ``partial_images`` upstream and relays the events): (a) one connection, request after
    request, 1 partial image + the completed one, 1 KB of base64 each, the second event 2 ms after
    the first: the time to the first ``event:`` bytes, p50 and p99, of direct, nginx and the
    gateway, measured by ``bench/async_client.py`` (wrk cannot time a first event), and the time
    added over direct. Target: gateway adds <= 1 ms at p50. (b) 2 partial images + the completed
    one, 2 MB of base64 each, 8 connections, wrk: req/s and MB/s. Target: >= 0.65 x nginx.
S7  edits: a multipart ``POST /v1/images/edits`` as the official SDK sends it (fields ``model``,
    ``prompt``, file ``image``: a valid 4 MiB PNG), answered with a 1 KB image; 8 connections,
    wrk: req/s of direct, nginx, gateway (no target). Then ``--s7-inflight`` (100) edits sent at
    once by the asyncio client against *edit_slow*: the peak RSS of the proxy's process tree over
    its idle RSS (after one warm-up edit) divided by the edits held at once. Target: <= 1.5 x the
    upload. The table says where each proxy held the upload (the gateway: in memory up to
    ``server.upload_memory_bytes``, 16 MiB a request, then temporary files).
S5  soak on a freshly started gateway: idle RSS after start-up (before any request), then a
    warm-up of ``--s5-warmup`` 2 MB requests, RSS after warm-up, then ``--s5-requests``
    (20,000) more, RSS at the end (wrk stops by count; bounded by ``--s5-max-s``).
    Target: growth <= 10 % after warm-up, idle RSS <= 60 MB.

S1-S3, S6 and S7 (but its in-flight part) run ``--rounds`` times, interleaving direct/nginx/
aiohttp/gateway (S6, S7: direct/nginx/gateway) in rotating order, after one short warm-up per
target; the table shows the median of the rounds (ratios and added latencies
are computed per round, then the median taken). RSS is VmRSS summed over the process tree
(master + workers) read from /proc. Nothing is pinned to a CPU: the machine is shared, so
expect noise between runs and compare ratios rather than absolute numbers. To tell a clean run
from a disturbed one, the CPU time used by processes this run did not start is measured once a
second (machine busy time from /proc/stat minus our own process trees) and shown in the header;
a note flags any phase where it averaged 0.15 cores or more.

``--quick`` (for CI): 1 round, 2 s per measurement (S6, S7: 1 s), S4 with 500 connections and
a 1 s upstream, S5 with 600 requests, S7 with 16 edits in flight and a 1 s upstream; the targets
are not judged. Finishes in about a minute.

The peers, only with ``--peers litellm,portkey`` (either or both; never in CI, and ``--quick``
alone installs nothing): LiteLLM's proxy and Portkey's AI gateway, measured beside the gateway
in the same S1-S3 rounds (same rotation) and in S4, against the same fake upstreams, one
instance per upstream; columns ``litellm`` / ``portkey`` and ratios ``gw/litellm`` /
``gw/portkey`` join the table, and the header says which version of each ran. S5 stays the
gateway's: its 20,000 x 2 MB soak at the peers' S3 rates (15-30 req/s here) would add 10-20
minutes per peer.

* Installed from the registries on first use: ``pip install 'litellm[proxy]'`` in a fresh venv
  made with this Python (the newest release that installs on it), ``npm install
  @portkey-ai/gateway`` (the newest, run with the machine's node), into ``--peers-cache DIR``
  (default ``~/.cache/opengateway-bench``; ``none`` = the run's temp dir). Later runs reuse
  them; ``--peers-update`` reinstalls to take newer releases. The first install takes about a
  minute (LiteLLM) and a few seconds (Portkey).
* LiteLLM: ``litellm --config CONF --host 127.0.0.1 --port P --num_workers W`` (W =
  ``--workers``), one model entry sending ``openai/gpt-image-1`` to the fake upstream, the bench
  key as its ``master_key`` (so it checks the same bearer key the gateway does), telemetry off,
  no callbacks, no database, its bundled price map (``LITELLM_LOCAL_MODEL_COST_MAP=True``).
* Portkey: one Node process, ``--headless``; every request carries ``x-portkey-provider`` and
  ``x-portkey-custom-host`` (wrk sends them through ``BENCH_HEADERS``); it checks no key.
  Its entry point has no option for the listen address and listens on every interface, so
  ``loopback.cjs`` is preloaded (``node --require``) to make every listen use 127.0.0.1.
* Loopback only, checked: before any request, each peer's listening sockets are read from
  /proc (``sockets.py``); one that listens on anything but loopback is stopped and the run
  refused. When a peer stops, any connection it holds to a non-loopback address is noted.
* Each peer's answer to one check request must carry the upstream's images byte for byte (the
  gateway's too) before it is measured.

Exit status: 0 when every measurement ran (whatever the PASS/MISS column says; ``--strict``
makes a MISS exit 3), 1 when the harness failed (a process did not start, a proxy answered an
error to the check request, wrk failed), 130 on Ctrl-C.

Beside this file: ``procs.py`` (tools, child processes, ports, RSS), ``wrk.py`` (wrk runs and
their results), ``report.py`` (the table), ``fake_upstream.py`` and ``fake_answers.py`` (its
answers), ``post.lua``; for S6 and S7 ``s6_s7.py`` (profiles, measurements, the in-flight phase),
``payloads.py`` (their request bodies and checks), ``async_client.py`` (the asyncio client) and
``report_s67.py`` (their rows); for the peers
``peer_install.py`` (installs and the cache), ``peers.py`` (configs, start, checks),
``sockets.py`` (a process tree's TCP sockets from /proc) and ``loopback.cjs``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The rest of the benchmark, beside this file (run as a script, bench/ is on sys.path).
import s6_s7
from async_client import AsyncClient, Body
from payloads import check_edit, check_stream, fetch_stream
from peer_install import DEFAULT_CACHE, Installed, install
from peers import PEERS, Peer, PeerRunner
from procs import (BARE_PROXY, BENCH_KEY, FAKE_UPSTREAM, REPO_DIR, SCENARIOS, T0, TARGETS, HarnessError, LoadWatcher,
                   Procs, RssSampler, check_images, compile_bytecode, cpu_model, ensure_tools, free_ports,
                   gateway_conf, http_request, image_b64s, log, post_images, raise_nofile, rss_of, rss_tree,
                   tool_version, tree_pids, wait_until)
from report import header, render, summarize
from wrk import Gateway, Upstream, Wrk

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
    #: Worker processes of the gateway and nginx in S4: more than ``workers`` when one process may
    #: not open the descriptors S4 needs (``plan_s4``); ``s4_workers_reason`` says why.
    s4_workers: int = 1
    s4_workers_reason: str = ""
    #: The gateway whose idle RSS is measured with several workers (S5's rows).
    idle_workers: int = 2
    s67_duration_s: float = 5.0   # S6 and S7, per measurement
    s6_conns: int = 8
    s6_event_gap_s: float = 0.002
    s7_conns: int = 8
    s7_upload_bytes: int = 4 * 1024 * 1024
    s7_inflight: int = 100
    s7_delay_s: float = 5.0
    s7_upload_file_bytes: int = 0  # the PNG's size, once built
    s7_body_bytes: int = 0         # the whole multipart body's
    #: server.upload_memory_bytes in the gateway's config (its default, written out).
    gateway_upload_memory_bytes: int = 16 * 1024 * 1024


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    ap = argparse.ArgumentParser(
        description="OpenGateway benchmark: fake upstream + nginx + gateway, driven by wrk.",
        epilog="See the module docstring (bench/run.py) for what each scenario measures.",
    )
    ap.add_argument("--quick", action="store_true", help="CI mode: 1 round, seconds, no targets")
    ap.add_argument("--rounds", type=int, help="rounds of S1-S3, S6, S7 (median shown); default 3, quick 1")
    ap.add_argument("--workers", type=int, default=1,
                    help="gateway worker processes = nginx worker_processes (default 1)")
    ap.add_argument("--upstream-workers", type=int, default=1,
                    help="fake upstream processes per upstream (SO_REUSEPORT; default 1)")
    ap.add_argument("--json", metavar="FILE", help="write every raw measurement and the medians")
    ap.add_argument("--only", default=",".join(TARGETS),
                    help="targets to run, comma-separated subset of direct,nginx,aiohttp,gateway")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="scenarios to run, comma-separated subset of S1..S7")
    ap.add_argument("--duration-s", type=int, help="seconds per S1/S3 measurement (default 10)")
    ap.add_argument("--s2-duration-s", type=int, help="seconds per S2 measurement (default 10)")
    ap.add_argument("--s4-conns", type=int, help="S4 connections (default 10000, quick 500)")
    ap.add_argument("--s4-delay-s", type=float, help="S4 upstream delay (default 5, quick 1)")
    ap.add_argument("--s4-duration-s", type=int, help="S4 wrk duration (default 12, quick 3)")
    ap.add_argument("--s5-requests", type=int, help="S5 soak requests (default 20000, quick 500)")
    ap.add_argument("--s5-warmup", type=int, help="S5 warm-up requests (default 2000, quick 100)")
    ap.add_argument("--s5-max-s", type=float, help="upper bound on the S5 soak time (default 900)")
    ap.add_argument("--s67-duration-s", type=float, help="seconds per S6/S7 measurement (default 5, quick 1)")
    ap.add_argument("--s7-inflight", type=int, help="S7 edits held at once (default 100, quick 16)")
    ap.add_argument("--s7-delay-s", type=float, help="S7 upstream delay for the in-flight edits (default 5, quick 1)")
    ap.add_argument("--s7-upload-bytes", type=int, default=4 * 1024 * 1024,
                    help="S7 upload size (a PNG of at least this many bytes; default 4 MiB)")
    ap.add_argument("--peers", default="",
                    help="also measure these peers, comma-separated subset of litellm,portkey: "
                         "installed from PyPI / npm on first use (see --peers-cache)")
    ap.add_argument("--peers-cache", default=str(DEFAULT_CACHE), metavar="DIR",
                    help=f"where the peers' installs are kept between runs (default {DEFAULT_CACHE}); "
                         "'none': install under the run's temp dir, removed at the end")
    ap.add_argument("--peers-update", action="store_true",
                    help="reinstall the peers (to take their newest releases)")
    ap.add_argument("--strict", action="store_true", help="exit 3 when a target is MISSed")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--verbose", "-v", action="store_true", help="log every measurement")
    args = ap.parse_args(argv)

    args.only = [t.strip() for t in args.only.split(",") if t.strip()]
    bad = [t for t in args.only if t not in TARGETS]
    if bad:
        ap.error(f"--only: unknown target(s) {bad}; choose from {TARGETS}")
    args.peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        ap.error(f"--peers: unknown peer(s) {bad}; choose from {PEERS}")
    args.peers = [p for p in PEERS if p in args.peers]  # fixed column order
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
        s67_duration_s=args.s67_duration_s or (1.0 if q else 5.0),
        s7_inflight=args.s7_inflight or (16 if q else 100),
        s7_delay_s=args.s7_delay_s if args.s7_delay_s is not None else (1.0 if q else 5.0),
        s7_upload_bytes=args.s7_upload_bytes,
    )
    s.s4_conns_requested = s.s4_conns
    s.s4_workers = s.workers  # (plan_s4 may give S4 more)
    return args, s


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
            {extra}
        }}
    }}
"""

#: The "keyed" gateway (S1/S2 with and without an Idempotency-Key): the memory backend, every
#: answer kept for 60 s (the default 24 h would keep each run's few hundred thousand answers past
#: the default 256 MB cap, and the rounds would end on "full" answers instead of kept ones).
KEYED_CONF = """\
idempotency: {ttl_s: 60, max_total_bytes: 2147483648}
"""

#: The most worker processes S4 gives the gateway and nginx to stay within the descriptor limit.
MAX_S4_WORKERS = 4


class Bench:
    def __init__(self, args: argparse.Namespace, s: Settings, nginx: str, wrk: str) -> None:
        self.args, self.s = args, s
        self.nginx_bin = nginx
        self.procs = Procs()
        self.tmp = Path(tempfile.mkdtemp(prefix="og-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers may run as another user
        self.wrk = Wrk(wrk, self.procs, self.tmp, args.verbose)
        self.client = AsyncClient(self.procs, self.tmp, BENCH_KEY, args.verbose, log)
        self.bodies: dict[str, Body] = {}
        # The peers are measured like the other targets: same rounds, same rotation.
        self.peers: list[str] = args.peers
        self.targets = args.only + self.peers
        self.installs: dict[str, Installed] = {}
        self.peer_runner: PeerRunner | None = None
        self.scenarios = args.scenarios
        self.upstreams = {
            "small": Upstream("small", s.small_bytes, 0.0),
            "large": Upstream("large", s.large_bytes, 0.0),
            "slow": Upstream("slow", s.small_bytes, s.s4_delay_s),
            **s6_s7.upstreams(s),
        }
        self.nginx_ports: dict[str, int] = {}
        self.bare_ports: dict[str, int] = {}
        self.nginx_proc: subprocess.Popen[bytes] | None = None
        #: The nginx serving each profile (S4's may be an instance of its own: plan_s4).
        self.nginx_of: dict[str, subprocess.Popen[bytes]] = {}
        self.gateways: dict[str, Gateway] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_DIR)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
        self.env["NO_PROXY"] = self.env["no_proxy"] = "127.0.0.1,localhost"
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.results: dict[str, Any] = {"rounds": [], "s4": {}, "s5": {}, "s7_inflight": {}}
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
        if "S4" in self.scenarios and ({"nginx", "gateway", *self.peers} & set(self.targets)):
            need.add("slow")
        return need | s6_s7.needed_profiles(self.scenarios)

    # -- start ----------------------------------------------------------------------------------

    def start_upstreams(self, names: set[str]) -> None:
        for name in sorted(names):
            u = self.upstreams[name]
            u.port = free_ports(1)[0]
            argv = [sys.executable, str(FAKE_UPSTREAM), "--port", str(u.port),
                    "--image-bytes", str(u.image_bytes), "--n", str(self.s.n),
                    "--delay-s", str(u.delay_s), "--workers", str(self.s.upstream_workers)]
            if u.kind == "stream":
                argv += ["--stream-partials", str(u.stream_partials), "--event-gap-s", str(u.event_gap_s)]
            u.proc = self.procs.start(f"fake upstream {name}", argv, self.tmp / f"upstream-{name}.log",
                                      env=self.env)
        for name in sorted(names):
            u = self.upstreams[name]
            assert u.proc is not None
            wait_until(f"fake upstream {name}",
                       lambda u=u: "READY" in (self.tmp / f"upstream-{u.name}.log").read_text(),
                       self.procs, u.proc, 30)
            if u.delay_s == 0:
                # What every proxy in front of it must hand back unchanged (its answer is fixed).
                if u.kind == "stream":
                    u.events = fetch_stream(u.port, u.stream_partials)
                elif u.kind == "edit":
                    body = self.bodies[name]
                    u.images = check_edit(f"fake upstream {name}", u.port, body.content_type,
                                          body.file.read_bytes(), None)
                else:
                    status, raw = post_images(u.port)
                    if status != 200:
                        raise HarnessError(f"fake upstream {name} answered {status}: {raw[:200]!r}")
                    u.images = image_b64s(raw)

    def check_target(self, name: str, port: int, u: Upstream, log_path: Path | None = None) -> None:
        """One request through a proxy in front of ``u``: the upstream's answer comes back unchanged."""
        if u.kind == "stream":
            assert u.events is not None
            check_stream(name, port, u.stream_partials, u.events, log_path)
        elif u.kind == "edit":
            body = self.bodies[u.name]
            check_edit(name, port, body.content_type, body.file.read_bytes(), u.images, log_path)
        else:
            assert u.images is not None
            check_images(name, port, u.images, log_path=log_path)

    def start_nginx(self, names: set[str], nofile: int, workers: int | None = None, tag: str = "") -> None:
        """One nginx serving the profiles ``names``, with ``workers`` worker processes (default:
        ``--workers``); ``tag`` names a second instance (S4's, when it needs more workers)."""
        prefix = self.tmp / f"nginx{tag}"
        for d in ("", "tmp", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (prefix / d).mkdir(parents=True, exist_ok=True)
        os.chmod(prefix, 0o755)
        blocks = []
        for name in sorted(names):
            port = free_ports(1)[0]
            self.nginx_ports[name] = port
            blocks.append(NGINX_BLOCK.format(name=f"up_{name}", port=port,
                                             upstream_port=self.upstreams[name].port,
                                             extra=s6_s7.NGINX_EXTRA.get(name, "")))
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            workers=workers or self.s.workers, nofile=nofile, prefix=prefix,
            worker_connections=max(1024, nofile - 64), blocks="".join(blocks)))
        argv = [self.nginx_bin, "-e", str(prefix / "error.log"), "-c", str(conf), "-p", str(prefix),
                "-g", "daemon off;"]
        proc = self.procs.start(f"nginx{tag}", argv, self.tmp / f"nginx{tag}-stderr.log")
        if not tag:
            self.nginx_proc = proc
        for name in names:
            self.nginx_of[name] = proc
        for name in names:
            port = self.nginx_ports[name]
            wait_until(f"nginx ({name})", lambda port=port: _connects(port), self.procs, proc, 15)
            if self.upstreams[name].delay_s == 0:
                self.check_target(f"nginx ({name})", port, self.upstreams[name], prefix / "error.log")

    def start_bare_proxies(self, names: set[str]) -> None:
        """bench/bare_proxy.py per profile: the floor of any aiohttp + msgspec proxy."""
        procs = {}
        for name in sorted(names):
            port = self.bare_ports[name] = free_ports(1)[0]
            argv = [sys.executable, str(BARE_PROXY), "--port", str(port),
                    "--upstream", f"http://127.0.0.1:{self.upstreams[name].port}"]
            procs[name] = self.procs.start(f"aiohttp proxy {name}", argv, self.tmp / f"aiohttp-{name}.log",
                                           env=self.env)
        for name, proc in procs.items():
            wait_until(f"aiohttp proxy {name}",
                       lambda name=name: "READY" in (self.tmp / f"aiohttp-{name}.log").read_text(),
                       self.procs, proc, 30)
            status, body = post_images(self.bare_ports[name])
            if status != 200:
                raise HarnessError(f"aiohttp proxy ({name}) answered {status}: {body[:300]!r}")

    def start_gateway(self, name: str, upstream: Upstream, workers: int | None = None) -> Gateway:
        g = Gateway(name, upstream, port=free_ports(1)[0])
        g.conf = self.tmp / f"gateway-{name}.yaml"
        conf = gateway_conf(g.port, upstream.port, upload_memory_bytes=self.s.gateway_upload_memory_bytes)
        g.conf.write_text(conf + (KEYED_CONF if name == "keyed" else ""))
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(g.conf),
                "--host", "127.0.0.1", "--port", str(g.port)]
        workers = workers or self.s.workers
        if workers > 1:
            argv += ["--workers", str(workers)]
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
            self.check_target(f"gateway {g.name}", g.port, g.upstream, self.tmp / f"gateway-{g.name}.log")

    def install_peers(self) -> None:
        """Each peer from its registry, or from the cache of an earlier run."""
        cache_arg = self.args.peers_cache
        cache = self.tmp / "peers" if cache_arg.lower() == "none" else Path(cache_arg).expanduser()
        for name in self.peers:
            self.installs[name] = install(name, cache, self.args.peers_update)
        self.peer_runner = PeerRunner(self.installs, self.procs, self.tmp, self.s.workers, dict(os.environ))

    def start_peers(self) -> None:
        """One instance of each peer per upstream it is measured on (like the gateway)."""
        assert self.peer_runner is not None
        profiles = []
        if {"S1", "S2"} & set(self.scenarios):
            profiles.append("small")
        if "S3" in self.scenarios:
            profiles.append("large")
        if "S4" in self.scenarios:
            profiles.append("slow")
        started = [self.peer_runner.start(name, prof, self.upstreams[prof],
                                          self.s.s4_workers if prof == "slow" else None)
                   for name in self.peers for prof in profiles]
        for p in started:  # all started first: their start-ups overlap
            self.peer_runner.wait(p, p.upstream.images)
        self.results["peers"] = {
            name: {"version": inst.version, "runtime": inst.runtime, "home": str(inst.home),
                   "reused": inst.reused,
                   "idle_rss": {p.profile: p.idle_rss for p in started if p.name == name}}
            for name, inst in self.installs.items()}

    def stop_peer(self, p: Peer) -> None:
        assert self.peer_runner is not None
        outside = self.peer_runner.outside_connections(p)
        if outside:
            self.results.setdefault("notes", []).append(
                f"{p.name} ({p.profile}) had connections open to {', '.join(outside)} (not loopback)")
        self.peer_runner.stop(p)

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
        if target == "aiohttp":
            return self.bare_ports[profile]
        if target in PEERS:
            return self.peer(target, profile).port
        return self.gateways[profile].port

    def headers_of(self, target: str, profile: str) -> dict[str, str] | None:
        """Headers beside the bearer key that every request to ``target`` needs (Portkey's routing)."""
        if target not in PEERS:
            return None
        return self.peer(target, profile).headers or None

    def peer(self, name: str, profile: str) -> Peer:
        assert self.peer_runner is not None
        return self.peer_runner.running[(name, profile)]

    def rounds(self) -> None:
        s = self.s
        plan = [sc for sc in ("S1", "S2", "S3") if sc in self.scenarios]
        # S6 and S7 in the same rounds: S6a (time to first event), S6b (relay), S7 (edits).
        extra = [key for sc in ("S6", "S7") if sc in self.scenarios for key in s6_s7.ROUND_KEYS[sc]]
        extra_targets = [t for t in self.targets if t in s6_s7.S67_TARGETS]
        if not extra_targets:
            extra = []
        if not plan and not extra:
            return
        profile = {"S1": "small", "S2": "small", "S3": "large", **s6_s7.PROFILE}
        # Warm-up: each target on each profile once (connection pools, lazy imports, caches).
        for prof in sorted({profile[sc] for sc in plan}):
            for t in self.targets:
                conns = s.s1_conns if prof == "small" else s.s3_conns
                self.wrk.run(self.port_of(t, prof), conns, 2, s.warmup_s, label=f"warm-up {t} {prof}",
                             headers=self.headers_of(t, prof))
        if "keyed" in self.gateways and {"S1", "S2"} & set(plan):
            for hook in ("plain", "key"):
                self.wrk.run(self.gateways["keyed"].port, s.s1_conns, 2, s.warmup_s,
                             label=f"warm-up keyed {hook}", request_hook=hook)
        for key in extra:
            for t in extra_targets:
                if t != "direct":  # the fake upstream has nothing to warm
                    s6_s7.warm_up(self, key, t, self.port_of(t, profile[key]))
        for r in range(s.rounds):
            k = r % len(self.targets)
            order = self.targets[k:] + self.targets[:k]
            rnd: dict[str, dict[str, Any]] = {}
            for key in extra:
                rnd[key] = {}
                for t in [x for x in order if x in extra_targets]:
                    rnd[key][t] = s6_s7.measure(self, key, t, self.port_of(t, profile[key]), f"{key} {t} r{r + 1}")
                log(f"round {r + 1}/{s.rounds} {key}: {s6_s7.round_log(key, rnd[key])}")
            for sc in plan:
                rnd[sc] = {}
                for t in order:
                    port, hdrs = self.port_of(t, profile[sc]), self.headers_of(t, profile[sc])
                    if sc == "S1":
                        res = self.wrk.run(port, s.s1_conns, 2, s.duration_s, label=f"S1 {t} r{r + 1}",
                                           headers=hdrs)
                    elif sc == "S2":
                        res = self.wrk.run(port, 1, 1, s.s2_duration_s, label=f"S2 {t} r{r + 1}",
                                           headers=hdrs)
                    else:
                        res = self.wrk.run(port, s.s3_conns, 2, s.duration_s, timeout_s=10,
                                           label=f"S3 {t} r{r + 1}", headers=hdrs)
                    rnd[sc][t] = res.as_dict()
                log(f"round {r + 1}/{s.rounds} {sc}: " + ", ".join(
                    f"{t} {rnd[sc][t]['rps']:,.0f} req/s p50 {rnd[sc][t]['p50_us'] / 1000:.2f} ms"
                    for t in self.targets))
            self.keyed_round(r, [sc for sc in plan if sc in ("S1", "S2")], rnd)
            self.results["rounds"].append(rnd)

    def keyed_round(self, r: int, plan: list[str], rnd: dict[str, dict[str, Any]]) -> None:
        """S1 and S2 on the "keyed" gateway through wrk's request() hook, without and with an
        Idempotency-Key of its own on every request (the memory backend: each answer kept): what
        the header costs. Both pay the hook's cost in wrk. Each is measured twice for half the
        time, in the order without, with, with, without (ABBA): a machine getting slower or
        faster during the round weighs on both alike. Per hook: the requests and seconds summed,
        the latency percentiles averaged."""
        g = self.gateways.get("keyed")
        if g is None or not plan:
            return
        s = self.s
        for sc in plan:
            conns, threads, duration = (s.s1_conns, 2, s.duration_s) if sc == "S1" else (1, 1, s.s2_duration_s)
            runs: dict[str, list[dict[str, Any]]] = {"plain": [], "key": []}
            for hook in ("plain", "key", "key", "plain"):
                res = self.wrk.run(g.port, conns, threads, max(1.0, duration / 2),
                                   label=f"{sc} keyed {hook} r{r + 1}", request_hook=hook)
                runs[hook].append(res.as_dict())
            rnd[f"{sc} keyed"] = {hook: _combined(two) for hook, two in runs.items()}
            log(f"round {r + 1}/{s.rounds} {sc} Idempotency-Key: " + ", ".join(
                f"{hook} {rnd[f'{sc} keyed'][hook]['rps']:,.0f} req/s p50 "
                f"{rnd[f'{sc} keyed'][hook]['p50_us'] / 1000:.3f} ms" for hook in ("plain", "key")))

    def plan_s4(self, nofile: int) -> None:
        """How many connections S4 holds, and in how many processes. Every proxied request in
        flight holds two descriptors, its client's and its upstream's, and nginx needs headroom
        (seen here: 1 worker with 20,000 fds handles 9,000 but starts "reusing connections" at
        9,500), so each process gets 90 % of the hard RLIMIT_NOFILE over two. Past one process's
        share the gateway and nginx (and LiteLLM) run as many workers as needed, at most
        MAX_S4_WORKERS; past that, S4 holds fewer connections, and the table says so."""
        s = self.s
        per_process = max(1, int(nofile * 0.9) // 2)
        needed = math.ceil(s.s4_conns / per_process)
        s.s4_workers = max(s.workers, min(needed, MAX_S4_WORKERS))
        if s.s4_workers > s.workers:
            s.s4_workers_reason = (
                f"S4 ran the gateway and nginx with {s.s4_workers} worker processes (the other scenarios "
                f"with {s.workers}): {s.s4_conns:,} proxied requests hold {2 * s.s4_conns:,} descriptors, "
                f"one process may open {nofile:,} (the hard RLIMIT_NOFILE; 10 % kept spare)")
            log(s.s4_workers_reason)
        budget = per_process * s.s4_workers
        if s.s4_conns > budget:
            s.s4_cap_reason = (f"S4 capped at {budget:,} connections: the hard RLIMIT_NOFILE is "
                               f"{nofile:,} per process, each proxied request holds 2 fds, 10 % kept "
                               f"spare, at most {MAX_S4_WORKERS} workers; raise the hard limit (ulimit -Hn) "
                               f"to run {s.s4_conns:,}")
            s.s4_conns = budget
            log(s.s4_cap_reason)

    def s4(self) -> None:
        s = self.s
        # Waves that surely complete within the run (the last one may straddle its end).
        expected = s.s4_conns * max(1, math.ceil(s.s4_duration_s / s.s4_delay_s) - 1)
        for t in [x for x in ("nginx", "gateway", *self.peers) if x in self.targets]:
            if t == "gateway":
                g = self.gateways["slow"]
                root = g.proc.pid if g.proc else 0
            elif t in PEERS:
                pp = self.peer(t, "slow")
                root = pp.proc.pid if pp.proc else 0
            else:
                proc = self.nginx_of.get("slow")
                root = proc.pid if proc else 0
            pids = tree_pids(root)
            idle_each = {pid: rss_of(pid) for pid in pids}
            idle = sum(idle_each.values())
            with RssSampler(root) as sampler:
                res = self.wrk.run(self.port_of(t, "slow"), s.s4_conns, 2, s.s4_duration_s,
                                   timeout_s=max(30.0, 4 * s.s4_delay_s), label=f"S4 {t}",
                                   headers=self.headers_of(t, "slow"))
            after = rss_tree(root)
            # Every request in flight, none answered yet: the highest sample before the upstream's
            # delay is up (wrk opens its connections and sends at once). The peak comes later,
            # while the first wave is answered and the next one sent.
            before_answers = [rss for t, rss in sampler.samples if t <= s.s4_delay_s - 0.3]
            in_flight = max(before_answers) if before_answers else sampler.peak
            # The root first (the supervisor, nginx's master), then its workers by pid.
            processes = [{"pid": pid, "idle_rss": idle_each.get(pid, 0), "peak_rss": sampler.peaks.get(pid, 0)}
                         for pid in sorted(sampler.peaks, key=lambda p: (p != root, p))]
            self.results["s4"][t] = {
                "conns": s.s4_conns, "delay_s": s.s4_delay_s, "wrk": res.as_dict(),
                "errors": res.error_count, "completed": res.requests,
                "expected_at_least": expected, "idle_rss": idle, "peak_rss": sampler.peak,
                "rss_after": after, "processes": processes, "workers": s.s4_workers,
                "per_request": (sampler.peak - idle) / s.s4_conns,
                "in_flight_rss": in_flight, "per_request_in_flight": (in_flight - idle) / s.s4_conns,
            }
            split = " + ".join(f"{p['peak_rss'] / 1e6:.0f}" for p in processes)
            log(f"S4 {t}: {res.requests:,} completed, {res.error_count} errors, peak RSS "
                f"{sampler.peak / 1e6:.1f} MB ({split}), "
                f"{(sampler.peak - idle) / s.s4_conns:,.0f} B per request over idle at the peak, "
                f"{(in_flight - idle) / s.s4_conns:,.0f} B with all in flight before the first answer")
            if t == "gateway":
                self.stop_gateway(self.gateways["slow"])
            elif t in PEERS:
                self.stop_peer(self.peer(t, "slow"))

    def measure_idle(self, g: Gateway, workers: int) -> None:
        """A fresh gateway with ``workers`` workers (S5's rows): the RSS of each process once every
        worker serves and a moment has passed, then it is stopped."""
        assert g.proc is not None
        log_path = self.tmp / f"gateway-{g.name}.log"

        def serving() -> bool:  # each worker logs "OpenGateway listening on http://HOST:PORT" when it serves
            text = log_path.read_text(errors="replace")
            return len(re.findall(r"listening on http://\S+:\d+\n", text)) >= workers
        wait_until(f"gateway {g.name}'s {workers} workers", serving, self.procs, g.proc, 60)
        time.sleep(2.0)
        pids = tree_pids(g.proc.pid)
        each = [{"pid": pid, "rss": rss_of(pid)} for pid in sorted(pids, key=lambda p: (p != g.proc.pid, p))]
        self.results["idle"] = {"workers": workers, "processes": each, "rss": sum(p["rss"] for p in each)}
        split = " + ".join(f"{p['rss'] / 1e6:.1f}" for p in each)
        log(f"idle, --workers {workers}: {self.results['idle']['rss'] / 1e6:.1f} MB ({split})")
        self.stop_gateway(g)

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
        if self.peers:
            self.install_peers()  # before anything starts: a failed install costs no measurement
        compile_bytecode()
        if "S4" in self.scenarios:
            self.plan_s4(nofile)
        profiles = self._needed_profiles()
        if {"S6", "S7"} & set(self.scenarios):
            self.bodies = s6_s7.write_bodies(self.tmp, self.s)
        log(f"temp dir {self.tmp}; starting fake upstreams {sorted(profiles)}")
        self.start_upstreams(profiles)
        if "nginx" in self.targets:
            nginx_profiles = {p for p in profiles if not (p == "large" and not {"S3"} & set(self.scenarios))}
            if self.s.s4_workers != self.s.workers and "slow" in nginx_profiles:
                nginx_profiles.discard("slow")  # S4's nginx, with as many workers as the gateway there
                self.start_nginx({"slow"}, nofile, self.s.s4_workers, tag="-s4")
            if nginx_profiles:
                self.start_nginx(nginx_profiles, nofile)
        if "aiohttp" in self.targets:
            self.start_bare_proxies({p for p in profiles if p in ("small", "large")
                                     and (p == "small" or "S3" in self.scenarios)})
        if "gateway" in self.targets:
            wanted = []
            if {"S1", "S2"} & set(self.scenarios):
                wanted.append(("small", "small"))
                wanted.append(("keyed", "small"))  # S1/S2 without and with an Idempotency-Key
            if "S3" in self.scenarios:
                wanted.append(("large", "large"))
            if "S4" in self.scenarios:
                wanted.append(("slow", "slow"))
            if "S5" in self.scenarios:
                wanted.append(("soak", "large"))
                wanted.append(("idle", "large"))  # --workers 2, measured idle and stopped (S5's rows)
            wanted += [(prof, prof) for prof in ("stream", "relay", "edit", "edit_slow") if prof in profiles]
            workers = {"slow": self.s.s4_workers, "idle": max(self.s.idle_workers, self.s.workers)}
            for name, prof in wanted:  # start them all, then wait: start-ups overlap
                self.start_gateway(name, self.upstreams[prof], workers.get(name))
            for name, _ in wanted:
                # The soak gateway gets no request before S5: its idle RSS is a fresh process's.
                self.wait_gateway(self.gateways[name], check_post=name not in ("soak", "slow", "edit_slow", "idle"))
            if "idle" in self.gateways:
                self.measure_idle(self.gateways["idle"], workers["idle"])
            for name, g in self.gateways.items():
                assert g.proc is not None
                log(f"gateway {name}: pid {g.proc.pid}, port {g.port}, tree {tree_pids(g.proc.pid)}")
        if self.peers:
            self.start_peers()
        for proc in {id(p): p for p in self.nginx_of.values()}.values():
            log(f"nginx: pid {proc.pid}, ports {[(n, self.nginx_ports[n]) for n, q in self.nginx_of.items() if q is proc]}")
        self.phase("rounds")
        self.rounds()
        self.check_access_log()
        self.check_keyed()
        for name in ("small", "large", "stream", "relay", "edit", "keyed"):
            if name in self.gateways:
                self.stop_gateway(self.gateways[name])
            for peer in self.peers:
                if self.peer_runner and (peer, name) in self.peer_runner.running:
                    self.stop_peer(self.peer(peer, name))
        if "S4" in self.scenarios and ({"nginx", "gateway", *self.peers} & set(self.targets)):
            self.phase("S4")
            self.s4()
        if "S5" in self.scenarios and "gateway" in self.targets:
            self.phase("S5")
            self.s5()
            self.stop_gateway(self.gateways["soak"])
        if "S7" in self.scenarios and ({"nginx", "gateway"} & set(self.targets)):
            self.phase("S7 in flight")
            s6_s7.s7_inflight(self)
            if "edit_slow" in self.gateways:
                self.stop_gateway(self.gateways["edit_slow"])

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

    def check_keyed(self) -> None:
        """The keyed gateway must have run every keyed request as a new key (none replayed,
        refused or left unkept), or its figures measure something else: its /metrics says."""
        g = self.gateways.get("keyed")
        if g is None:
            return
        status, body = http_request(g.port, "GET", "/metrics")
        if status != 200:
            raise HarnessError(f"gateway keyed: GET /metrics answered {status}")
        outcomes = {m.group(1): float(m.group(2)) for m in re.finditer(
            rb'^opengateway_idempotent_requests_total\{outcome="(\w+)"\} (\S+)$', body, re.M)}
        new = outcomes.pop(b"new", 0.0)
        others = {k.decode(): v for k, v in outcomes.items() if v}
        self.results["keyed"] = {"new": new, "others": others}
        if not new or others:
            raise HarnessError(f"gateway keyed: Idempotency-Key outcomes {{'new': {new:.0f}, **{others}}}: "
                               f"every keyed request should have been new")

    def close(self) -> None:
        self.procs.stop_all()
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept {self.tmp}")


def _combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one kind in one round as one: requests, seconds and errors summed, req/s over the
    sum, latency percentiles averaged (close enough for runs of equal length)."""
    requests = sum(x["requests"] for x in runs)
    seconds = sum(x["duration_s"] for x in runs)
    out: dict[str, Any] = {"requests": requests, "duration_s": seconds, "rps": requests / seconds if seconds else 0.0,
                           "error_count": sum(x["error_count"] for x in runs)}
    for key in ("p50_us", "p90_us", "p99_us"):
        out[key] = sum(x[key] for x in runs) / len(runs)
    return out


def _connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True

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
    out = [header(b, nginx_v, wrk_v), "", render(rows, b)]
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
