"""What the dashboard shows, kept in memory by each process: bounded counters and a ring of the
most recent requests. Only API routes (``/v1/...``) count; scrapes and dashboard views do not."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import msgspec

from gateway.record import RequestRecord

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
        #: The records themselves (nothing mutates a finished one); ``recent_requests()`` shapes them.
        self.recent: collections.deque[RequestRecord] = collections.deque(maxlen=recent_requests)
        self.durations_s: collections.deque[float] = collections.deque(maxlen=2000)
        #: (bucket start, requests, errors) per 10 s over the last 10 minutes.
        self.window: collections.deque[list[float]] = collections.deque(maxlen=_WINDOW_S // _BUCKET_S)

    def configure(self, recent_requests: int, max_tracked_ids: int) -> None:
        """A reload's ``dashboard`` settings: the ring keeps its newest records."""
        if self.recent.maxlen != recent_requests:
            self.recent = collections.deque(self.recent, maxlen=recent_requests)
        self.max_tracked_ids = max_tracked_ids

    def add(self, record: RequestRecord) -> None:
        if not record.route.startswith("/v1/"):
            return
        error = record.status >= 500
        cost = record.cost.cost_usd if record.cost is not None else None
        unknown_cost = cost is None and record.model_served is not None
        model = self.models.get(record.model or "none")
        if model is None:
            model = self.models[record.model or "none"] = Row()
        identity = record.identity
        for row in (self.total, model) if identity.user_id is None and identity.session_id is None else (
                self.total, model, *self._identity_rows(identity.user_id, identity.session_id)):
            row.requests += 1
            row.errors += error
            row.images += record.images
            row.duration_s += record.duration_s
            if cost is not None:
                row.cost_usd += cost
            elif unknown_cost:
                row.cost_unknown += 1
        if 400 <= record.status < 500:
            self.client_errors += 1
        for attempt in record.attempts:
            status = attempt.status
            if status == "skipped":
                continue
            p = self.providers.get(attempt.provider + " / " + attempt.region)
            if p is None:
                p = self.providers[attempt.provider + " / " + attempt.region] = ProviderRow()
            p.attempts += 1
            if status == "succeeded":
                p.succeeded += 1
            elif status == "failed":
                p.failed += 1
            elif status == "timeout":
                p.timeouts += 1
            p.latency_ms += attempt.latency_ms
        if record.route == "/v1/images/generations":
            self.durations_s.append(record.duration_s)
        bucket = record.started_at - record.started_at % _BUCKET_S
        window = self.window
        if not window or window[-1][0] != bucket:
            window.append([bucket, 0, 0])
        last = window[-1]
        last[1] += 1
        if error:
            last[2] += 1
        self.recent.appendleft(record)

    def _identity_rows(self, user_id: str | None, session_id: str | None) -> list[Row]:
        rows = []
        if user_id is not None:
            rows.append(self._tracked(self.users, user_id))
        if session_id is not None:
            rows.append(self._tracked(self.sessions, session_id))
        return rows

    def recent_requests(self) -> list[Recent]:
        """The most recent requests, newest first."""
        return [Recent(
            r.started_at, r.request_id, r.status, round(r.duration_s * 1000, 1), r.identity.user_id,
            r.identity.session_id, r.model_asked, r.model_served, r.provider, r.region,
            sum(1 for a in r.attempts if a.status != "skipped"), r.images,
            r.cost.cost_usd if r.cost is not None else None, r.error_code) for r in self.recent]

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
