"""The gateway's configuration, as typed msgspec Structs: one YAML file decoded into ``Config``.

This module is the schema, every field with its default and bounds. Reading a file (``${ENV}``
references, every problem with its line, the cross-checks, the config built from the
environment when there is no file) is gateway/config_load.py.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.catalog import Capabilities, Price

PositiveSeconds = Annotated[float, Meta(gt=0)]


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    #: Largest accepted request body; the prompt is at most 32,000 characters.
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 1_048_576
    #: Edits: the largest input image (OpenAI's limit for GPT Image models is 50 MB), all of one
    #: request's files together, and how much of a request's files is held in memory (the rest goes
    #: to temporary files).
    max_upload_bytes: Annotated[int, Meta(ge=1024)] = 52_428_800
    max_upload_total_bytes: Annotated[int, Meta(ge=1024)] = 134_217_728
    upload_memory_bytes: Annotated[int, Meta(ge=0)] = 16_777_216
    #: Largest accepted upstream answer (n images of several MB of base64 each).
    max_upstream_body_bytes: Annotated[int, Meta(ge=1024)] = 268_435_456
    access_log: bool = True
    keepalive_timeout_s: PositiveSeconds = 75.0
    #: How long a SIGTERM waits for in-flight requests before exiting.
    drain_timeout_s: PositiveSeconds = 30.0
    #: Connections kept per upstream host; image calls are long, so this bounds concurrency.
    upstream_pool_size: Annotated[int, Meta(ge=1)] = 10_000
    #: Processes sharing the port (``opengateway serve --workers`` overrides); 1 runs in-process.
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    #: How long a client may take to send its request body (slow-body clients hold a connection).
    body_read_timeout_s: PositiveSeconds = 30.0
    #: HTTP request-line and header limits (aiohttp answers 400 past them).
    max_line_bytes: Annotated[int, Meta(ge=256)] = 8190
    max_header_bytes: Annotated[int, Meta(ge=256)] = 8190
    max_headers: Annotated[int, Meta(ge=8)] = 64
    #: CIDRs of reverse proxies whose X-Forwarded-For is believed (empty: the peer address is the client).
    trusted_proxies: list[str] = []
    #: When set, /metrics and /dashboard are served only on this port (bound to admin_host), 404 elsewhere.
    admin_port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    admin_host: str = "127.0.0.1"


PerMinute = Annotated[int, Meta(ge=1)]
Usd = Annotated[float, Meta(gt=0)]


class KeyLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One key's limits (gateway/limits/); an absent limit is not enforced."""

    requests_per_minute: PerMinute | None = None
    #: Counts each request's ``n`` (1 when absent).
    images_per_minute: PerMinute | None = None
    #: Requests in flight at once, across every replica sharing the limits backend.
    concurrent_requests: Annotated[int, Meta(ge=1)] | None = None
    #: Spend per UTC day / month, charged with each request's actual cost after its response.
    spend_usd_per_day: Usd | None = None
    spend_usd_per_month: Usd | None = None

    @property
    def spends(self) -> bool:
        """Whether a spend limit is set: each request then reserves its worst case and settles it."""
        return self.spend_usd_per_day is not None or self.spend_usd_per_month is not None


class KeyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A gateway key: only its SHA-256 hash is stored (``opengateway keys create`` prints it)."""

    name: str
    hash: Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
    #: Globs of the model ids this key may use (``openai/*``).
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: Globs of the models it may name as fallbacks; None means the same as ``models``.
    fallback_models: list[str] | None = None
    enabled: bool = True
    limits: KeyLimits | None = None
    #: RFC 3339 with a time zone (``2026-12-31T23:59:59Z``); the key answers 401 from then on.
    expires_at: Annotated[datetime, Meta(tz=True)] | None = None


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where the per-key limit counters live (gateway/limits/)."""

    #: ``memory`` (one process) or a ``redis://`` / ``rediss://`` URL shared by every replica.
    backend: Annotated[str, Meta(pattern=r"^(memory|rediss?://.+)$")] = "memory"
    #: Redis unreachable: ``open`` serves unlimited (and counts an error), ``closed`` answers 503.
    on_backend_error: Literal["open", "closed"] = "open"
    key_prefix: str = "opengateway:"
    #: Connect and command timeout for Redis; short, so a dead Redis never holds a request.
    socket_timeout_s: PositiveSeconds = 0.25
    #: Redis connections per process; a burst beyond them queues (one script takes ~0.1 ms).
    max_connections: Annotated[int, Meta(ge=1)] = 64


