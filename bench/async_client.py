"""A small asyncio HTTP/1.1 load client for what wrk does not measure (S6, S7), run as a child
process by bench/run.py (``AsyncClient``) so that its timing shares nothing with the harness.

Two modes, both on 127.0.0.1 only, bounded in time and in count:

``ttfe``      one keep-alive connection, requests one after the other for ``--duration-s`` (at most
              ``--max-requests``): for each, the time from writing the request to the arrival of the
              first bytes of its body, which must be an SSE ``event:`` line (the time to first
              event), and to the end of the answer. The answer must be a 200 whose body holds
              ``--expect`` (the completed event's name), else it counts as an error. The time
              from the first event to the end of the answer is kept too: a proxy that buffers
              the stream hands the events over together, however far apart they were sent.
``inflight``  ``--count`` connections, one request each, all sent at once: when each body was
              handed to the kernel and when each answer came, so that the caller knows how many
              requests the server held at the same time (while it samples the server's RSS).
              ``--rounds N``: each connection sends its request N times, the next one as soon as
              the last is answered (as wrk does); the times are the first request's and the last
              answer's.

The request is ``POST --path`` with the bytes of ``--body-file`` and ``--content-type``, and the
bench key as a bearer token. It prints one line, ``BENCH_RESULT {json}``, and exits 0 (1 when the
run itself failed). Answers are parsed with httptools (the gateway's own dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools


class _Conn(asyncio.Protocol):
    """One connection: one answer at a time, with the arrival time of its first body bytes."""

    def __init__(self, keep_body: bool) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.keep_body = keep_body
        self.answer: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.keep_alive = False
        self.first_body_ns = 0
        self.arrived_ns = 0
        self.head = b""
        self.body = bytearray()

    def start(self, request: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self._reset()
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.arrived_ns = time.perf_counter_ns()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"unparseable answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("connection closed"))

    def _fail(self, exc: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # (asked here: llhttp resets it once the message is complete)
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if not self.first_body_ns:
            self.first_body_ns = self.arrived_ns
            self.head = body[:6]
        if self.keep_body:
            self.body += body

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(None)


def _request(port: int, path: str, content_type: str, body: bytes, key: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _connect(port: int, keep_body: bool) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Conn(keep_body), "127.0.0.1", port)
    return conn


def _pct(sorted_us: list[float], p: float) -> float:
    if not sorted_us:
        return 0.0
    return sorted_us[min(len(sorted_us) - 1, max(0, round(p / 100 * len(sorted_us)) - 1))]


async def ttfe(args: argparse.Namespace, request: bytes) -> dict[str, Any]:
    expect = args.expect.encode()
    conn = await _connect(args.port, keep_body=True)
    first_us: list[float] = []
    total_us: list[float] = []
    rest_us: list[float] = []  # from the first event to the end of the answer
    errors = reconnects = 0
    t_end = time.monotonic() + args.duration_s
    t0 = time.perf_counter_ns()
    while time.monotonic() < t_end and len(first_us) + errors < args.max_requests:
        if conn.transport is None or conn.transport.is_closing():
            conn = await _connect(args.port, keep_body=True)
        sent_ns = time.perf_counter_ns()
        try:
            await asyncio.wait_for(conn.start(request), args.timeout_s)
        except (asyncio.TimeoutError, ConnectionError):
            errors += 1
            if conn.transport is not None:
                conn.transport.abort()
            continue
        if conn.status != 200 or conn.head != b"event:" or expect not in conn.body:
            errors += 1
            continue
        first_us.append((conn.first_body_ns - sent_ns) / 1000)
        total_us.append((conn.arrived_ns - sent_ns) / 1000)
        rest_us.append((conn.arrived_ns - conn.first_body_ns) / 1000)
        if not conn.keep_alive:
            conn.transport.close()  # type: ignore[union-attr]
            reconnects += 1
    duration_s = (time.perf_counter_ns() - t0) / 1e9
    if conn.transport is not None:
        conn.transport.close()
    first_us.sort()
    total_us.sort()
    rest_us.sort()
    n = len(first_us)
    return {"requests": n, "errors": errors, "reconnects": reconnects, "duration_s": duration_s, "rps": n / duration_s if duration_s else 0.0,
            **{f"p{p}_us": _pct(first_us, p) for p in (50, 90, 99)}, "p999_us": _pct(first_us, 99.9),
            "max_us": first_us[-1] if n else 0.0, "mean_us": sum(first_us) / n if n else 0.0,
            "total_p50_us": _pct(total_us, 50), "total_p99_us": _pct(total_us, 99), "rest_p50_us": _pct(rest_us, 50)}


async def inflight(args: argparse.Namespace, request: bytes) -> dict[str, Any]:
    t0 = time.perf_counter_ns()
    conns = [await _connect(args.port, keep_body=False) for _ in range(args.count)]
    sent = [0.0] * args.count
    answered = [0.0] * args.count
    statuses: dict[str, int] = {}

    async def one(i: int, conn: _Conn) -> None:
        for _ in range(args.rounds):  # (the next request as soon as the answer is in, as wrk does)
            answer = conn.start(request)
            assert conn.transport is not None
            while conn.transport.get_write_buffer_size() and not answer.done():
                await asyncio.sleep(0.001)  # until the whole body is in the kernel's hands
            if not sent[i]:
                sent[i] = (time.perf_counter_ns() - t0) / 1e9
            try:
                await asyncio.wait_for(answer, args.timeout_s)
                key = str(conn.status)
            except (asyncio.TimeoutError, ConnectionError) as exc:
                key = type(exc).__name__
            answered[i] = (time.perf_counter_ns() - t0) / 1e9
            statuses[key] = statuses.get(key, 0) + 1
            if key != "200" or not conn.keep_alive:
                break

    await asyncio.gather(*(one(i, c) for i, c in enumerate(conns)))
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    # The most requests that were sent and not yet answered at one time.
    marks = sorted([(t, 1) for t in sent] + [(t, -1) for t in answered], key=lambda m: (m[0], m[1]))
    held = peak = 0
    for _, step in marks:
        held += step
        peak = max(peak, held)
    return {"count": args.count, "ok": statuses.get("200", 0), "statuses": statuses, "peak_in_flight": peak,
            "all_sent_s": max(sent), "first_answer_s": min(answered), "last_answer_s": max(answered)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("ttfe", "inflight"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--content-type", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--duration-s", type=float, default=2.0, help="ttfe: how long")
    ap.add_argument("--max-requests", type=int, default=100_000, help="ttfe: at most this many")
    ap.add_argument("--expect", default="image_generation.completed", help="ttfe: in every answer's body")
    ap.add_argument("--count", type=int, default=16, help="inflight: requests at once")
    ap.add_argument("--rounds", type=int, default=1,
                    help="inflight: requests per connection, each sent when the last is answered")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="per answer")
    args = ap.parse_args(argv)
    request = _request(args.port, args.path, args.content_type, Path(args.body_file).read_bytes(), args.key)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        result = asyncio.run(ttfe(args, request) if args.mode == "ttfe" else inflight(args, request))
    except OSError as exc:
        print(f"async_client: {exc}", file=sys.stderr)
        return 1
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# The caller's side (bench/run.py)


@dataclass
class Body:
    """A request body written once to the run's temp dir, sent by every run that names it."""

    path: str
    content_type: str
    file: Path


