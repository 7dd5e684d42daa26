"""Every Prometheus metric the gateway exports, defined in one place (listed in docs/observability/metrics.md).

Label names follow the OpenTelemetry semantic conventions where one fits (``http_route``,
``http_response_status_code``, ``gen_ai_request_model``, ``gen_ai_response_model``,
``gen_ai_provider_name``, ``gen_ai_token_type``, ``cloud_region``). Labels are bounded: routes
are route templates, models are configured ids ("none" before one is resolved), providers and
regions come from the config. Never a user id, session id, prompt or raw path. ``key_name`` is
empty (which Prometheus treats as absent) unless ``metrics.key_name_label`` is on.

Several workers on one port: set ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory) before this
module is first imported; every process then writes its samples there and ``exposition()``
merges them, so any worker's ``/metrics`` shows the totals of all of them.

The hot path does not touch prometheus-client: ``observe()`` adds a finished request to a
``Batch`` (dict arithmetic, no locks), and ``publish()`` moves the batch into the metrics, one
``inc`` per series and one per histogram bucket. It runs before every scrape and every second
in a single process. With several workers ``observe()`` publishes at once, and is called
before the response goes out (gateway/observers.py), so that a sibling's scrape, or this
worker's sudden death, misses nothing that was answered.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import platform
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import prometheus_client
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

from gateway import __version__
from gateway.metrics_dir import PROMETHEUS_DIR_ENV
from gateway.model_lifecycle import shutdown_timestamp_s
from gateway.record import RequestRecord

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("opengateway.metrics")

#: Read once, as prometheus-client itself does when it picks its value class at import.
MULTIPROCESS = PROMETHEUS_DIR_ENV in os.environ
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_PLAIN_0_0_4

# ``*_created`` series double the output and nothing here reads them.
prometheus_client.disable_created_metrics()

#: Image calls take from tens of milliseconds (cached, local) to minutes; 60 s is the SLO of docs/observability/metrics.md.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300)
#: The gateway's own time per request; 10 ms is the overhead SLO there.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
#: Request bodies are up to 1 MB; answers carry n images of several MB of base64 each.
SIZE_BUCKETS = tuple(float(4 ** i * 256) for i in range(11))  # 256 B .. 256 MiB

BREAKER_STATES = ("closed", "open", "half_open")
#: The longest a single process keeps observations before they reach the metrics (``publish``).
PUBLISH_INTERVAL_S = 1.0

REQUESTS = Counter(
    "opengateway_requests", "HTTP requests answered, by route template, model and status code.",
    ["http_route", "gen_ai_request_model", "http_response_status_code", "key_name"])
REQUEST_DURATION = Histogram(
    "opengateway_request_duration_seconds", "Time from a request's arrival to its response.",
    ["http_route", "gen_ai_request_model"], buckets=LATENCY_BUCKETS)
OVERHEAD = Histogram(
    "opengateway_gateway_overhead_seconds",
    "Request time minus the time spent in upstream calls, for requests that reached the router.",
    ["http_route"], buckets=OVERHEAD_BUCKETS)
IN_FLIGHT = Gauge(
    "opengateway_requests_in_flight", "Requests being served right now.", multiprocess_mode="livesum")
REQUEST_SIZE = Histogram(
    "opengateway_request_size_bytes", "Request body sizes.", ["http_route"], buckets=SIZE_BUCKETS)
RESPONSE_SIZE = Histogram(
    "opengateway_response_size_bytes", "Response body sizes.", ["http_route"],
    buckets=SIZE_BUCKETS)
ATTEMPTS = Counter(
    "opengateway_upstream_attempts",
    "Upstream attempts by provider plugin, region, model and outcome (succeeded, failed, timeout, skipped, cancelled).",
    ["gen_ai_provider_name", "cloud_region", "gen_ai_request_model", "outcome"])
ATTEMPT_DURATION = Histogram(
    "opengateway_upstream_attempt_duration_seconds", "Duration of upstream attempts (skipped ones excluded).",
    ["gen_ai_provider_name", "cloud_region", "gen_ai_request_model", "outcome"], buckets=LATENCY_BUCKETS)
FALLBACKS = Counter(
    "opengateway_fallbacks", "Requests answered by a fallback model instead of the model asked.",
    ["gen_ai_request_model", "gen_ai_response_model"])
BREAKER_STATE = Gauge(
    "opengateway_breaker_state",
    "1 when the target's circuit breaker is in this state (several workers: in any live worker).",
    ["target", "gen_ai_provider_name", "cloud_region", "gen_ai_request_model", "state"],
    multiprocess_mode="livemax")
IMAGES = Counter(
    "opengateway_images_generated", "Images the upstreams generated, by the model that made them.",
    ["gen_ai_response_model", "gen_ai_provider_name", "key_name"])
TOKENS = Counter(
    "opengateway_tokens", "Tokens the upstreams reported, by type (input, output) and modality (text, image).",
    ["gen_ai_response_model", "gen_ai_provider_name", "gen_ai_token_type", "modality", "key_name"])
COST = Counter(
    "opengateway_cost_usd", "Cost of answered requests in US dollars, from the price table.",
    ["gen_ai_response_model", "gen_ai_provider_name", "key_name"])
COST_UNKNOWN = Counter(
    "opengateway_cost_unknown", "Answered requests whose cost is unknown (no price, no usage or no rate).",
    ["gen_ai_response_model"])
LIMITS_BACKEND_ERRORS = Counter(
    "opengateway_limits_backend_errors",
    "Calls to the limits backend (Redis) that failed or timed out, by operation (acquire, release, charge).",
    ["operation"])
STREAM_FIRST_EVENT = Histogram(
    "opengateway_stream_first_event_seconds",
    "Streamed requests: time from the request's arrival to its first event.",
    ["http_route", "gen_ai_request_model"], buckets=LATENCY_BUCKETS)
STREAM_DURATION = Histogram(
    "opengateway_stream_duration_seconds", "Streamed requests: time from arrival to the stream's end.",
    ["http_route", "gen_ai_request_model"], buckets=LATENCY_BUCKETS)
STREAM_PARTIAL_IMAGES = Counter(
    "opengateway_stream_partial_images", "Partial images relayed to streaming clients.",
    ["gen_ai_response_model", "gen_ai_provider_name"])
POSSIBLY_BILLED = Counter(
    "opengateway_possibly_billed_attempts",
    "Upstream attempts that failed after the request was sent (a timeout or a lost connection): the "
    "upstream may have generated, and billed, an image no client got.",
    ["gen_ai_provider_name", "cloud_region", "gen_ai_request_model"])
POSSIBLY_BILLED_USD = Counter(
    "opengateway_possibly_billed_usd",
    "An upper bound of what the possibly billed attempts cost, in US dollars (the request's estimate each).",
    ["gen_ai_request_model"])
IDEMPOTENT_REQUESTS = Counter(
    "opengateway_idempotent_requests",
    "Requests with an Idempotency-Key, by outcome: new (ran), replayed (answered from the store), or "
    "refused (mismatch, in_flight, lost, full, unavailable).", ["outcome"])
RATE_LIMITED = Counter(
    "opengateway_rate_limited", "Requests refused by a key's limit, by the limit that refused them.",
    ["limit", "key_name"])
MALFORMED_REQUESTS = Counter(
    "opengateway_malformed_requests",
    "HTTP requests aiohttp's parser refused with a 400 before any middleware (logged or not).")
MODEL_SHUTDOWN = Gauge(
    "opengateway_model_shutdown_timestamp_seconds",
    "When a provider shuts down a model configured under models: (unix seconds, the shutdown day's "
    "first instant UTC), by model, provider plugin and whether the operator pinned it.",
    ["gen_ai_request_model", "gen_ai_provider_name", "pinned"], multiprocess_mode="livemax")
BUILD_INFO = Gauge(
    "opengateway_build_info", "Always 1; the running gateway's version.", ["version", "python_version"],
    multiprocess_mode="max")
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

M = TypeVar("M")


class Children(Generic[M]):
    """A metric's label children by label tuple: one dict lookup on the hot path, no lock.
    Bounded because every label value is (see the module docstring)."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


