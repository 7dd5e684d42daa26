"""What one request did: the record filled in along the middleware chain and read by the observers
(metrics, dashboard figures, access log) once the response has gone out."""

from __future__ import annotations

import msgspec

from gateway.api import Attempt, Usage
from gateway.cost import Cost, Tokens


class Identity(msgspec.Struct, frozen=True):
    """The analytics headers, bounded and sanitised; never used as metric labels."""

    user_id: str | None = None
    session_id: str | None = None


class RequestRecord(msgspec.Struct, kw_only=True):
    """What one request did, filled in along the chain and read by metrics and the access log."""

    request_id: str
    route: str = "unmatched"
    method: str = "GET"
    #: The client's address: the peer, or X-Forwarded-For via server.trusted_proxies (gateway/forwarded.py).
    client_ip: str | None = None
    key_name: str | None = None
    identity: Identity = Identity()
    model_asked: str | None = None
    #: The configured model id the request resolved to (bounded: safe as a metric label).
    model: str | None = None
    model_served: str | None = None
    provider: str | None = None
    region: str | None = None
    attempts: list[Attempt] = []
    usage: Usage | None = None
    images: int = 0
    upstream_s: float = 0.0
    #: ``time.perf_counter()`` when the request arrived (the outermost middleware's clock).
    arrived_at: float = 0.0
    #: A streamed answer: the time from arrival to its first event, and the partial images relayed.
    stream: bool = False
    first_event_s: float | None = None
    partial_images: int = 0
    #: Attempts that may have been billed without an answer, and an upper bound of their cost.
    possibly_billed: int = 0
    possibly_billed_usd: float | None = None
    #: With an Idempotency-Key: ``new`` (ran), ``replayed``, or why it was refused (``mismatch``,
    #: ``in_flight``, ``lost``, ``full``, ``unavailable``); None without one.
    idempotency: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    status: int = 0
    error_code: str | None = None
    #: Set from the answering model's price (gateway/cost.py) when the upstream answered.
    tokens: Tokens | None = None
    cost: Cost | None = None
    #: Unix time the request arrived, and its duration as the outermost middleware saw it.
    started_at: float = 0.0
    duration_s: float = 0.0
