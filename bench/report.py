"""The benchmark's table: medians, ratios against nginx, the bare aiohttp proxy, direct and the
peers (``--peers``), PASS/MISS, notes."""

from __future__ import annotations

import os
import platform
import statistics
from typing import TYPE_CHECKING, Any

from procs import TARGETS, cpu_model

if TYPE_CHECKING:
    from run import Bench


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


def value_columns(b: Bench) -> list[str]:
    """The measured systems, one column each: the fixed targets, then the peers asked for."""
    return list(TARGETS) + list(b.peers)


def ratio_columns(b: Bench) -> list[str]:
    """What the gateway's figure is divided by, one column each (gw/nginx, ..., gw/portkey)."""
    return ["nginx", "aiohttp", "direct"] + list(b.peers)


def keyed_rows(b: Bench, rows: list[list[str]], row: Any, judge: Any, med: dict[str, Any], notes: list[str]) -> None:
    """S1 and S2 on the "keyed" gateway without and with an Idempotency-Key on every request
    (run.py ``keyed_round``), in the gateway's column: req/s and p50, and what the key adds,
    each a median of the per-round differences."""
    rounds = [r for r in b.results["rounds"] if "S1 keyed" in r or "S2 keyed" in r]
    for sc, label in (("S1", f"S1 1 KB, {b.s.s1_conns} conns, keyed"), ("S2", "S2 1 conn, keyed")):
        runs = [r[f"{sc} keyed"] for r in rounds if f"{sc} keyed" in r]
        if not runs:
            continue
        rps = {h: median([x[h]["rps"] for x in runs]) for h in ("plain", "key")}
        p50 = {h: median([x[h]["p50_us"] for x in runs]) for h in ("plain", "key")}
        added = median([x["key"]["p50_us"] - x["plain"]["p50_us"] for x in runs])
        ratio = median([x["key"]["rps"] / x["plain"]["rps"] for x in runs if x["plain"]["rps"]])
        # At 32 connections the gateway's CPU is the bottleneck: the time it spends per request
        # is 1 / req/s, and the key's share of it is the difference (its p50 moves by 32 times that).
        cpu = median([1e6 / x["key"]["rps"] - 1e6 / x["plain"]["rps"] for x in runs
                      if x["key"]["rps"] and x["plain"]["rps"]])
        errors = sum(x[h]["error_count"] for x in runs for h in ("plain", "key"))
        rows.append(row(label, "req/s without / with key",
                        {"gateway": f"{fmt_num(rps['plain'])} / {fmt_num(rps['key'])}"}, blank="-"))
        rows.append(row(label, "p50 ms without / with key",
                        {"gateway": f"{fmt_ms(p50['plain'])} / {fmt_ms(p50['key'])}"}, blank="-"))
        if sc == "S1":
            ok = None if cpu is None else cpu <= 100 and errors == 0
            rows.append(row(label, "key's added ms per request", {"gateway": "-" if cpu is None else f"{cpu / 1000:+.3f}"},
                            {}, "<= 0.1 ms", judge(ok, "S1 Idempotency-Key added time per request"), blank="-"))
        else:
            ok = None if added is None else added <= 100 and errors == 0
            rows.append(row(label, "key's added p50 ms", {"gateway": "-" if added is None else f"{added / 1000:+.3f}"},
                            {}, "<= 0.1 ms", judge(ok, "S2 Idempotency-Key added p50"), blank="-"))
        med[f"{sc}_keyed"] = {"rps": rps, "p50_us": p50, "added_p50_us": added, "rps_key_over_plain": ratio,
                              "added_us_per_request": cpu}
        if errors:
            notes.append(f"{sc} keyed: {errors} errors over the rounds")
        if sc == "S1" and ratio is not None:
            notes.append(f"S1 keyed: with an Idempotency-Key on every request (memory backend, each answer "
                         f"kept) the gateway serves {ratio:.2f} x its req/s without one (both through wrk's "
                         f"request() hook; each measured twice per round, without-with-with-without)")


