"""One immutable object per loaded configuration, and the app's single reference to it.

``build_runtime`` is the one function that turns a ``Config`` into what serves requests: the key
rings, the providers and model table, the router and the redactor. ``serve``, a reload,
``check-config`` and the tests all call it. The app holds one ``RuntimeRef``; a reload builds a
new Runtime and swaps the reference (on every worker: gateway/reload.py); each request pins the
Runtime it started with (gateway/middleware/metrics.py), so a request never mixes two
configurations, and nothing reloadable is read from anywhere else.

A few settings are tied to resources a process acquires once: listening sockets, the connection
pools, the limits backend, the access log's destination. They are listed in ``PROCESS_SETTINGS``;
a reload that changes one of them says so, and the new value takes effect at the next restart.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import msgspec

from gateway.config import Config
from gateway.cors import CorsPolicy
from gateway.keyring import KeyRing
from gateway.model_lifecycle import Today, default_today, notices
from gateway.redact import Redactor
from gateway.registry import Registry
from gateway.router import Router, RouterTiming
from gateway.upstream_http import UpstreamHTTP

log = logging.getLogger("opengateway")

#: Settings read once per process, when its resources are made (dotted config paths).
PROCESS_SETTINGS: tuple[str, ...] = (
    "server.host", "server.port", "server.workers", "server.admin_port", "server.admin_host",
    "server.max_body_bytes", "server.max_upstream_body_bytes", "server.upstream_pool_size",
    "server.keepalive_timeout_s", "server.drain_timeout_s", "server.max_line_bytes",
    "server.max_header_bytes", "server.max_headers", "server.access_log",
    "limits.backend", "limits.key_prefix", "limits.socket_timeout_s", "limits.max_connections",
    "log.destination",
    # The span exporter and the sampler are made once (gateway/tracing.py); the tracing link is in
    # the middleware chain only when tracing was on at start-up.
    "tracing.enabled", "tracing.endpoint", "tracing.service_name", "tracing.headers", "tracing.sample_ratio",
    "tracing.batch_delay_s", "tracing.export_timeout_s",
)


class Resources(NamedTuple):
    """What a process makes once and every Runtime shares."""

    http: UpstreamHTTP
    timing: RouterTiming = RouterTiming()
    #: The day the lifecycle checks take as today (gateway/model_lifecycle.py).
    today: Today = default_today


class Runtime:
    """Everything one configuration makes of the gateway. Built once, never changed."""

    __slots__ = ("config", "keys", "admins", "registry", "router", "redactor", "cors", "generation", "today")

    def __init__(self, config: Config, keys: KeyRing, admins: KeyRing, registry: Registry, router: Router,
                 redactor: Redactor, cors: CorsPolicy | None, generation: int, today: Today = default_today
                 ) -> None:
        self.config = config
        #: The gateway keys (``keys``) and the admin keys (``admin_keys``).
        self.keys = keys
        self.admins = admins
        self.registry = registry
        self.router = router
        self.redactor = redactor
        #: Which web pages may call the API from a browser; None: CORS is off.
        self.cors = cors
        #: 1 for the configuration the process started with, +1 per reload.
        self.generation = generation
        #: The process's clock of days (the same for every runtime it builds).
        self.today = today


def build_runtime(config: Config, resources: Resources, previous: Runtime | None = None,
                  generation: int | None = None, log_notices: bool = True) -> Runtime:
    """The Runtime of ``config``; ConfigError listing every problem (plugins and their settings
    included). ``previous``: the runtime it replaces, whose circuit breakers carry over when the
    breaker settings are unchanged (a reload that rotates a key does not reset them).
    ``log_notices``: log configured models past or near their shutdown (``check-config`` prints
    them itself)."""
    registry = Registry.build(config, resources.http)
    keys, admins = KeyRing(config.keys), KeyRing(config.admin_keys)
    redactor = Redactor(registry.secrets(), keys.digests | admins.digests)
    breakers = None
    if previous is not None and previous.config.router.breaker == config.router.breaker:
        targets = {t.id for route in registry.models.values() for t in route.targets}
        breakers = {tid: b for tid, b in previous.router.breakers.items() if tid in targets}
    router = Router(config.router, redactor, resources.timing, breakers)
    cors = CorsPolicy.from_config(config.cors)
    if cors is not None and cors.any_origin:
        log.warning("cors.allow_origins has '*': any web page may call the gateway from a browser with a key "
                    "its user types in (keys in browsers are the user's: give such pages per-user keys with "
                    "limits, never a shared one)")
    if log_notices:
        for notice in notices(registry, resources.today()):
            log.warning("%s", notice)
    if generation is None:
        generation = 1 if previous is None else previous.generation + 1
    return Runtime(config, keys, admins, registry, router, redactor, cors, generation, resources.today)


class RuntimeRef:
    """The app's one reference to the current Runtime; a reload swaps it in one assignment."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


def _get(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def restart_required(old: Config, new: Config) -> list[str]:
    """The process settings that differ between ``old`` and ``new`` (they wait for a restart)."""
    return [path for path in PROCESS_SETTINGS if _get(old, path) != _get(new, path)]


def changed_sections(old: Config, new: Config) -> list[str]:
    """The top-level sections of the config that a reload changes (for the operator's log)."""
    return [f.name for f in msgspec.structs.fields(Config) if getattr(old, f.name) != getattr(new, f.name)]
