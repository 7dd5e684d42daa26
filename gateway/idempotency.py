"""Retries that never bill twice: the ``Idempotency-Key`` request header on the image routes.

Semantics (the IETF draft draft-ietf-httpapi-idempotency-key-header and Stripe's practice), per
gateway key and route:

- the first request with a key takes it (``begin``), runs, and its answer is stored (status, the
  headers that matter, body) for ``idempotency.ttl_s``; a repeat with the same key and the same
  request (the fingerprint of the route and body, an edit's files included) gets that answer with
  ``idempotent-replayed: true``, and no upstream is called;
- a repeat while the first is still in flight waits for it (up to ``idempotency.wait_s``, by
  default the router's deadline) and gets the same answer; it never starts a second call. Past the
  wait it gets the draft's 409;
- the same key with another request is refused: 422 ``idempotency_key_reused``;
- a client error is stored too (a retry gets the same 400), and so is every answer that followed
  an upstream call; a failure of the gateway itself before any upstream call is not stored (the
  key is let go, a retry runs afresh);
- the first request's gateway dies holding the key: its lock expires (the router's deadline plus
  a margin), and a repeat is told the outcome is unknown and may have been billed (409
  ``idempotency_key_in_doubt``), unless the operator set ``on_lost: retry``.

An answer larger than ``max_answer_bytes`` (or, in memory, past ``max_total_bytes`` for all) is
not kept: what is kept says so, and a repeat gets 409 ``idempotency_answer_not_kept`` instead of a
second generation. The stores: ``MemoryStore`` (one process; this module) and ``RedisStore``
(every worker and replica sharing the limits backend's Redis: gateway/idempotency_redis.py).
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from typing import Callable, Protocol

import msgspec

from gateway.errors import GatewayError, InvalidRequest

HEADER = "Idempotency-Key"
REPLAYED = "idempotent-replayed"
#: A key: what the draft's examples use (a UUID, random letters), bounded; quoted (an sf-string) or not.
_KEY = re.compile(r'^"?([A-Za-z0-9_\-.:~+/=]{1,255})"?$')
#: Headers of an answer worth giving a repeat (the rest is made anew, x-request-id included).
KEPT_HEADERS = ("content-type", "retry-after", "x-should-retry", "x-upstream-request-id", "openai-processing-ms",
                "www-authenticate")


class Stored(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An answer as a repeat gets it."""

    status: int
    headers: dict[str, str] = {}
    body: bytes = b""
    #: The answer was a stream: ``body`` is its completed (or error) events, as Server-Sent Events.
    stream: bool = False
    #: False when the answer was too large to keep: only that it was given is known.
    kept: bool = True
    #: The original request's id (x-request-id), for the operator's logs.
    request_id: str = ""


class Begin(msgspec.Struct, kw_only=True):
    """What ``Store.begin`` found: ``new`` (the key is ours now), ``replay`` (``stored`` is the
    answer), ``in_flight`` (the first is still running), ``mismatch`` (another request used the
    key), ``lost`` (the first's gateway died: its outcome is unknown)."""

    state: str
    stored: Stored | None = None


class Store(Protocol):
    async def begin(self, key: str, fingerprint: str, owner: str, lock_s: float, ttl_s: float,
                    take_lost: bool) -> Begin:
        """Atomically: the key's stored answer, or its state, or take it (``owner`` holds it for
        ``lock_s``; the record lives ``ttl_s``). ``take_lost``: take a lost key over."""

    async def finish(self, key: str, owner: str, stored: Stored, ttl_s: float) -> None:
        """Store the answer of the request that holds the key, and let the key go."""

    async def abandon(self, key: str, owner: str) -> None:
        """Let the key go without an answer (the gateway failed before any upstream call)."""

    async def close(self) -> None: ...