def summarize(b: Bench) -> tuple[list[list[str]], dict[str, Any], list[str], list[str]]:
    """Table rows, medians (for --json), notes and misses."""
    s, res = b.s, b.results
    rows: list[list[str]] = []
    med: dict[str, Any] = {}
    notes: list[str] = list(res.get("notes", []))
    for ph in ("rounds", "S4", "S5", "S7 in flight"):
        avg = b.load.average(ph)
        if avg is not None and avg >= 0.15:
            notes.append(f"other processes used {avg:.2f} of the {os.cpu_count()} cores on average "
                         f"during {ph} (peak {b.load.peak.get(ph, 0):.2f}): those numbers are disturbed")
    misses: list[str] = []
    rounds = res["rounds"]
    targets = b.targets
    vcols, rcols = value_columns(b), ratio_columns(b)
    peers = list(b.peers)

    def row(label: str, metric: str, values: dict[str, str], ratios: dict[str, str] | None = None,
            target: str = "", result: str = "", blank: str = "") -> list[str]:
        ratios = ratios or {}
        return [label, metric, *(values.get(t, blank) for t in vcols),
                *(ratios.get(d, "") for d in rcols), target, result]

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
        rps = {t: col(sc, t, "rps") for t in vcols}
        over = {d: ratio(sc, "rps", "gateway", d) for d in rcols}
        gn, gd, ga = over["nginx"], over["direct"], over["aiohttp"]
        an = ratio(sc, "rps", "aiohttp", "nginx")
        nd = ratio(sc, "rps", "nginx", "direct")
        thr = 0.40 if sc == "S1" else 0.65
        gw_errs = errs(sc, "gateway") if "gateway" in targets else 0
        ok = None if gn is None else (gn >= thr and gw_errs == 0)
        rows.append(row(label, "req/s", {t: fmt_num(rps[t]) for t in vcols},
                        {d: fmt_num(over[d], 2) for d in rcols}, f">= {thr:.2f} x nginx",
                        judge(ok, f"{sc} req/s")))
        if sc == "S1":
            # The reasoning behind 0.40 x nginx: a bare aiohttp proxy makes ~0.54 x nginx,
            # and the gateway should keep three quarters of it with every feature on.
            rows.append(row(label, "req/s", {}, {"aiohttp": fmt_num(ga, 2)}, ">= 0.75 x aiohttp",
                            judge(None if ga is None else ga >= 0.75 and gw_errs == 0, "S1 req/s vs aiohttp")))
            if an is not None:
                notes.append(f"S1: the bare aiohttp proxy makes {an:.2f} x nginx here (the issue's machine: "
                             f"about 0.54), so 0.40 x nginx asks for {0.40 / an:.2f} x the bare aiohttp floor")
        med[sc] = {"rps": rps, "gateway_over_nginx": gn, "gateway_over_direct": gd,
                   "gateway_over_aiohttp": ga, "aiohttp_over_nginx": an, "nginx_over_direct": nd}
        for p in peers:
            med[sc][f"gateway_over_{p}"] = over[p]
        if sc == "S1":
            p50 = {t: col(sc, t, "p50_us") for t in vcols}
            p99 = {t: col(sc, t, "p99_us") for t in vcols}
            rows.append(row(label, "p50 / p99 ms", {
                t: "-" if p50[t] is None else f"{fmt_ms(p50[t])} / {fmt_ms(p99[t])}" for t in vcols}))
            med[sc].update(p50_us=p50, p99_us=p99)
        else:
            mb = {t: col(sc, t, "mbps") for t in vcols}
            rows.append(row(label, "MB/s", {t: fmt_num(mb[t]) for t in vcols},
                            {d: fmt_num(ratio(sc, "mbps", "gateway", d), 2) for d in rcols}))
            med[sc]["mbps"] = mb
        for t in targets:
            if errs(sc, t):
                notes.append(f"{sc} {t}: {errs(sc, t)} errors (socket errors + non-2xx) over the rounds")

    if rounds and "S2" in rounds[0]:
        label = "S2 1 conn"
        p50 = {t: col("S2", t, "p50_us") for t in vcols}
        p99 = {t: col("S2", t, "p99_us") for t in vcols}
        rows.append(row(label, "p50 / p99 ms", {
            t: "-" if p50[t] is None else f"{fmt_ms(p50[t])} / {fmt_ms(p99[t])}" for t in vcols}))

        def added(t: str, key: str) -> float | None:
            if t not in targets or "direct" not in targets:
                return None
            return median([r["S2"][t][key] - r["S2"]["direct"][key] for r in rounds if "S2" in r])

        proxies = [t for t in vcols if t != "direct"]
        a50 = {t: added(t, "p50_us") for t in proxies}
        a99 = {t: added(t, "p99_us") for t in proxies}

        def fa(v: float | None) -> str:
            return "-" if v is None else f"{v / 1000:+.3f}"

        rows.append(row(label, "added p50 ms", {"direct": "-", **{t: fa(a50[t]) for t in proxies}}, {},
                        "<= 0.35 ms", judge(None if a50["gateway"] is None else
                                            a50["gateway"] <= 350 and errs("S2", "gateway") == 0,
                                            "S2 added p50")))
        rows.append(row(label, "added p99 ms", {"direct": "-", **{t: fa(a99[t]) for t in proxies}}, {},
                        "<= 1 ms", judge(None if a99["gateway"] is None else a99["gateway"] <= 1000,
                                         "S2 added p99")))
        med["S2"] = {"p50_us": p50, "p99_us": p99, "added_p50_us": a50, "added_p99_us": a99}
        for t in targets:
            if errs("S2", t):
                notes.append(f"S2 {t}: {errs('S2', t)} errors over the rounds")
    keyed_rows(b, rows, row, judge, med, notes)
    # Order rows S1, S2, S3 (S3 was built with S1 above).
    rows.sort(key=lambda r: r[0][:2])

    s4 = res.get("s4") or {}
    if s4:
        label = f"S4 {s.s4_conns:,} in-flight" + (f", {s.s4_workers} workers" if s.s4_workers != s.workers else "")

        def cell(t: str, key: str) -> str:
            if t not in s4:
                return "-"
            if key == "errors":
                return f"{s4[t]['errors']:,} ({s4[t]['completed']:,} ok)"
            if key == "processes":  # the root (supervisor, master) first, then the workers
                return " + ".join(f"{p['peak_rss'] / 1e6:.0f}" for p in s4[t]["processes"])
            if key in ("per_request", "per_request_in_flight"):
                return f"{s4[t][key] / 1e3:.1f}" if key in s4[t] else "-"
            return fmt_num(s4[t][key] / 1e6)

        s4_cols = ["nginx", "gateway", *peers]
        gw = s4.get("gateway")
        rows.append(row(label, "errors", {t: cell(t, "errors") for t in s4_cols}, {}, "0",
                        judge(None if gw is None else gw["errors"] == 0, "S4 errors"), blank="-"))
        rows.append(row(label, "peak RSS MB", {t: cell(t, "peak_rss") for t in s4_cols}, {}, "<= 300 MB",
                        judge(None if gw is None else gw["peak_rss"] <= 300e6, "S4 peak RSS"), blank="-"))
        rows.append(row(label, "peak RSS per process MB", {t: cell(t, "processes") for t in s4_cols}, {},
                        blank="-"))
        # Memory per request in flight: all of them in flight, none answered yet (the issue's
        # figure); at the peak the first wave's answers are being written as the next is sent.
        rows.append(row(label, "KB per request in flight", {t: cell(t, "per_request_in_flight") for t in s4_cols},
                        {}, "<= 20 KB", judge(None if gw is None else gw["per_request_in_flight"] <= 20e3,
                                             "S4 KB per request in flight"), blank="-"))
        rows.append(row(label, "KB per request at the peak", {t: cell(t, "per_request") for t in s4_cols}, {},
                        blank="-"))
        med["S4"] = {t: {k: v for k, v in d.items()} for t, d in s4.items()}
        if s.s4_workers_reason:
            notes.append(s.s4_workers_reason)
        if s.s4_cap_reason:
            notes.append(s.s4_cap_reason + f" (asked for {s.s4_conns_requested:,})")
        if gw is not None:
            notes.append(f"S4 gateway: {gw['in_flight_rss'] / 1e6:.0f} MB over {gw['idle_rss'] / 1e6:.0f} MB idle "
                         f"with {s.s4_conns:,} requests in flight before the first answer "
                         f"({gw['per_request_in_flight']:,.0f} bytes each); peak {gw['peak_rss'] / 1e6:.0f} MB "
                         f"while they were answered and the next ones sent ({gw['per_request']:,.0f} bytes each; "
                         f"per process, supervisor first: {cell('gateway', 'processes')} MB)")
        for t, d in s4.items():
            if d["completed"] < d["expected_at_least"] * 0.9:
                notes.append(f"S4 {t}: only {d['completed']:,} requests completed in "
                             f"{s.s4_duration_s:g} s (>= {d['expected_at_least']:,} expected with a "
                             f"{s.s4_delay_s:g} s upstream)")
    s5 = res.get("s5") or {}
    if s5:
        label = f"S5 soak {s5['soak_requests']:,} x 2 MB"
        g = s5["growth"]
        rows.append(row(label, "RSS warm -> end MB", {
            "gateway": f"{s5['rss_after_warmup'] / 1e6:.0f} -> {s5['rss_end'] / 1e6:.0f} ({g * 100:+.1f} %)"},
            {}, "<= +10 %", judge(g is not None and g <= 0.10 and s5["errors"] == 0, "S5 RSS growth"),
            blank="-"))
        rows.append(row("S5 idle (fresh start)", "RSS MB", {"gateway": f"{s5['idle_rss'] / 1e6:.1f}"}, {},
                        "<= 60 MB", judge(s5["idle_rss"] <= 60e6, "S5 idle RSS"), blank="-"))
        idle = res.get("idle")
        if idle:
            split = " + ".join(f"{p['rss'] / 1e6:.1f}" for p in idle["processes"])
            rows.append(row(f"S5 idle, --workers {idle['workers']}", "RSS MB", {"gateway": f"{idle['rss'] / 1e6:.1f}"},
                            {}, "<= 110 MB", judge(idle["rss"] <= 110e6, "S5 idle RSS --workers 2"), blank="-"))
            rows.append(row(f"S5 idle, --workers {idle['workers']}", "RSS per process MB", {"gateway": split},
                            blank="-"))
            med["idle_workers"] = idle
        med["S5"] = {k: v for k, v in s5.items() if k != "samples"}
        if s5["errors"]:
            notes.append(f"S5: {s5['errors']} errors (socket errors + non-2xx)")
        if s5["soak_requests"] < s.s5_requests:
            notes.append(f"S5: stopped by the {s.s5_max_s:g} s bound after {s5['soak_requests']:,} "
                         f"of {s.s5_requests:,} requests")
        notes.append(f"S5: soak at {s5['soak_wrk']['rps']:,.0f} req/s; peak RSS "
                     f"{s5['peak_rss'] / 1e6:.0f} MB; idle after soak "
                     f"{s5['rss_idle_after_soak'] / 1e6:.0f} MB")
    from report_s67 import s6_s7_rows  # (it uses this module's helpers: imported once they exist)

    rows += s6_s7_rows(b, row, judge, med, notes)
    for name, info in (res.get("peers") or {}).items():
        idle = ", ".join(f"{prof} {rss / 1e6:.0f} MB" for prof, rss in info["idle_rss"].items())
        notes.append(f"{name}: idle RSS after start-up (before any request): {idle}")
    if peers and s5:
        notes.append(f"S5 runs on the gateway only: {s.s5_requests:,} x 2 MB at the peers' S3 rates "
                     f"would add 10-20 minutes per peer")
    med["peers"] = res.get("peers") or {}
    return rows, med, notes, misses


