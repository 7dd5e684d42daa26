"""S6 (image streams) and S7 (edits): their fake upstreams, nginx settings, request bodies, one
measurement per target in the rounds, and S7's in-flight phase. bench/run.py wires them in.

S6a  time to first event: ``async_client.py ttfe`` on one connection, request after request, a
     stream of 1 partial image + the completed one (1 KB of base64 each, the second event
     ``s6_event_gap_s`` after the first, so a proxy that buffers the stream shows it).
S6b  relay: wrk, ``s6_conns`` connections, a stream of 2 partials + the completed image of 2 MB of
     base64 each, no gaps: req/s and MB/s.
S7   edits: wrk, ``s7_conns`` connections, each request a 4 MB multipart upload answered with a
     1 KB image: req/s. Then (``s7_inflight``) ``s7_inflight`` edits at once against an upstream
     that holds each answer ``s7_delay_s``: the RSS the proxy's process tree gains over its idle
     RSS, per edit in flight.

nginx: ``proxy_buffering off`` for the streams (an event goes out as it arrives); for the edits
``client_max_body_size 64m``, ``client_body_buffer_size 8m`` and request buffering on (its default):
nginx, like the gateway, reads the whole upload into memory before it calls the upstream.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from async_client import Body
from payloads import EDIT_PATH, STREAM_PATH, edit_form, png_file, stream_body
from procs import RssSampler, log, rss_tree
from wrk import Upstream

if TYPE_CHECKING:
    from run import Bench

#: The systems S6 and S7 measure.
S67_TARGETS = ("direct", "nginx", "gateway")
#: Round keys of each scenario, and the upstream profile each key runs against.
ROUND_KEYS = {"S6": ("S6a", "S6b"), "S7": ("S7",)}
PROFILE = {"S6a": "stream", "S6b": "relay", "S7": "edit"}
#: Partial images per stream: S6a, S6b.
TTFE_PARTIALS = 1
RELAY_PARTIALS = 2

NGINX_EXTRA = {
    "stream": "proxy_buffering off;",
    "relay": "proxy_buffering off;",
    "edit": "client_max_body_size 64m; client_body_buffer_size 8m; proxy_request_buffering on;",
    "edit_slow": "client_max_body_size 64m; client_body_buffer_size 8m; proxy_request_buffering on;",
}


def upstreams(s: Any) -> dict[str, Upstream]:
    return {
        "stream": Upstream("stream", s.small_bytes, 0.0, kind="stream", stream_partials=TTFE_PARTIALS,
                           event_gap_s=s.s6_event_gap_s),
        "relay": Upstream("relay", s.large_bytes, 0.0, kind="stream", stream_partials=RELAY_PARTIALS),
        "edit": Upstream("edit", s.small_bytes, 0.0, kind="edit"),
        "edit_slow": Upstream("edit_slow", s.small_bytes, s.s7_delay_s, kind="edit"),
    }


def needed_profiles(scenarios: list[str]) -> set[str]:
    need = set()
    if "S6" in scenarios:
        need |= {"stream", "relay"}
    if "S7" in scenarios:
        need |= {"edit", "edit_slow"}
    return need


def write_bodies(tmp: Path, s: Any) -> dict[str, Body]:
    """The request bodies, written once to the run's temp dir (wrk and the client read them)."""
    bodies = {}
    for name, partials in (("stream", TTFE_PARTIALS), ("relay", RELAY_PARTIALS)):
        f = tmp / f"body-{name}.json"
        f.write_bytes(stream_body(partials))
        bodies[name] = Body(STREAM_PATH, "application/json", f)
    png = png_file(s.s7_upload_bytes)
    content_type, form = edit_form(png)
    s.s7_upload_file_bytes = len(png)
    f = tmp / "body-edit.multipart"
    f.write_bytes(form)
    bodies["edit"] = bodies["edit_slow"] = Body(EDIT_PATH, content_type, f)
    s.s7_body_bytes = len(form)
    return bodies


