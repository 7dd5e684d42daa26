"""Per-key limits around the images handler: checked and counted before it, released after it.

A key without ``limits`` costs nothing here: no backend call at all. Spend is charged with the
request's actual cost (gateway/cost.py, on the request record) once the response is ready.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from gateway import metrics
from gateway.appkeys import LIMIT_HEADERS, LIMITS, PLAN, PRINCIPAL, RECORD, RUNTIME
from gateway.config import KeyConfig
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
    config = request[RUNTIME].config
    plan = make_plan(key.name, key.limits, request[PLAN].request.image_count,
                     config.router.deadline_s + SLOT_LEASE_MARGIN_S)
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
        response = await handler(request)
    finally:
        if decision is not None and decision.holds_slot:
            await _release(backend, plan, token)
    if plan.spend_day_micro is not None or plan.spend_month_micro is not None:
        await _charge(request, backend, plan)
    return response


async def _release(backend: LimitsBackend, plan: Claim, token: str) -> None:
    try:
        await backend.release(plan.key, token)
    except BackendUnavailable as exc:  # the slot's lease frees it later
        metrics.LIMITS_BACKEND_ERRORS.labels("release").inc()
        log.warning("could not release a concurrency slot of key '%s' (it expires by itself): %s", plan.key, exc)


async def _charge(request: web.Request, backend: LimitsBackend, plan: Claim) -> None:
    cost = request[RECORD].cost
    if cost is None or not cost.cost_usd:
        return
    try:
        await backend.charge(plan, round(cost.cost_usd * MICRO_USD))
    except BackendUnavailable as exc:
        metrics.LIMITS_BACKEND_ERRORS.labels("charge").inc()
        log.warning("could not charge %.6f USD to key '%s': %s", cost.cost_usd, plan.key, exc)
