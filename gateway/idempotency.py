"""Retries that never bill twice: the ``Idempotency-Key`` request header on the image routes.

Semantics (the IETF draft draft-ietf-httpapi-idempotency-key-header and Stripe's practice), per
gateway key and route:

- the first request with a key takes it (``begin``), runs, and its answer is kept (status, the
  headers that matter, body) for ``idempotency.ttl_s``; a repeat with the same key and the same
  request (the fingerprint of the route and body, an edit's files included) gets that answer with
  ``idempotent-replayed: true``, and no upstream is called;
- a repeat while the first is still in flight waits for it (up to ``idempotency.wait_s``, by
  default the router's deadline) and gets the same answer; it never starts a second call. Past the
  wait it gets the draft's 409;
- the same key with another request is refused: 422 ``idempotency_key_reused``;
- what is kept (``keeps``): a success, a client error (a retry gets the same 400), and anything
  after an attempt that may have been billed. What is let go, so that a retry runs afresh: a
  transient failure after which nothing can have been billed (the gateway's own failure before
  any upstream call, a rate limit, upstreams that all refused);
- the first request's gateway dies holding the key: its lock expires (the router's deadline plus
  a margin), and a repeat is told the outcome is unknown and may have been billed (409
  ``idempotency_key_in_doubt``), unless the operator set ``on_lost: retry``.

Bounds: an answer larger than ``max_answer_bytes``, or one that would take the store past
``max_total_bytes``, is not kept: what is kept says it was given, and a repeat gets 409
``idempotency_answer_not_kept``, never a second generation. A store at its bound refuses new keys
(503 ``idempotency_store_full``) rather than serve them without the guarantee. The stores:
``MemoryStore`` (one process; this module) and ``RedisStore`` (every worker and replica sharing the
limits backend's Redis: gateway/idempotency_redis.py).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import time
from typing import Any, Callable, Coroutine, Mapping, NamedTuple, Protocol

import msgspec
from aiohttp import web

from gateway.errors import GatewayError, InvalidRequest
from gateway.limits import LimitsBackend

HEADER = "Idempotency-Key"
REPLAYED = "idempotent-replayed"
#: A key: what the draft's examples use (a UUID, random letters), bounded; quoted (an sf-string) or not.
_KEY = re.compile(r'^(?:"([A-Za-z0-9_\-.:~+/=]{1,255})"|([A-Za-z0-9_\-.:~+/=]{1,255}))$')
#: Headers of an answer worth giving a repeat (the rest is made anew, x-request-id included).
KEPT_HEADERS = frozenset(("content-type", "retry-after", "x-should-retry", "x-upstream-request-id",
                          "openai-processing-ms"))


class Stored(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """An answer as a repeat gets it. Not tracked by the garbage collector (``gc=False``: it
    holds no container that could lead back to it): a store keeps a day of answers, and every
    full collection would walk them all."""

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
    key), ``lost`` (the first's gateway died: its outcome is unknown), ``full`` (the store is at
    its bound: the request is refused rather than run without the guarantee)."""

    state: str
    stored: Stored | None = None


class Terms(NamedTuple):
    """One request's terms, from the configuration it is served with (``idempotency``)."""

    #: How long the key is held by its first request before it counts as lost.
    lock_s: float
    #: How long the key and its answer are kept.
    ttl_s: float
    #: A lost key is taken over (``on_lost: retry``) rather than answered as in doubt.
    take_lost: bool
    #: The bound on everything the store keeps (answers, and ``ENTRY_BYTES`` a key).
    max_total_bytes: int


#: What a key costs the store besides its answer (its record, in memory or Redis), counted
#: against ``max_total_bytes`` so that many small answers are bounded too.
ENTRY_BYTES = 512


class Store(Protocol):
    async def begin(self, key: str, fingerprint: str, owner: str, terms: Terms) -> Begin:
        """Atomically: the key's stored answer, or its state, or take it (``owner`` holds it for
        ``terms.lock_s``)."""

    async def finish(self, key: str, owner: str, stored: Stored, terms: Terms) -> None:
        """Keep the answer of the request that holds the key, and let the key go. An answer past
        ``terms.max_total_bytes`` is kept as a note that it was given (``kept=False``)."""

    async def abandon(self, key: str, owner: str) -> None:
        """Let the key go without an answer (nothing can have been billed; a retry runs afresh)."""

    async def wait(self, key: str, timeout_s: float) -> None:
        """Return when the key's request may have finished, or after ``timeout_s``."""

    async def close(self) -> None: ...