def warm_up(b: Bench, key: str, target: str, port: int) -> None:
    s = b.s
    if key == "S6a":
        b.client.run("ttfe", port, b.bodies["stream"], f"warm-up {target} stream", 60, duration_s=0.5)
    else:
        prof = PROFILE[key]
        body = b.bodies[prof]
        conns = s.s6_conns if key == "S6b" else s.s7_conns
        b.wrk.run(port, conns, 2, 1, timeout_s=10, label=f"warm-up {target} {prof}", path=body.path,
                  body=(body.file, body.content_type))


def measure(b: Bench, key: str, target: str, port: int, label: str) -> dict[str, Any]:
    """One measurement of ``key`` (S6a, S6b, S7) on ``target``: a dict like ``WrkResult.as_dict``."""
    s = b.s
    if key == "S6a":
        r = b.client.run("ttfe", port, b.bodies["stream"], label, s.s67_duration_s + 60,
                         duration_s=s.s67_duration_s, timeout_s=5)
        r["error_count"] = r["errors"]
        return r
    body = b.bodies[PROFILE[key]]
    conns = s.s6_conns if key == "S6b" else s.s7_conns
    return b.wrk.run(port, conns, 2, s.s67_duration_s, timeout_s=10, label=label, path=body.path,
                     body=(body.file, body.content_type)).as_dict()


def round_log(key: str, rnd: dict[str, dict[str, Any]]) -> str:
    if key == "S6a":
        return ", ".join(f"{t} first event p50 {d['p50_us'] / 1000:.3f} ms p99 {d['p99_us'] / 1000:.3f} ms"
                         for t, d in rnd.items())
    return ", ".join(f"{t} {d['rps']:,.0f} req/s {d['mbps']:,.0f} MB/s" for t, d in rnd.items())


def s7_inflight(b: Bench) -> None:
    """``s7_inflight`` edits held at once by the slow upstream: the RSS each one costs the proxy."""
    s = b.s
    body = b.bodies["edit_slow"]
    bound_s = s.s7_delay_s + 120
    for t in [x for x in ("nginx", "gateway") if x in b.targets]:
        if t == "gateway":
            g = b.gateways["edit_slow"]
            root = g.proc.pid if g.proc else 0
        else:
            root = b.nginx_proc.pid if b.nginx_proc else 0
        port = b.port_of(t, "edit_slow")
        fresh = rss_tree(root)
        # One edit first (imports, pools, the first upload buffers): the idle RSS it is measured
        # against is a warm process's, which keeps at most one edit's freed memory.
        b.client.run("inflight", port, body, f"S7 warm-up {t}", bound_s, count=1, timeout_s=s.s7_delay_s + 30)
        time.sleep(0.5)
        idle = rss_tree(root)
        with RssSampler(root, interval=0.05) as sampler:
            r = b.client.run("inflight", port, body, f"S7 in flight {t}", bound_s, count=s.s7_inflight,
                             timeout_s=s.s7_delay_s + 60)
        after = rss_tree(root)
        held = r["peak_in_flight"]
        per_edit = (sampler.peak - idle) / held if held else None
        b.results["s7_inflight"][t] = {
            **r, "rss_fresh": fresh, "idle_rss": idle, "peak_rss": sampler.peak, "rss_after": after,
            "per_edit_bytes": per_edit, "upload_bytes": s.s7_upload_file_bytes, "body_bytes": s.s7_body_bytes,
            "per_edit_over_upload": per_edit / s.s7_upload_file_bytes if per_edit is not None else None,
            "errors": r["count"] - r["ok"]}
        log(f"S7 {t}: {r['ok']}/{r['count']} edits ok, {held} held at once, RSS {idle / 1e6:.1f} -> peak "
            f"{sampler.peak / 1e6:.1f} MB = {0 if per_edit is None else per_edit / 1e6:.2f} MB per edit")