_requests: Children[Any] = Children(REQUESTS)
_duration: Children[Any] = Children(REQUEST_DURATION)
_overhead: Children[Any] = Children(OVERHEAD)
_request_size: Children[Any] = Children(REQUEST_SIZE)
_response_size: Children[Any] = Children(RESPONSE_SIZE)
_attempts: Children[Any] = Children(ATTEMPTS)
_attempt_duration: Children[Any] = Children(ATTEMPT_DURATION)
_fallbacks: Children[Any] = Children(FALLBACKS)
_images: Children[Any] = Children(IMAGES)
_tokens: Children[Any] = Children(TOKENS)
_cost: Children[Any] = Children(COST)
_cost_unknown: Children[Any] = Children(COST_UNKNOWN)
_breaker: Children[Any] = Children(BREAKER_STATE)
_first_event: Children[Any] = Children(STREAM_FIRST_EVENT)
_stream_duration: Children[Any] = Children(STREAM_DURATION)
_partials: Children[Any] = Children(STREAM_PARTIAL_IMAGES)
_possibly_billed: Children[Any] = Children(POSSIBLY_BILLED)
_possibly_billed_usd: Children[Any] = Children(POSSIBLY_BILLED_USD)
_idempotent: Children[Any] = Children(IDEMPOTENT_REQUESTS)

