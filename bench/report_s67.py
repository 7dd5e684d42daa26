"""The table's S6 (streams) and S7 (edits) rows, with their ratios, targets and notes
(bench/report.py calls ``s6_s7_rows`` with its row and judge functions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from report import fmt_ms, fmt_num, median
from s6_s7 import RELAY_PARTIALS, S67_TARGETS, TTFE_PARTIALS

if TYPE_CHECKING:
    from run import Bench

Row = Callable[..., list[str]]
Judge = Callable[[bool | None, str], str]

#: nginx keeps a request body up to this in memory (client_body_buffer_size in s6_s7.NGINX_EXTRA).
NGINX_BODY_BUFFER_BYTES = 8 << 20


def s6_s7_rows(b: Bench, row: Row, judge: Judge, med: dict[str, Any], notes: list[str]) -> list[list[str]]:
    s, res = b.s, b.results
    rounds = [r for r in res["rounds"]]
    targets = [t for t in b.targets if t in S67_TARGETS]
    rows: list[list[str]] = []

    def col(key: str, t: str, field: str) -> float | None:
        if t not in targets:
            return None
        return median([r[key][t][field] for r in rounds if key in r and t in r[key]])

    def ratio(key: str, field: str, num: str, den: str) -> float | None:
        if num not in targets or den not in targets:
            return None
        return median([r[key][num][field] / r[key][den][field] for r in rounds
                       if key in r and r[key][den][field]])

    def added(key: str, t: str, field: str) -> float | None:
        if t not in targets or "direct" not in targets:
            return None
        return median([r[key][t][field] - r[key]["direct"][field] for r in rounds if key in r])

    def errs(key: str, t: str) -> int:
        return sum(r[key][t]["error_count"] for r in rounds if key in r and t in r[key])

    def fa(v: float | None) -> str:
        return "-" if v is None else f"{v / 1000:+.3f}"

    if any("S6a" in r for r in rounds):
        label = f"S6 stream 1 conn, {TTFE_PARTIALS}+1 events"
        p50 = {t: col("S6a", t, "p50_us") for t in targets}
        p99 = {t: col("S6a", t, "p99_us") for t in targets}
        rows.append(row(label, "1st event p50 / p99 ms", {
            t: "-" if p50[t] is None else f"{fmt_ms(p50[t])} / {fmt_ms(p99[t])}" for t in targets}))
        proxies = [t for t in targets if t != "direct"]
        a50 = {t: added("S6a", t, "p50_us") for t in proxies}
        a99 = {t: added("S6a", t, "p99_us") for t in proxies}
        gw50 = a50.get("gateway")
        rows.append(row(label, "added 1st event p50 ms", {"direct": "-", **{t: fa(a50[t]) for t in proxies}}, {},
                        "<= 1 ms", judge(None if gw50 is None else gw50 <= 1000 and errs("S6a", "gateway") == 0,
                                         "S6 added time to first event p50")))
        rows.append(row(label, "added 1st event p99 ms", {"direct": "-", **{t: fa(a99[t]) for t in proxies}}))
        med["S6_first_event"] = {"p50_us": p50, "p99_us": p99, "added_p50_us": a50, "added_p99_us": a99,
                                 "requests": {t: col("S6a", t, "requests") for t in targets}}
        # The upstream sends the second event s6_event_gap_s after the first: a proxy that relays
        # each event as it comes hands the client the second that much after the first.
        gap_us = s.s6_event_gap_s * 1e6
        for t in targets:
            rest = col("S6a", t, "rest_p50_us")
            if rest is not None and gap_us and rest < gap_us / 2:
                notes.append(f"S6 {t}: the events arrive {rest / 1000:.3f} ms apart (median) although the upstream "
                             f"sends them {s.s6_event_gap_s * 1000:g} ms apart: it buffers the stream")
    if any("S6b" in r for r in rounds):
        label = f"S6 relay {RELAY_PARTIALS}+1 x {s.large_bytes / 1e6:.0f} MB, {s.s6_conns} conns"
        rps = {t: col("S6b", t, "rps") for t in targets}
        mb = {t: col("S6b", t, "mbps") for t in targets}
        gn = ratio("S6b", "rps", "gateway", "nginx")
        rows.append(row(label, "req/s", {t: fmt_num(rps[t]) for t in targets},
                        {d: fmt_num(ratio("S6b", "rps", "gateway", d), 2) for d in ("nginx", "direct")},
                        ">= 0.65 x nginx", judge(None if gn is None else gn >= 0.65 and errs("S6b", "gateway") == 0,
                                                 "S6 relay req/s")))
        rows.append(row(label, "MB/s", {t: fmt_num(mb[t]) for t in targets},
                        {d: fmt_num(ratio("S6b", "mbps", "gateway", d), 2) for d in ("nginx", "direct")}))
        med["S6_relay"] = {"rps": rps, "mbps": mb, "gateway_over_nginx": gn,
                           "gateway_over_direct": ratio("S6b", "rps", "gateway", "direct")}
    if any("S7" in r for r in rounds):
        label = f"S7 edit {s.s7_upload_file_bytes / 1e6:.1f} MB, {s.s7_conns} conns"
        rps = {t: col("S7", t, "rps") for t in targets}
        up = {t: None if rps[t] is None else rps[t] * s.s7_body_bytes / 1e6 for t in targets}
        gn = ratio("S7", "rps", "gateway", "nginx")
        rows.append(row(label, "req/s", {t: fmt_num(rps[t]) for t in targets},
                        {d: fmt_num(ratio("S7", "rps", "gateway", d), 2) for d in ("nginx", "direct")}))
        rows.append(row(label, "upload MB/s", {t: fmt_num(up[t]) for t in targets}))
        med["S7"] = {"rps": rps, "upload_mbps": up, "gateway_over_nginx": gn,
                     "gateway_over_direct": ratio("S7", "rps", "gateway", "direct")}
    for key in ("S6a", "S6b", "S7"):
        for t in targets:
            if errs(key, t):
                notes.append(f"{key} {t}: {errs(key, t)} errors (socket errors + non-2xx) over the rounds")

    held = res.get("s7_inflight") or {}
    if held:
        cols = [t for t in ("nginx", "gateway") if t in held]
        n = max(d["count"] for d in held.values())
        label = f"S7 {n} edits in flight"
        upload = s.s7_upload_file_bytes

        def per_edit(t: str) -> str:
            v = held[t]["per_edit_bytes"]
            return "-" if v is None else f"{v / 1e6:.2f} ({v / upload:.2f} x)"

        rows.append(row(label, "idle -> peak RSS MB", {
            t: f"{held[t]['idle_rss'] / 1e6:.0f} -> {held[t]['peak_rss'] / 1e6:.0f}" for t in cols}, blank="-"))
        gw = held.get("gateway")
        ok = None if gw is None or gw["per_edit_over_upload"] is None else (
            gw["per_edit_over_upload"] <= 1.5 and gw["errors"] == 0)
        rows.append(row(label, "RSS per edit MB (x upload)", {t: per_edit(t) for t in cols}, {},
                        f"<= 1.5 x {upload / 1e6:.1f} MB", judge(ok, "S7 RSS per in-flight edit"), blank="-"))
        mem = s.gateway_upload_memory_bytes
        where = {"gateway": f"memory (<= {mem >> 20} MiB)" if upload <= mem else "temp file",
                 "nginx": (f"memory (<= {NGINX_BODY_BUFFER_BYTES >> 20} MiB)"
                           if s.s7_body_bytes <= NGINX_BODY_BUFFER_BYTES else "temp file")}
        rows.append(row(label, "upload held in", {t: where[t] for t in cols}, blank="-"))
        med["S7_inflight"] = held
        for t, d in held.items():
            if d["errors"]:
                notes.append(f"S7 in flight {t}: {d['errors']} of {d['count']} edits failed ({d['statuses']})")
            if d["peak_in_flight"] < d["count"]:
                notes.append(f"S7 in flight {t}: at most {d['peak_in_flight']} of {d['count']} edits were held at "
                             f"once (the RSS is divided by that)")
        notes.append(f"S7: the gateway holds an edit's upload in memory up to server.upload_memory_bytes "
                     f"({mem:,} bytes a request), then in temporary files; nginx reads the whole body first "
                     f"(proxy_request_buffering on) into a client_body_buffer_size of "
                     f"{NGINX_BODY_BUFFER_BYTES >> 20} MiB; the upload is a {upload:,}-byte PNG "
                     f"({s.s7_body_bytes:,} bytes with its multipart framing)")
    return rows
