"""What a request asks of its key's limits (a Plan), what the backend answered (a Decision),
and how that reads to an OpenAI client: ``x-ratelimit-*`` headers and a 429.

Per-minute limits use a window that opens with the first request counted and lasts 60 s: exact
within the window (limit 20 lets exactly 20 through), at most twice the limit across a window's
edge. Spend is checked before a request (spent < limit, reservations of requests in flight
included); the request's worst case (gateway/cost.py ``worst_case_usd``) is reserved with the same
atomic step, and settled to its actual cost after its response (``charge`` with the difference).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec

from gateway.config import KeyLimits
from gateway.errors import RateLimited

WINDOW_S = 60.0
MICRO_USD = 1_000_000  # spend is counted in integer micro-dollars: exact sums, atomic INCRBY

_NAMES = {
    "requests_per_minute": "requests per minute",
    "images_per_minute": "images per minute",
    "concurrent_requests": "concurrent requests",
    "spend_usd_per_day": "spend (USD) per day",
    "spend_usd_per_month": "spend (USD) per month",
}


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One request's claim on its key's limits; a limit of None is not checked."""

    key: str
    requests_per_minute: int | None = None
    images_per_minute: int | None = None
    images: int = 1
    concurrent_requests: int | None = None
    #: How long a concurrency slot lives if its replica dies before releasing it.
    slot_lease_s: float = 360.0
    spend_day_micro: int | None = None
    spend_month_micro: int | None = None
    #: Added to the day and month spend when the request is let through (its worst case).
    reserve_micro: int = 0
    day: str = ""    # UTC period ids naming the spend counters: 20260131, 202601
    month: str = ""
    day_reset_s: float = 0.0
    month_reset_s: float = 0.0


class Decision(msgspec.Struct, kw_only=True):
    """The counters as the backend saw them, after counting this request if it was let through."""

    denied: str | None = None  # the name of the limit that refused the request
    requests_used: int = 0
    requests_reset_s: float = WINDOW_S
    images_used: int = 0
    images_reset_s: float = WINDOW_S
    concurrent_used: int = 0
    spend_day_micro: int = 0
    spend_month_micro: int = 0
    #: True when this request holds a concurrency slot to release.
    holds_slot: bool = False


def make_plan(key: str, limits: KeyLimits, images: int, slot_lease_s: float,
              now: datetime | None = None, reserve_usd: float | None = None) -> Plan:
    now = now or datetime.now(UTC)
    day_end = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    month_end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return Plan(
        key=key, requests_per_minute=limits.requests_per_minute, images_per_minute=limits.images_per_minute,
        images=images, concurrent_requests=limits.concurrent_requests, slot_lease_s=slot_lease_s,
        spend_day_micro=_micro(limits.spend_usd_per_day), spend_month_micro=_micro(limits.spend_usd_per_month),
        reserve_micro=round(reserve_usd * MICRO_USD) if limits.spends and reserve_usd else 0,
        day=now.strftime("%Y%m%d"), month=now.strftime("%Y%m"),
        day_reset_s=(day_end - now).total_seconds(), month_reset_s=(month_end - now).total_seconds())


def _micro(usd: float | None) -> int | None:
    return None if usd is None else max(1, round(usd * MICRO_USD))


def reset_text(seconds: float) -> str:
    """OpenAI's duration format for ``x-ratelimit-reset-*``: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(int(math.ceil(seconds)), 60)
    return f"{minutes}m{rest}s"


def headers(plan: Plan, decision: Decision) -> dict[str, str]:
    out: dict[str, str] = {}
    if plan.requests_per_minute is not None:
        out["x-ratelimit-limit-requests"] = str(plan.requests_per_minute)
        out["x-ratelimit-remaining-requests"] = str(max(0, plan.requests_per_minute - decision.requests_used))
        out["x-ratelimit-reset-requests"] = reset_text(decision.requests_reset_s)
    if plan.images_per_minute is not None:
        out["x-ratelimit-limit-images"] = str(plan.images_per_minute)
        out["x-ratelimit-remaining-images"] = str(max(0, plan.images_per_minute - decision.images_used))
        out["x-ratelimit-reset-images"] = reset_text(decision.images_reset_s)
    return out


def retry_after_s(plan: Plan, decision: Decision) -> float:
    return {
        "requests_per_minute": decision.requests_reset_s,
        "images_per_minute": decision.images_reset_s,
        "spend_usd_per_day": plan.day_reset_s,
        "spend_usd_per_month": plan.month_reset_s,
    }.get(decision.denied or "", 1.0)  # a concurrency slot frees when any request finishes


def rate_limited(plan: Plan, decision: Decision) -> RateLimited:
    """The 429 for a refused request, worded like OpenAI's and naming the limit."""
    denied = decision.denied or ""
    limit: float | None
    used: float | None
    asked: str | None
    if denied == "requests_per_minute":
        limit, used, asked = plan.requests_per_minute, decision.requests_used, "1"
    elif denied == "images_per_minute":
        limit, used, asked = plan.images_per_minute, decision.images_used, str(plan.images)
    elif denied == "concurrent_requests":
        limit, used, asked = plan.concurrent_requests, decision.concurrent_used, "1"
    elif denied == "spend_usd_per_day":
        limit, used, asked = _usd(plan.spend_day_micro), _usd(decision.spend_day_micro), None
    else:
        limit, used, asked = _usd(plan.spend_month_micro), _usd(decision.spend_month_micro), None
    wait_s = retry_after_s(plan, decision)
    out = headers(plan, decision)
    out["retry-after"] = str(max(1, math.ceil(wait_s)))
    if denied.startswith("spend_"):
        out["x-should-retry"] = "false"  # hours away: an SDK's automatic retry would only fail again
    return RateLimited(
        f"Rate limit reached for {_NAMES.get(denied, denied)} on the API key '{plan.key}': "
        f"Limit {limit}, Used {used}" + (f", Requested {asked}" if asked else "")
        + f". Please try again in {reset_text(wait_s)}.",
        headers=out)


def _usd(micro: int | None) -> float | None:
    return None if micro is None else round(micro / MICRO_USD, 6)