_Series = tuple[Children[Any], tuple[str, ...]]


class Batch:
    """Counter increments and histogram observations not yet published, by series."""

    __slots__ = ("counts", "values")

    def __init__(self) -> None:
        self.counts: dict[_Series, float] = {}
        self.values: dict[_Series, list[float]] = {}

    def take(self) -> tuple[dict[_Series, float], dict[_Series, list[float]]]:
        """Everything observed so far; the batch starts empty again."""
        taken = self.counts, self.values
        self.counts, self.values = {}, {}
        return taken

    def inc(self, metric: Children[Any], labels: tuple[str, ...], amount: float = 1.0) -> None:
        series = (metric, labels)
        self.counts[series] = self.counts.get(series, 0.0) + amount

    def observe(self, metric: Children[Any], labels: tuple[str, ...], value: float) -> None:
        series = (metric, labels)
        values = self.values.get(series)
        if values is None:
            self.values[series] = [value]
        else:
            values.append(value)

    def __bool__(self) -> bool:
        return bool(self.counts or self.values)


def _observe_all(child: Any, values: list[float]) -> None:
    """``child.observe(v)`` for every value, as one ``inc`` per bucket touched plus one for the sum.
    Reads prometheus-client's histogram layout (non-cumulative ``_buckets`` under ``_upper_bounds``,
    ``_sum``; stable since its first releases, asserted by tests/test_metrics.py), and falls back
    to plain ``observe`` should that layout ever change."""
    bounds, buckets, total = (getattr(child, "_upper_bounds", None), getattr(child, "_buckets", None),
                              getattr(child, "_sum", None))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            child.observe(value)
        return
    per_bucket: dict[int, int] = {}
    for value in values:
        i = bisect.bisect_left(bounds, value)  # the first bound >= value, as observe() picks it
        per_bucket[i] = per_bucket.get(i, 0) + 1
    for i, count in per_bucket.items():
        buckets[i].inc(count)
    total.inc(sum(values))


#: The process's observations not yet published (the metrics themselves are process-wide too).
_batch = Batch()


def publish() -> None:
    """Move everything observed so far into the prometheus-client metrics."""
    counts, values = _batch.take()
    for (metric, labels), amount in counts.items():
        metric(*labels).inc(amount)
    for (metric, labels), observed in values.items():
        _observe_all(metric(*labels), observed)


def observe(record: RequestRecord, key_label: bool) -> None:
    """Count one finished request (the outermost middleware calls this once per request)."""
    batch = _batch
    route, model = record.route, record.model or "none"
    key = (record.key_name or "") if key_label else ""
    batch.inc(_requests, (route, model, str(record.status), key))
    batch.observe(_duration, (route, model), record.duration_s)
    if record.request_bytes:
        batch.observe(_request_size, (route,), record.request_bytes)
    if record.response_bytes:
        batch.observe(_response_size, (route,), record.response_bytes)
    if record.upstream_s > 0:
        batch.observe(_overhead, (route,), max(record.duration_s - record.upstream_s, 0.0))
    for attempt in record.attempts:
        labels = (attempt.provider, attempt.region, attempt.model, attempt.status)
        batch.inc(_attempts, labels)
        if attempt.status != "skipped":
            batch.observe(_attempt_duration, labels, attempt.latency_ms / 1000)
        if attempt.possibly_billed:
            batch.inc(_possibly_billed, labels[:3])
    if record.possibly_billed_usd:
        batch.inc(_possibly_billed_usd, (model,), record.possibly_billed_usd)
    if record.idempotency is not None:
        batch.inc(_idempotent, (record.idempotency,))
    if record.stream:
        if record.first_event_s is not None:
            batch.observe(_first_event, (route, model), record.first_event_s)
        batch.observe(_stream_duration, (route, model), record.duration_s)
    served = record.model_served
    if served is not None:  # an upstream answered; its images were paid for (even on a 499)
        provider = record.provider or "none"
        if record.partial_images:
            batch.inc(_partials, (served, provider), record.partial_images)
        if served != model:
            batch.inc(_fallbacks, (model, served))
        if record.images:
            batch.inc(_images, (served, provider, key), record.images)
        tokens = record.tokens
        if tokens is not None:
            for token_type, modality, count in (
                    ("input", "text", tokens.input_text), ("input", "image", tokens.input_image),
                    ("output", "text", tokens.text_output), ("output", "image", tokens.image_output)):
                if count:
                    batch.inc(_tokens, (served, provider, token_type, modality, key), count)
        cost = record.cost
        if cost is not None and cost.cost_usd is not None:
            batch.inc(_cost, (served, provider, key), cost.cost_usd)
        else:
            batch.inc(_cost_unknown, (served,))
    if MULTIPROCESS:
        publish()