class ProviderInstance(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One configured instance of a provider plugin."""

    id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    plugin: str
    region: str = "global"
    settings: dict[str, Any] = {}


class TargetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    provider: str
    weight: Annotated[float, Meta(gt=0)] | None = None


#: The request fields an operator may let a model drop (``models.<id>.drop_unsupported``): the
#: ones whose allowed values depend on the model. ``n`` is never dropped.
DroppableField = Literal["size", "quality", "background", "output_format", "output_compression", "moderation"]


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A model id's deployments, in priority order (or weighted), and its defaults."""

    targets: list[str | TargetConfig]
    fallbacks: list[str] = []
    #: Replaces the capabilities the provider declares for this model.
    capabilities: Capabilities | None = None
    #: Request fields beyond the contract to accept and forward, added to the capabilities'.
    extra_fields: list[str] = []
    #: Overrides the bundled price table (USD per 1M tokens, or per image / megapixel).
    price: Price | None = None
    #: Request fields a target of this model may drop when it cannot honour them, instead of the
    #: request being refused (or the target skipped); each drop is noted in the attempt.
    drop_unsupported: list[DroppableField] = []
    #: Serve the model past its providers' shutdown dates (gateway/model_lifecycle.py): the
    #: gateway stops refusing it and leaves the answer to the upstream.
    pinned: bool = False


class BreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Circuit breaker per target (docs/routing.md)."""

    enabled: bool = True
    #: Consecutive failed attempts that open the circuit.
    consecutive_failures: Annotated[int, Meta(ge=1)] = 5
    #: Also open when this share of the last ``window_requests`` attempts failed (null: off).
    failure_ratio: Annotated[float, Meta(gt=0, le=1)] | None = 0.5
    window_requests: Annotated[int, Meta(ge=2, le=10_000)] = 20
    #: First open period; each further trip multiplies it, up to ``max_cooldown_s``.
    cooldown_s: PositiveSeconds = 5.0
    cooldown_multiplier: Annotated[float, Meta(ge=1)] = 2.0
    max_cooldown_s: PositiveSeconds = 300.0


class RouterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    attempt_timeout_s: PositiveSeconds = 120.0
    deadline_s: PositiveSeconds = 300.0
    max_fallbacks: Annotated[int, Meta(ge=0)] = 5
    retry_statuses: list[Annotated[int, Meta(ge=400, le=599)]] = msgspec.field(
        default_factory=lambda: [408, 429, 500, 502, 503, 504])
    fallback_on_moderation: bool = False
    #: After an ambiguous failure (the request reached the upstream, no answer came back: it may be
    #: generating and billing): ``fallback`` tries the next target but never this one again,
    #: ``retry`` treats it like any retryable failure (may bill twice), ``fail`` answers at once.
    on_ambiguous: Literal["fallback", "retry", "fail"] = "fallback"
    #: Attempts on one target (the first plus retries) before moving to the next.
    max_attempts_per_target: Annotated[int, Meta(ge=1, le=10)] = 2
    #: Full-jitter backoff between attempts on one target: uniform(0, min(cap, base * 2**retry)).
    backoff_base_s: PositiveSeconds = 0.5
    backoff_cap_s: PositiveSeconds = 8.0
    #: The longest upstream retry-after waited for; a longer one moves to the next target at once.
    max_retry_after_s: Annotated[float, Meta(ge=0)] = 30.0
    breaker: BreakerConfig = BreakerConfig()


class IdempotencyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``Idempotency-Key`` header on the image routes (gateway/idempotency.py,
    docs/retries-and-billing.md). Keys and answers live where the limits do (``limits.backend``)."""

    enabled: bool = True
    #: How long a key and its answer are kept (the IETF draft and Stripe: 24 hours).
    ttl_s: PositiveSeconds = 86_400.0
    #: An answer larger than this is not kept; a repeat is told so (409), never generated again.
    max_answer_bytes: Annotated[int, Meta(ge=1024)] = 32 * 1024 * 1024
    #: Everything kept, answers and 512 bytes a key (per process in memory; in Redis for all).
    max_total_bytes: Annotated[int, Meta(ge=1024 * 1024)] = 256 * 1024 * 1024
    #: How long a repeat waits for the first request still in flight; None: ``router.deadline_s``.
    wait_s: PositiveSeconds | None = None
    #: A key is held for ``router.deadline_s`` plus this margin; a gateway that dies holding it
    #: leaves it locked that long.
    lock_margin_s: PositiveSeconds = 60.0
    #: The first request's gateway died holding the key: ``fail`` tells repeats the outcome is
    #: unknown (409, nothing generated again); ``retry`` runs them afresh (may bill twice).
    on_lost: Literal["fail", "retry"] = "fail"


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``/metrics`` (gateway/metrics.py; docs/observability/metrics.md lists every metric)."""

    enabled: bool = True
    #: When set, ``/metrics`` asks for ``Authorization: Bearer <token>`` (use a ``${ENV}`` reference).
    bearer_token: Annotated[str, Meta(min_length=16)] | None = None
    #: Adds the gateway key's name as a label (``key_name``); off by default to bound the series.
    key_name_label: bool = False
    #: How often breaker states are copied into ``opengateway_breaker_state``.
    breaker_refresh_s: PositiveSeconds = 5.0


class DashboardConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``/dashboard`` (gateway/dashboard/), reachable with an ``admin_keys`` key."""

    enabled: bool = True
    #: Signs the session cookie; set it (``${ENV}``) when several workers or replicas serve the
    #: dashboard, otherwise each process draws its own and a session lives in one process only.
    session_secret: Annotated[str, Meta(min_length=32)] | None = None
    session_ttl_s: PositiveSeconds = 28_800.0
    refresh_s: Annotated[int, Meta(ge=1, le=3600)] = 10
    recent_requests: Annotated[int, Meta(ge=1, le=100_000)] = 200
    #: Distinct user and session ids tracked for the top tables; later ones count as "(other)".
    max_tracked_ids: Annotated[int, Meta(ge=1)] = 10_000


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The JSON access log (gateway/access_log.py); ``server.access_log: false`` turns it off."""

    #: ``stderr``, ``stdout`` or a file path (appended to).
    destination: str = "stderr"
    #: ``info`` logs every request, ``warning`` only 4xx and 5xx, ``error`` only 5xx.
    level: Literal["info", "warning", "error"] = "info"
    #: The prompt is user content: it is logged only when this is true.
    include_prompt: bool = False


HeaderName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]


class CorsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Web pages on other origins calling the API from a browser (gateway/cors.py); off while
    ``allow_origins`` is empty. Only the ``/v1/`` routes take part; operator routes never do."""

    #: Origins exactly as browsers send them (``https://app.example.com``: scheme, host, a port
    #: other than the default, no path), or ``*`` for any page (logged as a warning: a key typed
    #: into a page is that page's user's key).
    allow_origins: list[str] = []
    #: Methods a page may use.
    allow_methods: list[Annotated[str, Meta(pattern=r"^[A-Z]+$")]] = msgspec.field(
        default_factory=lambda: ["GET", "POST"])
    #: Request headers a page may send, besides those always allowed (``Authorization``,
    #: ``Content-Type``, the SDKs' ``x-stainless-*``, the analytics headers, ``Idempotency-Key``).
    allow_headers: list[HeaderName] = []
    #: Response headers a page may read, besides those always exposed (``x-request-id``,
    #: ``x-ratelimit-*``, ``retry-after``, ...).
    expose_headers: list[HeaderName] = []
    #: How long a browser may reuse a preflight's answer (browsers apply their own cap too).
    max_age_s: Annotated[int, Meta(ge=0, le=86_400)] = 600
    #: Sends ``Access-Control-Allow-Credentials: true`` (cookies, TLS client certificates). Gateway
    #: keys travel in a header and need no credentials mode; never together with ``*``.
    allow_credentials: bool = False


class TracingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """OpenTelemetry traces sent by OTLP/HTTP (gateway/tracing.py; docs/observability/tracing.md). Needs
    the ``otel`` extra. Read once per process, except ``include_prompt`` and ``include_user_id``."""

    enabled: bool = False
    #: The collector's OTLP/HTTP traces URL (4318 and /v1/traces are OTLP/HTTP's defaults).
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    #: ``service.name`` of the spans' resource.
    service_name: str = "opengateway"
    #: Sent with every export (an auth token: use a ``${ENV}`` reference).
    headers: dict[HeaderName, str] = {}
    #: Share of new traces kept; a client's sampled flag is followed whatever this says.
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0
    #: How often queued spans are sent, and how long one export may take.
    batch_delay_s: PositiveSeconds = 5.0
    export_timeout_s: PositiveSeconds = 10.0
    #: The prompt and the analytics ids are user content: in spans only when these are true.
    include_prompt: bool = False
    include_user_id: bool = False


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    providers: list[ProviderInstance] = []
    models: dict[str, ModelConfig] = {}
    aliases: dict[str, str] = {}
    #: A model id without its owner (``gpt-image-2``, as LiteLLM and chat front-ends send it):
    #: ``resolve`` serves the one configured ``owner/gpt-image-2`` (two or more: a 400 naming
    #: them); ``refuse`` answers 400 asking for ``owner/model``.
    bare_model_ids: Literal["resolve", "refuse"] = "resolve"
    keys: list[KeyConfig] = []
    router: RouterConfig = RouterConfig()
    #: Key hashes of admins (dashboard, reload); empty means no admin access.
    admin_keys: list[KeyConfig] = []
    limits: LimitsConfig = LimitsConfig()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    metrics: MetricsConfig = MetricsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    log: LogConfig = LogConfig()
    cors: CorsConfig = CorsConfig()
    tracing: TracingConfig = TracingConfig()


class Problem(msgspec.Struct, frozen=True):
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], source: str = "config") -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(map(str, problems)))


def key_hash(token: str) -> str:
    """The form a key takes in the config: ``sha256:<hex digest>`` (gateway/keyring.py checks it)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()