class StoreUnavailable(Exception):
    """The store (Redis) could not be reached in time."""


def parse_key(value: str) -> str:
    """The key of an ``Idempotency-Key`` header, or the 400 for a malformed or over-long one."""
    match = _KEY.match(value.strip())
    if match is None:
        raise InvalidRequest(
            f"Invalid {HEADER} header: expected 1 to 255 characters of letters, digits and - _ . : ~ + / =, "
            "optionally in double quotes (a UUID is recommended).", param=HEADER, code="invalid_idempotency_key")
    return match.group(1) or match.group(2)


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


def unavailable() -> GatewayError:
    return GatewayError(f"Requests with an {HEADER} cannot be served right now: the store that keeps their "
                        "answers is unreachable. Nothing was generated; retry with the same key.", status=503,
                        type="server_error", code="idempotency_unavailable", headers={"retry-after": "1"})


def full() -> GatewayError:
    return GatewayError(f"Requests with an {HEADER} cannot be served right now: the answers kept for repeats "
                        "have reached idempotency.max_total_bytes. Nothing was generated; retry later.",
                        status=503, type="server_error", code="idempotency_store_full", headers={"retry-after": "60"})


def not_kept_note(stored: Stored) -> Stored:
    """What is kept of an answer too large to keep: that it was given."""
    return Stored(status=stored.status, stream=stored.stream, kept=False, request_id=stored.request_id)


def scope(key_name: str, route: str, key: str) -> str:
    """Where a key lives: keys are per gateway key and route (two keys' clients never collide)."""
    return hashlib.sha256(f"{key_name}\0{route}\0{key}".encode()).hexdigest()


def keeps(status: int, possibly_billed: int) -> bool:
    """Whether an answer is kept for repeats. Kept: a success, a client error, and anything after
    an attempt that may have been billed. Let go (a retry runs afresh): a transient failure after
    which nothing can have been billed (the gateway's own failure before any upstream call, a
    rate limit, every upstream refusing at once)."""
    if possibly_billed or status < 400:
        return True
    return status < 500 and status not in (408, 409, 429)


class Capture:
    """The answer being given, as it is given: the image routes' writers add to it (gateway/
    response.py for a large body, the stream relay for completed and error events) when the
    request has a key; a small body is taken from the response itself. Past ``max_bytes`` only
    that an answer was given is kept."""

    __slots__ = ("max_bytes", "status", "headers", "parts", "size", "stream")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] | None = []
        self.size = 0
        self.stream = False

    def start(self, status: int, headers: Mapping[str, str], stream: bool = False) -> None:
        self.status = status
        self.headers = kept_headers(headers)
        self.stream = stream

    def add(self, *parts: bytes | memoryview) -> None:
        if self.parts is None:
            return
        self.size += sum(len(p) for p in parts)
        if self.size > self.max_bytes:
            self.parts = None  # too large: let go of what was kept
            return
        self.parts.extend(bytes(p) for p in parts)

    @property
    def started(self) -> bool:
        return self.status != 0

    def answer(self, request_id: str) -> Stored:
        stored = Stored(status=self.status, headers=self.headers, stream=self.stream, request_id=request_id)
        if self.parts is None:
            return not_kept_note(stored)
        stored.body = b"".join(self.parts)
        return stored


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items() if name.lower() in KEPT_HEADERS}


def answer_of(response: web.StreamResponse, request_id: str, max_bytes: int) -> Stored | None:
    """A whole answer (not streamed) as it is kept; None when the response was written as it went
    (its writer filled a ``Capture``)."""
    if not isinstance(response, web.Response) or response.body is None:
        return None
    body = response.body
    if not isinstance(body, (bytes, bytearray)):
        return None
    stored = Stored(status=response.status, headers=kept_headers(response.headers), body=bytes(body),
                    request_id=request_id)
    return stored if len(body) <= max_bytes else not_kept_note(stored)


