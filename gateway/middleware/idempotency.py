"""``Idempotency-Key`` on the image routes (the rules: gateway/idempotency.py).

After the body is read and before it is judged: a repeat is answered from the store (its first
request's answer, a 400 included) without being validated, limited or routed again. A request
that takes its key runs detached from its client: a client that times out and retries finds its
first request still running, waits for it and gets its answer; the first is never cancelled
half-way with its image billed and lost.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway import idempotency as idem
from gateway.appkeys import BODY, CAPTURE, DETACHED, IDEMPOTENCY, PRINCIPAL, RECORD, RUNTIME
from gateway.body import Body
from gateway.config import IdempotencyConfig
from gateway.errors import GatewayError, internal_error
from gateway.middleware import Handler, Next
from gateway.record import RequestRecord

log = logging.getLogger("opengateway.idempotency")

_REFUSALS = {"mismatch": idem.mismatch, "lost": idem.in_doubt, "full": idem.full}


@web.middleware
def idempotency_middleware(request: web.Request, handler: Handler) -> Next:
    value = request.headers.get(idem.HEADER)
    if value is None or BODY not in request:  # no key, or not an image route
        return handler(request)
    settings = request[RUNTIME].config.idempotency
    if not settings.enabled:
        return handler(request)
    return _keyed(request, handler, idem.parse_key(value), settings)


async def _keyed(request: web.Request, handler: Handler, key: str, settings: IdempotencyConfig
                 ) -> web.StreamResponse:
    runtime, record, body = request[RUNTIME], request[RECORD], request[BODY]
    keeper = request.app[IDEMPOTENCY]
    store = keeper.store
    where = idem.scope(request[PRINCIPAL].name, record.route, key)
    fingerprint = body.fingerprint(record.route)
    deadline_s = runtime.config.router.deadline_s
    terms = idem.Terms(lock_s=deadline_s + settings.lock_margin_s, ttl_s=settings.ttl_s,
                       take_lost=settings.on_lost == "retry", max_total_bytes=settings.max_total_bytes)
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + (settings.wait_s if settings.wait_s is not None else deadline_s)
    while True:
        try:
            begun = await store.begin(where, fingerprint, record.request_id, terms)
        except idem.StoreUnavailable as exc:
            log.warning("idempotency store unreachable: %s", exc)
            record.idempotency = "unavailable"
            raise idem.unavailable() from None
        state = begun.state
        if state == "new":
            break
        if state == "in_flight":
            remaining = give_up_at - loop.time()
            if remaining <= 0:
                record.idempotency = "in_flight"
                raise idem.in_flight()
            await store.wait(where, remaining)
            continue
        record.idempotency = state
        if begun.stored is not None:
            record.idempotency = "replayed"
            return idem.replay(begun.stored)
        raise _REFUSALS[state]()
    record.idempotency = "new"
    capture = request[CAPTURE] = idem.Capture(settings.max_answer_bytes)
    body.hold()  # the run may outlive the request's own hold on an edit's images
    task = request[DETACHED] = keeper.detach(_run(request, handler, store, where, terms, capture, body))
    return await asyncio.shield(task)


async def _run(request: web.Request, handler: Handler, store: idem.Store, where: str, terms: idem.Terms,
               capture: idem.Capture, body: Body) -> web.StreamResponse:
    """The request under its key, to the end whatever its client does; its answer is then kept
    or the key let go (``idem.keeps``)."""
    record = request[RECORD]
    stored: idem.Stored | None = None
    try:
        response = await handler(request)
        stored = idem.answer_of(response, record.request_id, capture.max_bytes)
        if stored is None and capture.started:
            stored = capture.answer(record.request_id)
        return response
    except GatewayError as exc:
        stored = idem.error_answer(exc, record.request_id, capture.max_bytes)
        raise
    except ConnectionResetError:  # the client left while a whole answer was written: it was kept first
        if capture.started:
            stored = capture.answer(record.request_id)
        raise
    except asyncio.CancelledError:  # the process is stopping
        raise
    except Exception:
        stored = idem.error_answer(internal_error(record.request_id), record.request_id, capture.max_bytes)
        raise
    finally:
        body.close()
        await _settle(store, where, record, stored, terms)


async def _settle(store: idem.Store, where: str, record: RequestRecord, stored: idem.Stored | None,
                  terms: idem.Terms) -> None:
    billed = sum(1 for attempt in record.attempts if attempt.possibly_billed)
    if stored is None and billed and not terms.take_lost:
        # Cut short (the process stopping) after an attempt that may have been billed: repeats
        # are told the outcome is unknown, as if this gateway had died.
        stored = idem.error_answer(idem.in_doubt(), record.request_id, 1 << 20)
    try:
        if stored is not None and idem.keeps(stored.status, billed):
            await store.finish(where, record.request_id, stored, terms)
        else:
            await store.abandon(where, record.request_id)
    except idem.StoreUnavailable as exc:
        # The key stays held until its lock expires; repeats then find it lost (never a second call).
        log.warning("could not settle idempotency key of request %s: %s", record.request_id, exc)
