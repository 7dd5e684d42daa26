"""Circuit breakers, one per target, so a dead deployment costs nothing instead of seconds.

closed     attempts flow; N consecutive failures, or a failure ratio over the last M attempts,
           open the circuit.
open       the target is skipped until ``open_until``; the cooldown grows with each trip
           (``cooldown_s * multiplier ** (trips - 1)``, capped at ``max_cooldown_s``).
half_open  after the cooldown exactly one request probes the target while the others skip it;
           its success closes the circuit, its failure re-opens it for a longer cooldown.

A rate limit is not a failure: an upstream answering 429 is working, and asks for time. It
neither counts towards opening the circuit nor closes it; with a ``retry-after`` the target is
``rate_limited_until`` then, and the router skips it until that time (a request whose every
target is rate limited is answered 429 with the soonest ``retry-after``, never 503).

Everything runs on the event loop's thread, so there are no locks; the closed state's
bookkeeping is a few integer updates and one deque append. Times come from the router's clock.
"""

from __future__ import annotations

import collections
from typing import Literal

from gateway.config import BreakerConfig

State = Literal["closed", "open", "half_open"]
CLOSED: State = "closed"
OPEN: State = "open"
HALF_OPEN: State = "half_open"


class Breaker:
    __slots__ = ("config", "state", "consecutive_failures", "trips", "open_until", "probing",
                 "rate_limited_until", "_window", "_window_failures")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state: State = CLOSED
        self.consecutive_failures = 0
        #: Trips since the circuit last closed: the next cooldown's exponent.
        self.trips = 0
        self.open_until = 0.0
        #: True while the one half-open probe is in flight.
        self.probing = False
        #: The upstream's retry-after of its last 429, as a time on the router's clock.
        self.rate_limited_until = 0.0
        self._window: collections.deque[bool] = collections.deque(maxlen=config.window_requests)
        self._window_failures = 0

    def allow(self, now: float) -> bool:
        """May a request try this target now? In half-open, True hands the caller the probe
        (``state`` is then ``half_open``), and the caller must report its outcome."""
        if self.state is CLOSED:
            return True
        if self.state is OPEN:
            if now < self.open_until:
                return False
            self.state = HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        if self.state is HALF_OPEN:
            self._close()
        elif self.state is CLOSED:
            self._observe(False)

    def failed(self, now: float) -> None:
        self.consecutive_failures += 1
        if self.state is HALF_OPEN:
            self._trip(now)
        elif self.state is CLOSED:
            self._observe(True)
            if self.config.enabled and self._should_trip():
                self._trip(now)
        # OPEN: an attempt that started before the trip; the count is all it changes.

    def released(self, probe: bool) -> None:
        """An attempt that says nothing about the target's health (a client error, a
        cancellation, a deadline): give the probe back so the next request can take it."""
        if probe and self.state is HALF_OPEN:
            self.probing = False

    def rate_limited(self, probe: bool, until: float | None) -> None:
        """The upstream answered 429: not a failure (see above); ``until``: its retry-after."""
        self.released(probe)
        if until is not None:
            self.rate_limited_until = max(self.rate_limited_until, until)

    def retry_in_s(self, now: float) -> float:
        return max(0.0, self.open_until - now) if self.state is OPEN else 0.0

    def _observe(self, failed: bool) -> None:
        window = self._window
        if len(window) == window.maxlen:
            self._window_failures -= window[0]
        window.append(failed)
        self._window_failures += failed

    def _should_trip(self) -> bool:
        if self.consecutive_failures >= self.config.consecutive_failures:
            return True
        ratio = self.config.failure_ratio
        window = self._window
        return (ratio is not None and len(window) == window.maxlen
                and self._window_failures >= ratio * len(window))

    def _trip(self, now: float) -> None:
        self.trips += 1
        cfg = self.config
        cooldown_s = min(cfg.cooldown_s * cfg.cooldown_multiplier ** (self.trips - 1), cfg.max_cooldown_s)
        self.state = OPEN
        self.open_until = now + cooldown_s
        self.probing = False
        self._window.clear()
        self._window_failures = 0

    def _close(self) -> None:
        self.state = CLOSED
        self.trips = 0
        self.probing = False
        self._window.clear()
        self._window_failures = 0
