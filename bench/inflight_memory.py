#!/usr/bin/env python3
"""Where the memory of a request in flight goes (S4's figure, taken apart).

Runs the gateway in this process (``gateway.server.serve``, uvloop, the benchmark's config: one
key, the openai plugin, the access log on) in front of ``fake_upstream.py`` holding every answer
``--delay-s``, warms it up, then has ``async_client.py inflight`` open ``--count`` connections
with one request each. Once every request is in flight (the gateway's in-flight gauge says so) it
measures, against the idle process after the warm-up:

* VmRSS and RssAnon gained, per request in flight (what S4 reports, without tracemalloc's own
  overhead unless ``--trace``);
* with ``--trace``: tracemalloc's view, grouped by the line that allocated (``--group lineno``)
  or by the innermost frame of the gateway / aiohttp / uvloop source (``--group owner``), each
  as bytes per request in flight;
* with ``--census``: the garbage collector's objects by type gained per request (count and
  ``sys.getsizeof``; objects the collector does not track, bytes and str, are not in it).

Usage (from the repository root, with the project's Python)::

    python bench/inflight_memory.py --count 2000
    python bench/inflight_memory.py --count 2000 --trace --group owner --census

Everything binds 127.0.0.1; the upstream and the client are stopped at the end. The count is
bounded by the descriptors: the gateway holds two per request (client and upstream side).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import linecache
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))

from procs import API_PATH, BENCH_KEY, FAKE_UPSTREAM, MODEL, free_ports, gateway_conf, raise_nofile  # noqa: E402


def status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0])
    return out


_MARKS = ("/gateway/", "/plugins/", "/aiohttp/", "/uvloop/", "/httptools/", "/multidict/", "/yarl/",
          "/asyncio/", "/msgspec/")


def owner_of(trace: tracemalloc.Trace) -> tuple[str, int]:
    """The innermost frame in a file of interest: which code asked for the memory."""
    for frame in reversed(trace.traceback):  # tracemalloc lists the oldest frame first
        if any(mark in frame.filename for mark in _MARKS):
            return frame.filename, frame.lineno
    frame = trace.traceback[0]
    return frame.filename, frame.lineno


def _short(filename: str) -> str:
    for mark in _MARKS:
        if mark in filename:
            return filename[filename.index(mark) + 1:]
    return filename


def report_trace(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int, group: str,
                 top: int) -> list[str]:
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    lines = []
    if group == "lineno":
        stats = after.compare_to(before, "lineno")
        total = sum(s.size_diff for s in stats)
        lines.append(f"tracemalloc: {total / count:,.0f} B per request in flight, by line")
        for s in stats[:top]:
            frame = s.traceback[0]
            src = linecache.getline(frame.filename, frame.lineno).strip()[:70]
            lines.append(f"  {s.size_diff / count:8,.0f} B {s.count_diff / count:6.2f} blocks  "
                         f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}  {src}")
        return lines
    # owner: group the traces' sizes by their innermost frame of interest
    sizes: Counter[tuple[str, int]] = Counter()
    blocks: Counter[tuple[str, int]] = Counter()
    for snap, sign in ((after, 1), (before, -1)):
        for trace in snap.traces:
            key = owner_of(trace)
            sizes[key] += sign * trace.size
            blocks[key] += sign
    total = sum(sizes.values())
    lines.append(f"tracemalloc: {total / count:,.0f} B per request in flight, by the innermost frame of "
                 "gateway/ plugins/ aiohttp/ uvloop/ httptools/ multidict/ yarl/ asyncio/ msgspec/")
    for (filename, lineno), size in sizes.most_common(top):
        src = linecache.getline(filename, lineno).strip()[:70]
        lines.append(f"  {size / count:8,.0f} B {blocks[filename, lineno] / count:6.2f} blocks  "
                     f"{_short(filename)}:{lineno}  {src}")
    return lines


def census() -> Counter[str]:
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        if t.__name__ in ("coroutine", "generator", "async_generator"):
            name += f" {obj.__qualname__}"  # type: ignore[attr-defined]
        sizes[name] += sys.getsizeof(obj)
        sizes[f"#{name}"] += 1
    return sizes


def sample_new(kind: str, before_ids: set[int], count: int, limit: int = 400) -> list[str]:
    """Objects of type ``kind`` that appeared under load (the first ``limit``), grouped by the
    types that refer to them: who holds them."""
    holders: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    example: dict[str, str] = {}
    seen = 0
    ours = {id(before_ids)}
    for obj in gc.get_objects():
        t = type(obj)
        if f"{t.__module__}.{t.__qualname__}" != kind or id(obj) in before_ids:
            continue
        refs = ",".join(sorted({type(r).__qualname__ for r in gc.get_referrers(obj)
                                if id(r) not in ours and type(r).__qualname__ != "list" or r is not None}
                               - {"frame"}))[:80]
        holders[refs] += 1
        sizes[refs] += sys.getsizeof(obj)
        example.setdefault(refs, repr(list(obj) if isinstance(obj, dict) else obj)[:400])
        seen += 1
        if seen >= limit:
            break
    return [f"    {n / seen:5.2f} of them, {sizes[k] / n:5.0f} B each, held by {k}: {example[k]}"
            for k, n in holders.most_common(12)]


def report_census(before: Counter[str], after: Counter[str], count: int, top: int) -> list[str]:
    diff = Counter({k: after[k] - before.get(k, 0) for k in after if not k.startswith("#")})
    lines = [f"gc census: {sum(v for v in diff.values() if v > 0) / count:,.0f} B per request "
             "(getsizeof of tracked objects, shallow)"]
    for name, size in diff.most_common(top):
        n = after.get(f"#{name}", 0) - before.get(f"#{name}", 0)
        lines.append(f"  {size / count:8,.0f} B {n / count:6.2f} objects  {name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="requests in flight (default 2000)")
    ap.add_argument("--delay-s", type=float, default=20.0, help="the upstream holds each answer this long")
    ap.add_argument("--warmup", type=int, default=50, help="requests before the idle measurement")
    ap.add_argument("--rounds", type=int, default=1,
                    help="requests per connection, the next sent when the last is answered (S4's wrk does)")
    ap.add_argument("--trace", action="store_true", help="tracemalloc snapshots (adds its own overhead)")
    ap.add_argument("--group", choices=("lineno", "owner", "none"), default="owner",
                    help="with --trace: where the memory goes, by line or by owning frame; none: totals only")
    ap.add_argument("--census", action="store_true", help="objects by type (gc.get_objects)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sample", metavar="TYPE", action="append", default=[],
                    help="with --census: show a few new objects of this type (e.g. builtins.dict)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--no-access-log", action="store_true", help="serve with server.access_log: false")
    args = ap.parse_args(argv)
    nofile = raise_nofile()
    if args.count * 2 + 200 > nofile:
        print(f"--count {args.count} needs {args.count * 2 + 200} descriptors; RLIMIT_NOFILE is {nofile}",
              file=sys.stderr)
        return 2

    from gateway.config_load import load_config
    from gateway.listeners import bind_listeners
    from gateway.server import install_uvloop, serve
    from gateway import metrics

    tmp = Path(tempfile.mkdtemp(prefix="og-inflight-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port, upstream_port = free_ports(2)
        upstream = subprocess.Popen([sys.executable, str(FAKE_UPSTREAM), "--port", str(upstream_port),
                                     "--delay-s", str(args.delay_s)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(upstream)
        assert upstream.stdout is not None
        upstream.stdout.readline()  # READY <port>
        conf = tmp / "gateway.yaml"
        conf.write_text(gateway_conf(port, upstream_port, access_log=not args.no_access_log))
        body = tmp / "body.json"
        body.write_text(json.dumps({"model": MODEL, "prompt": "A small red cube on a white background.",
                                    "size": "1024x1024", "quality": "medium"}))
        config = load_config(str(conf))
        listeners = bind_listeners(config, "127.0.0.1", port)
        results: dict[str, object] = {}

        def client(count: int, rounds: int = 1) -> subprocess.Popen[bytes]:
            p = subprocess.Popen([sys.executable, str(BENCH_DIR / "async_client.py"), "inflight", "--port",
                                  str(port), "--path", API_PATH, "--body-file", str(body), "--content-type",
                                  "application/json", "--key", BENCH_KEY, "--count", str(count),
                                  "--rounds", str(rounds), "--timeout-s", str(args.delay_s + 60)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            return p

        def in_flight() -> float:
            return metrics.IN_FLIGHT._value.get()  # type: ignore[attr-defined]

        async def measure() -> None:
            loop = asyncio.get_running_loop()
            warm = client(args.warmup)
            await loop.run_in_executor(None, warm.wait)
            gc.collect()
            await asyncio.sleep(0.5)
            idle = status_kb()
            snap0 = tracemalloc.take_snapshot() if args.trace and args.group != "none" else None
            census0 = census() if args.census else None
            ids0 = {id(o) for o in gc.get_objects()} if args.sample else set()
            if args.trace:
                tracemalloc.reset_peak()
            traced0 = tracemalloc.get_traced_memory()[0] if args.trace else 0
            load = client(args.count, args.rounds)
            t0 = time.monotonic()
            while in_flight() < args.count and time.monotonic() - t0 < args.delay_s * 0.8:
                await asyncio.sleep(0.05)
            held = int(in_flight())
            await asyncio.sleep(0.3)
            busy = status_kb()
            traced_now, traced_peak = tracemalloc.get_traced_memory() if args.trace else (0, 0)
            ramp_peak = traced_peak - traced0
            snap1 = tracemalloc.take_snapshot() if args.trace and args.group != "none" else None
            census1 = census() if args.census else None
            lines = [f"{held:,} requests in flight (asked {args.count:,}) after {time.monotonic() - t0:.1f} s",
                     f"VmRSS   {idle['VmRSS'] / 1024:7.1f} -> {busy['VmRSS'] / 1024:7.1f} MB: "
                     f"{(busy['VmRSS'] - idle['VmRSS']) * 1024 / max(held, 1):,.0f} B per request",
                     f"RssAnon {idle['RssAnon'] / 1024:7.1f} -> {busy['RssAnon'] / 1024:7.1f} MB: "
                     f"{(busy['RssAnon'] - idle['RssAnon']) * 1024 / max(held, 1):,.0f} B per request"]
            results.update(held=held, idle_kb=idle, busy_kb=busy,
                           rss_per_request=(busy["VmRSS"] - idle["VmRSS"]) * 1024 / max(held, 1))
            if args.trace:
                results["traced_per_request"] = (traced_now - traced0) / max(held, 1)
                lines.append(f"tracemalloc: {results['traced_per_request']:,.0f} B per request in flight; peak while "
                             f"they arrived: {ramp_peak / max(held, 1):,.0f} B per request")
            if snap0 is not None and snap1 is not None:
                lines += report_trace(snap0, snap1, max(held, 1), args.group, args.top)
            if census0 is not None and census1 is not None:
                lines += report_census(census0, census1, max(held, 1), args.top)
            for kind in args.sample:
                lines += [f"  new {kind}:"] + sample_new(kind, ids0, max(held, 1))
            print("\n".join(lines), flush=True)
            # The answers, every request about --delay-s after it was sent (and with --rounds, the
            # next request on each connection at once): the peak as S4 measures it.
            del snap0, snap1
            if args.trace:
                tracemalloc.reset_peak()
            peak = busy["VmRSS"]
            done = loop.run_in_executor(None, load.communicate)
            while not done.done():
                peak = max(peak, status_kb()["VmRSS"])
                await asyncio.sleep(0.05)
            out = await done
            await asyncio.sleep(0.5)
            before_gc = status_kb()["VmRSS"]
            unreachable = gc.collect()
            results.update(peak_kb=peak, cyclic_garbage=unreachable,
                           peak_rss_per_request=(peak - idle["VmRSS"]) * 1024 / max(held, 1))
            if args.trace:
                peak_traced = tracemalloc.get_traced_memory()[1] - traced0
                results["traced_peak_per_request"] = peak_traced / max(held, 1)
                print(f"tracemalloc peak over idle while answering: {peak_traced / max(held, 1):,.0f} B per request",
                      flush=True)
            print(f"after the answers: VmRSS {before_gc / 1024:.1f} MB; a full collection found "
                  f"{unreachable:,} unreachable objects ({unreachable / max(held, 1):.1f} per request)", flush=True)
            print(f"peak VmRSS while answering {peak / 1024:.1f} MB: "
                  f"{(peak - idle['VmRSS']) * 1024 / max(held, 1):,.0f} B per request over idle", flush=True)
            results["client"] = out[0].decode(errors="replace").strip().splitlines()[-1:]
            print(f"client: {results['client']}", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

        def on_ready(_listeners: object) -> None:
            asyncio.get_running_loop().create_task(measure())

        if args.trace:
            tracemalloc.start(25)
        install_uvloop()
        asyncio.run(serve(config, listeners, on_ready=on_ready))
        listeners.close()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