def error_answer(error: GatewayError, request_id: str, max_bytes: int) -> Stored:
    response = error.to_response()
    stored = answer_of(response, request_id, max_bytes)
    assert stored is not None
    return stored


def replay(stored: Stored) -> web.Response:
    """A kept answer as a repeat gets it; an answer that was not kept is the 409 that says so."""
    if not stored.kept:
        raise not_kept()
    headers = {**stored.headers, REPLAYED: "true"}
    if stored.stream:
        headers.setdefault("content-type", "text/event-stream")
        headers["cache-control"] = "no-cache"
    return web.Response(status=stored.status, body=stored.body, headers=headers)


class _Entry(msgspec.Struct, gc=False):
    """A key in the memory store; untracked by the garbage collector, as ``Stored`` is."""

    fingerprint: str
    owner: str
    lock_until: float
    expires_at: float
    size: int
    stored: Stored | None = None
    #: Made when a repeat waits for the first request (rarely): an Event with its deque
    #: of waiters costs every kept key about 700 bytes.
    done: asyncio.Event | None = None

    def settled(self) -> None:
        """The first request finished or let go: wake the repeats waiting for it."""
        if self.done is not None:
            self.done.set()


class MemoryStore:
    """One process's keys; with several workers or replicas use Redis (``limits.backend``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: In the order of their last change: with one ttl they also expire in that order (one
        #: that outlives a shorter ttl set by a reload waits a little longer).
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        entry.settled()

    async def begin(self, key: str, fingerprint: str, owner: str, terms: Terms) -> Begin:
        now = self._clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                return Begin(state="mismatch")
            if entry.stored is not None:
                return Begin(state="replay", stored=entry.stored)
            if entry.lock_until > now:
                return Begin(state="in_flight")
            if not terms.take_lost:
                return Begin(state="lost")
            self._drop(key)
        size = ENTRY_BYTES + len(key)
        if self._bytes + size > terms.max_total_bytes:
            return Begin(state="full")
        self._entries[key] = _Entry(fingerprint, owner, now + terms.lock_s, now + terms.ttl_s, size)
        self._bytes += size
        return Begin(state="new")

    async def finish(self, key: str, owner: str, stored: Stored, terms: Terms) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.owner != owner:
            return
        if stored.kept and self._bytes + len(stored.body) > terms.max_total_bytes:
            stored = not_kept_note(stored)
        entry.stored = stored
        entry.size += len(stored.body)
        self._bytes += len(stored.body)
        entry.expires_at = self._clock() + terms.ttl_s
        self._entries.move_to_end(key)
        entry.settled()

    async def abandon(self, key: str, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.owner == owner and entry.stored is None:
            self._drop(key)

    async def wait(self, key: str, timeout_s: float) -> None:
        """Until the key's request finishes or lets go (or ``timeout_s``): waiters need not poll."""
        entry = self._entries.get(key)
        if entry is None or entry.stored is not None:
            return
        if entry.done is None:
            entry.done = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await entry.done.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0


class Keeper:
    """The process's store, and the keyed requests that outlive their clients: a client that times
    out and retries must find its first request still running (its repeat waits for the answer),
    not cancelled half-way with its image billed and lost."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._detached: set[asyncio.Task[web.StreamResponse]] = set()

    def detach(self, run: Coroutine[Any, Any, web.StreamResponse]) -> asyncio.Task[web.StreamResponse]:
        task = asyncio.get_running_loop().create_task(run)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return task

    async def close(self, timeout_s: float) -> None:
        """At exit: the detached requests get ``timeout_s`` to finish (the server's drain), then
        are cancelled (their keys are settled as they end)."""
        if self._detached:
            _, pending = await asyncio.wait(set(self._detached), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.store.close()


def make_store(limits: LimitsBackend) -> Store:
    """Where keys live: with the limits (``limits.backend``): in this process's memory, or in the
    Redis every worker and replica shares (through the limits backend's client)."""
    from gateway.limits.memory import MemoryBackend
    if isinstance(limits, MemoryBackend):
        return MemoryStore()
    from gateway.idempotency_redis import RedisStore
    from gateway.limits.redis_backend import RedisBackend
    assert isinstance(limits, RedisBackend)
    return RedisStore(limits.client, limits.prefix, limits.call_timeout_s)
