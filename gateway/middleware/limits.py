"""Per-key limits around the images handler: checked and counted before it, released after it.

A key without ``limits`` costs nothing here: no backend call at all. A key with a spend limit
reserves the request's worst case (gateway/cost.py ``worst_case_usd``: the dearest of the models
that may serve it, at the size, quality, n and partial images asked) in the same atomic step that
checks the limit, and settles it to the actual cost once the response is done, whatever the
outcome: an answer is charged its cost, a failure what may have been billed (0 if nothing can
have been), an unknown cost keeps the reservation.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiohttp import web

from gateway import metrics
from gateway.appkeys import LIMIT_HEADERS, LIMITS, PLAN, PRINCIPAL, RECORD, RUNTIME
from gateway.config import KeyConfig
from gateway.cost import spent_usd, worst_case_usd
from gateway.errors import ServiceUnavailable
from gateway.limits import BackendUnavailable, Decision, LimitsBackend
from gateway.limits import Plan as Claim
from gateway.limits.policy import MICRO_USD, headers, make_plan, rate_limited
from gateway.middleware import Handler, Next

log = logging.getLogger("opengateway.limits")

#: A concurrency slot outlives the longest request by this much before it expires on its own.
SLOT_LEASE_MARGIN_S = 60.0


@web.middleware
def limits_middleware(request: web.Request, handler: Handler) -> Next:
    key = request.get(PRINCIPAL)
    if key is None or key.limits is None or PLAN not in request:
        return handler(request)
    return _limited(request, handler, key)


async def _limited(request: web.Request, handler: Handler, key: KeyConfig) -> web.StreamResponse:
    assert key.limits is not None
    runtime = request[RUNTIME]
    config = runtime.config
    spends = key.limits.spends
    planned = request[PLAN]
    reserve_usd = None
    if spends:  # the dearest model among those that may answer (skipped candidates never do)
        routes = {c.target.model: runtime.registry.models.get(c.target.model) for c in planned.candidates
                  if c.unsupported is None}
        reserve_usd = worst_case_usd(planned.request, [(r.price, r.tokens) for r in routes.values() if r is not None])
    plan = make_plan(key.name, key.limits, planned.request.image_count,
                     config.router.deadline_s + SLOT_LEASE_MARGIN_S, reserve_usd=reserve_usd)
    backend = request.app[LIMITS]
    token = secrets.token_hex(8)
    try:
        decision: Decision | None = await backend.acquire(plan, token)
    except BackendUnavailable as exc:
        metrics.LIMITS_BACKEND_ERRORS.labels("acquire").inc()
        if config.limits.on_backend_error == "closed":
            log.error("limits backend unavailable, refusing the request (on_backend_error: closed): %s", exc)
            raise ServiceUnavailable("The gateway cannot check this key's limits right now; retry shortly.",
                                     code="limits_unavailable", headers={"retry-after": "1"}) from None
        log.warning("limits backend unavailable, serving without limits (on_backend_error: open): %s", exc)
        decision = None
    if decision is not None:
        if decision.denied is not None:
            key_label = key.name if config.metrics.key_name_label else ""  # opt-in, bounded
            metrics.RATE_LIMITED.labels(decision.denied, key_label).inc()
            raise rate_limited(plan, decision)
        request[LIMIT_HEADERS] = headers(plan, decision)  # put on the answer by gateway.app
    try:
        return await handler(request)
    finally:
        if decision is not None and decision.holds_slot:
            await _release(backend, plan, token)
        if spends:
            # Shielded: a client that leaves mid-request still has its reservation settled.
            await asyncio.shield(_settle(request, backend, plan, plan.reserve_micro if decision is not None else 0))


async def _release(backend: LimitsBackend, plan: Claim, token: str) -> None:
    try:
        await backend.release(plan.key, token)
    except BackendUnavailable as exc:  # the slot's lease frees it later
        metrics.LIMITS_BACKEND_ERRORS.labels("release").inc()
        log.warning("could not release a concurrency slot of key '%s' (it expires by itself): %s", plan.key, exc)


async def _settle(request: web.Request, backend: LimitsBackend, plan: Claim, reserved_micro: int) -> None:
    """Charge what the request cost less what it reserved (negative: the rest is released)."""
    record = request[RECORD]
    usd = spent_usd(record.cost, record.possibly_billed, record.possibly_billed_usd)
    if usd is None:  # unknown: the worst case stays charged
        return
    delta = round(usd * MICRO_USD) - reserved_micro
    if not delta:
        return
    try:
        await backend.charge(plan, delta)
    except BackendUnavailable as exc:
        metrics.LIMITS_BACKEND_ERRORS.labels("charge").inc()
        log.warning("could not settle %.6f USD (reserved %.6f) for key '%s': %s", usd, reserved_micro / MICRO_USD,
                    plan.key, exc)