class AsyncClient:
    def __init__(self, procs: Any, tmp: Path, key: str, verbose: bool, log: Any) -> None:
        self.procs, self.tmp, self.key, self.verbose, self.log = procs, tmp, key, verbose, log
        self.count = 0

    def run(self, mode: str, port: int, body: Body, label: str, bound_s: float, **opts: float | int | str) -> dict[str, Any]:
        """One run of this client as a child process (``opts``: the mode's options, e.g.
        ``duration_s=2``); its result, or a HarnessError from the caller's ``procs``."""
        from procs import HarnessError  # the harness's own error (this module also runs alone)

        self.count += 1
        out = self.tmp / f"client-{self.count}.out"
        argv = [sys.executable, __file__, mode, "--port", str(port), "--path", body.path,
                "--body-file", str(body.file), "--content-type", body.content_type, "--key", self.key]
        for name, value in opts.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        p = self.procs.start(f"client {label}", argv, out)
        try:
            p.wait(bound_s)
        except subprocess.TimeoutExpired:
            self.procs.stop(p)
            raise HarnessError(f"client {label} did not finish within {bound_s:.0f} s") from None
        self.procs.started = [x for x in self.procs.started if x[1] is not p]
        text = out.read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_RESULT ")), None)
        if p.returncode != 0 or line is None:
            raise HarnessError(f"client {label} failed (status {p.returncode}):\n{text[-3000:]}")
        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        if self.verbose:
            self.log(f"  client {label}: {json.dumps(result)[:300]}")
        return result


if __name__ == "__main__":
    sys.exit(main())