def set_breaker_states(targets: Iterable[dict[str, Any]]) -> None:
    """Copy a router snapshot (dicts with target, provider, region, model, state) into the gauge."""
    for t in targets:
        current = str(t.get("state", "closed"))
        base = (str(t["target"]), str(t.get("provider", "")), str(t.get("region", "")), str(t.get("model", "")))
        for state in BREAKER_STATES:
            _breaker(*base, state).set(1 if state == current else 0)


class _Exposition:
    """The registry ``/metrics`` reads: the process's own, or (several workers) one that merges
    every worker's files, made once."""

    def __init__(self) -> None:
        self._merged: CollectorRegistry | None = None

    def __call__(self) -> bytes:
        if not MULTIPROCESS:
            return prometheus_client.generate_latest(REGISTRY)
        if self._merged is None:
            self._merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._merged)
        return prometheus_client.generate_latest(self._merged)


#: The text format of every metric; merged across workers in multiprocess mode.
exposition = _Exposition()


def breaker_snapshot(runtime: Runtime) -> list[dict[str, Any]]:
    """Every configured target's breaker (target, provider, region, model, state, ...) as dicts."""
    targets = [t for route in runtime.registry.models.values() for t in route.targets]
    return [msgspec.structs.asdict(t) for t in runtime.router.snapshot(targets)]


def refresh_breakers(runtime: Runtime) -> None:
    set_breaker_states(breaker_snapshot(runtime))


def refresh_shutdowns(runtime: Runtime) -> None:
    """Copy the configured models' shutdown days (gateway/model_lifecycle.py) into the gauge; a
    series whose model a reload dropped goes."""
    current: dict[tuple[str, ...], float] = {}
    for model_id in runtime.config.models:
        route = runtime.registry.models.get(model_id)
        if route is None:
            continue
        for target in route.targets:
            if target.lifecycle is not None and target.lifecycle.shutdown is not None:
                series = (model_id, target.plugin, "true" if route.pinned else "false")
                current[series] = shutdown_timestamp_s(target.lifecycle.shutdown)
    names = ("gen_ai_request_model", "gen_ai_provider_name", "pinned")
    shown = {tuple(s.labels[n] for n in names) for m in MODEL_SHUTDOWN.collect() for s in m.samples}
    for gone in shown - current.keys():
        # NaN first: with several workers a removed child's last value stays in its file.
        MODEL_SHUTDOWN.labels(*gone).set(float("nan"))
        MODEL_SHUTDOWN.remove(*gone)
    for labels, value in current.items():
        MODEL_SHUTDOWN.labels(*labels).set(value)


def background(current: Callable[[], Runtime]) -> list[asyncio.Task[None]]:
    """Keep the breaker gauge current (every ``metrics.breaker_refresh_s`` of the current config)
    and publish the batch every second (with several workers ``observe`` publishes at once)."""
    async def refresh_forever() -> None:
        while True:
            runtime = current()
            if runtime.config.metrics.enabled:
                refresh_breakers(runtime)
                refresh_shutdowns(runtime)
            await asyncio.sleep(runtime.config.metrics.breaker_refresh_s)

    async def publish_forever() -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            publish()

    return [asyncio.create_task(refresh_forever()), asyncio.create_task(publish_forever())]


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    """At shutdown: stop the background tasks and publish what is left."""
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    publish()
