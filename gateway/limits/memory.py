"""Limit counters in this process: exact for one process, atomic because nothing here awaits."""

from __future__ import annotations

import time
from typing import Callable

from gateway.limits.policy import WINDOW_S, Decision, Plan


class _Window:
    __slots__ = ("used", "ends_at")

    def __init__(self, ends_at: float) -> None:
        self.used = 0
        self.ends_at = ends_at


class MemoryBackend:
    """Sized by the configured keys (a few entries per key name), so nothing needs evicting."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._slots: dict[str, set[str]] = {}
        #: (key, period) -> micro-USD spent or reserved; a period is a day (20261202) or a month (202612).
        self._spend: dict[tuple[str, str], int] = {}

    def _window(self, key: str, kind: str, now: float) -> _Window:
        window = self._windows.get((key, kind))
        if window is None or window.ends_at <= now:
            window = self._windows[(key, kind)] = _Window(now + WINDOW_S)
        return window

    def _spent(self, key: str, period: str) -> int:
        return self._spend.get((key, period), 0)

    def _add(self, key: str, period: str, micro_usd: int) -> None:
        # Never below 0: a settle after its period was pruned must not start the next one in debt.
        self._spend[(key, period)] = max(0, self._spent(key, period) + micro_usd)

    def _prune(self, plan: Plan) -> None:
        """Keep this key's current day and month only (a late settle for an earlier period may add
        one back; the next acquire drops it)."""
        stale = [k for k in self._spend if k[0] == plan.key and k[1] not in (plan.day, plan.month)]
        for k in stale:
            del self._spend[k]

    async def acquire(self, plan: Plan, token: str) -> Decision:
        now = self.clock()
        requests = self._window(plan.key, "requests", now)
        images = self._window(plan.key, "images", now)
        slots = self._slots.setdefault(plan.key, set())
        decision = Decision(
            requests_used=requests.used, requests_reset_s=requests.ends_at - now,
            images_used=images.used, images_reset_s=images.ends_at - now, concurrent_used=len(slots),
            spend_day_micro=self._spent(plan.key, plan.day),
            spend_month_micro=self._spent(plan.key, plan.month))
        if plan.requests_per_minute is not None and requests.used + 1 > plan.requests_per_minute:
            decision.denied = "requests_per_minute"
        elif plan.images_per_minute is not None and images.used + plan.images > plan.images_per_minute:
            decision.denied = "images_per_minute"
        elif plan.concurrent_requests is not None and len(slots) + 1 > plan.concurrent_requests:
            decision.denied = "concurrent_requests"
        elif plan.spend_day_micro is not None and decision.spend_day_micro >= plan.spend_day_micro:
            decision.denied = "spend_usd_per_day"
        elif plan.spend_month_micro is not None and decision.spend_month_micro >= plan.spend_month_micro:
            decision.denied = "spend_usd_per_month"
        if decision.denied is not None:
            return decision
        requests.used += 1
        images.used += plan.images
        decision.requests_used, decision.images_used = requests.used, images.used
        if plan.concurrent_requests is not None:
            slots.add(token)
            decision.concurrent_used, decision.holds_slot = len(slots), True
        if plan.reserve_micro:
            self._prune(plan)
            self._add(plan.key, plan.day, plan.reserve_micro)
            self._add(plan.key, plan.month, plan.reserve_micro)
        return decision

    async def release(self, key: str, token: str) -> None:
        self._slots.get(key, set()).discard(token)

    async def charge(self, plan: Plan, micro_usd: int) -> None:
        for period in (plan.day, plan.month):
            self._add(plan.key, period, micro_usd)

    async def close(self) -> None:
        pass
