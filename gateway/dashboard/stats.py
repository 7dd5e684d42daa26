"""What the dashboard shows, kept in memory by each process: bounded counters and a ring of the
most recent requests. Only API routes (``/v1/...``) count; scrapes and dashboard views do not."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import msgspec

from gateway.keys import RequestRecord

OTHER = "(other)"
_WINDOW_S = 600
_BUCKET_S = 10


class Row(msgspec.Struct):
    """Totals for one model, provider, user or session."""

    requests: int = 0
    errors: int = 0
    images: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0
    duration_s: float = 0.0


class ProviderRow(msgspec.Struct):
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    timeouts: int = 0
    latency_ms: float = 0.0


class Recent(msgspec.Struct):
    at: float
    request_id: str
    status: int
    latency_ms: float
    user_id: str | None
    session_id: str | None
    model_asked: str | None
    model_served: str | None
    provider: str | None
    region: str | None
    attempts: int
    images: int
    cost_usd: float | None
    error_code: str | None


class Stats:
    def __init__(self, recent_requests: int = 200, max_tracked_ids: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.started_at = clock()
        self.clock = clock
        self.max_tracked_ids = max_tracked_ids
        self.total = Row()
        self.client_errors = 0
        self.models: dict[str, Row] = {}
        self.providers: dict[str, ProviderRow] = {}
        self.users: dict[str, Row] = {}
        self.sessions: dict[str, Row] = {}
        self.recent: collections.deque[Recent] = collections.deque(maxlen=recent_requests)
        self.durations_s: collections.deque[float] = collections.deque(maxlen=2000)
        #: (bucket start, requests, errors) per 10 s over the last 10 minutes.
        self.window: collections.deque[list[float]] = collections.deque(maxlen=_WINDOW_S // _BUCKET_S)

    def add(self, record: RequestRecord) -> None:
        if not record.route.startswith("/v1/"):
            return
        error = record.status >= 500
        cost = record.cost.cost_usd if record.cost is not None else None
        rows = [self.total, self.models.setdefault(record.model or "none", Row())]
        if record.identity.user_id is not None:
            rows.append(self._tracked(self.users, record.identity.user_id))
        if record.identity.session_id is not None:
            rows.append(self._tracked(self.sessions, record.identity.session_id))
        for row in rows:
            row.requests += 1
            row.errors += error
            row.images += record.images
            row.duration_s += record.duration_s
            if cost is not None:
                row.cost_usd += cost
            elif record.model_served is not None:
                row.cost_unknown += 1
        self.client_errors += 400 <= record.status < 500
        for attempt in record.attempts:
            if attempt.status == "skipped":
                continue
            p = self.providers.setdefault(f"{attempt.provider} / {attempt.region}", ProviderRow())
            p.attempts += 1
            p.succeeded += attempt.status == "succeeded"
            p.failed += attempt.status == "failed"
            p.timeouts += attempt.status == "timeout"
            p.latency_ms += attempt.latency_ms
        if record.route == "/v1/images/generations":
            self.durations_s.append(record.duration_s)
        bucket = record.started_at - record.started_at % _BUCKET_S
        if not self.window or self.window[-1][0] != bucket:
            self.window.append([bucket, 0, 0])
        self.window[-1][1] += 1
        self.window[-1][2] += error
        self.recent.appendleft(Recent(
            record.started_at, record.request_id, record.status, round(record.duration_s * 1000, 1),
            record.identity.user_id, record.identity.session_id, record.model_asked, record.model_served,
            record.provider, record.region, sum(1 for a in record.attempts if a.status != "skipped"),
            record.images, cost, record.error_code))

    def _tracked(self, table: dict[str, Row], key: str) -> Row:
        row = table.get(key)
        if row is None:
            if len(table) >= self.max_tracked_ids:  # bounded memory: late ids share one row
                return table.setdefault(OTHER, Row())
            row = table[key] = Row()
        return row

    def recent_rate(self, seconds: float = 300) -> tuple[int, int]:
        """Requests and server errors over the last ``seconds``."""
        since = self.clock() - seconds
        buckets = [b for b in self.window if b[0] + _BUCKET_S > since]
        return int(sum(b[1] for b in buckets)), int(sum(b[2] for b in buckets))

    def percentiles_ms(self) -> dict[str, float | None]:
        ordered = sorted(self.durations_s)
        def pick(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}