def render(rows: list[list[str]], b: Bench) -> str:
    vcols, rcols = value_columns(b), ratio_columns(b)
    head = ["scenario", "metric", *vcols, *(f"gw/{d}" for d in rcols), "target", "result"]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    right = set(range(2, 2 + len(vcols) + len(rcols)))

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
            f"gateway --workers {s.workers}, nginx worker_processes {s.workers}"
            + (f" (S4: {s.s4_workers})" if s.s4_workers != s.workers else "") + ", fake upstream "
            f"{s.upstream_workers} process(es) per upstream; S1/S3 {s.duration_s:g} s, S2 "
            f"{s.s2_duration_s:g} s, S6/S7 {s.s67_duration_s:g} s per measurement\n"
            f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Linux {platform.release()}; "
            f"Python {platform.python_version()}; nginx {nginx_v}; wrk {wrk_v}; load average at "
            f"start {b.results.get('loadavg_start', (0,))[0]:.2f}; CPU used by other processes "
            f"during the rounds: {fmt_num(b.load.average('rounds'), 2)} cores"
            + "".join(f"\npeer: {_peer_line(name, info, s.workers)}"
                      for name, info in (b.results.get("peers") or {}).items()))


def _peer_line(name: str, info: dict[str, Any], workers: int) -> str:
    how = (f"proxy (uvicorn, --num_workers {workers})" if name == "litellm"
           else "gateway (@portkey-ai/gateway, one Node process)")
    cached = "cached install" if info["reused"] else "installed by this run"
    return f"{name} {info['version']} {how} on {info['runtime']}; {cached} in {info['home']}"