def parse_key(value: str) -> str:
    """The key of an ``Idempotency-Key`` header, or the 400 for a malformed or over-long one."""
    match = _KEY.match(value.strip())
    if match is None:
        raise InvalidRequest(
            f"Invalid {HEADER} header: expected 1 to 255 characters of letters, digits and - _ . : ~ + / =, "
            "optionally in double quotes (a UUID is recommended).", param=HEADER, code="invalid_idempotency_key")
    return match.group(1)


def mismatch() -> GatewayError:
    return GatewayError(f"This {HEADER} was already used with a different request. Send a new key for a new "
                        "request.", status=422, type="invalid_request_error", code="idempotency_key_reused",
                        param=HEADER)


def in_flight() -> GatewayError:
    return GatewayError(f"A request with this {HEADER} is still being processed; retry later to get its answer.",
                        status=409, type="invalid_request_error", code="idempotency_key_in_flight",
                        param=HEADER, headers={"retry-after": "5"})


def in_doubt() -> GatewayError:
    return GatewayError(f"The request that first used this {HEADER} was lost before it answered (its gateway "
                        "stopped): whether the upstream generated, and billed, the image is unknown. It is not "
                        "generated again; send a new key to try anew.", status=409, type="invalid_request_error",
                        code="idempotency_key_in_doubt", param=HEADER, headers={"x-should-retry": "false"})


def not_kept() -> GatewayError:
    return GatewayError(f"The answer to this {HEADER} was given but was too large to keep for repeats; it is not "
                        "generated again. Send a new key to generate anew.", status=409,
                        type="invalid_request_error", code="idempotency_answer_not_kept", param=HEADER,
                        headers={"x-should-retry": "false"})


class _Entry:
    __slots__ = ("fingerprint", "owner", "lock_until", "expires_at", "stored", "done", "size")

    def __init__(self, fingerprint: str, owner: str, lock_until: float, expires_at: float) -> None:
        self.fingerprint = fingerprint
        self.owner = owner
        self.lock_until = lock_until
        self.expires_at = expires_at
        self.stored: Stored | None = None
        self.done = asyncio.Event()
        self.size = 0


class MemoryStore:
    """One process's keys; with several workers or replicas use Redis (``limits.backend``)."""

    def __init__(self, max_total_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_total_bytes = max_total_bytes
        self._clock = clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._bytes = 0

    def _expire(self, now: float) -> None:
        # Entries are kept in the order they were begun; with one ttl they expire in that order,
        # and one that outlives a shorter ttl set by a reload only waits a little longer.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            del self._entries[key]
            self._bytes -= entry.size

    async def begin(self, key: str, fingerprint: str, owner: str, lock_s: float, ttl_s: float,
                    take_lost: bool) -> Begin:
        now = self._clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None and entry.fingerprint != fingerprint:
            return Begin(state="mismatch")
        if entry is not None and entry.stored is not None:
            return Begin(state="replay", stored=entry.stored)
        if entry is not None and entry.lock_until > now:
            return Begin(state="in_flight")
        if entry is not None and not take_lost:
            return Begin(state="lost")
        self._entries.pop(key, None)
        self._entries[key] = _Entry(fingerprint, owner, now + lock_s, now + ttl_s)
        return Begin(state="new")

    async def finish(self, key: str, owner: str, stored: Stored, ttl_s: float) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.owner != owner:
            return
        size = len(stored.body)
        if self._bytes + size > self.max_total_bytes and stored.kept:
            stored = Stored(status=stored.status, stream=stored.stream, kept=False, request_id=stored.request_id)
            size = 0
        entry.stored, entry.size = stored, size
        entry.expires_at = self._clock() + ttl_s
        self._entries.move_to_end(key)
        self._bytes += size
        entry.done.set()

    async def abandon(self, key: str, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.owner == owner and entry.stored is None:
            del self._entries[key]
            entry.done.set()

    async def wait(self, key: str, timeout_s: float) -> None:
        """Until the key's request finishes or lets go (or ``timeout_s``): waiters need not poll."""
        entry = self._entries.get(key)
        if entry is None or entry.stored is not None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await entry.done.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        self._entries.clear()
