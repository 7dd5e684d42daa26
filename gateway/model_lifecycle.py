"""What a model's lifecycle means today: one clock, and the answers every caller shares.

Dates are data (gateway/data/models.yaml ``lifecycle``, or a plugin's ``Model.lifecycle``); this
module decides, for one day, whether a deployment is served, retiring soon or shut down. "Today"
comes from one injectable clock (``Today``): the UTC date, or ``OPENGATEWAY_TODAY`` to rehearse a
date ahead (or behind); tests hand in a fixed date. The request plan, the warnings of ``serve`` and
``check-config``, ``opengateway models`` and the shutdown gauge all ask the functions below.

A model the operator pins (``models.<id>.pinned``) is served past its shutdown: the gateway then
leaves the answer to the upstream.
"""

from __future__ import annotations

import functools
import os
import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Callable, Literal

import msgspec

from gateway.catalog import Lifecycle
from gateway.errors import quoted_or

if TYPE_CHECKING:
    from gateway.registry import ModelRoute, Registry, Target

Today = Callable[[], date]
TODAY_ENV = "OPENGATEWAY_TODAY"
#: ``serve`` and ``check-config`` warn about a configured model this many days before its shutdown.
WARN_DAYS = 30

Status = Literal["active", "deprecated", "shut_down"]


@functools.cache
def parse_day(text: str) -> date:
    """A ``YYYY-MM-DD`` date (ValueError otherwise)."""
    return date.fromisoformat(text.strip())


def default_today() -> date:
    """The process's "today": ``OPENGATEWAY_TODAY`` when set, else the UTC date (asked for by
    every request's plan: the date is made once a day, not once a request)."""
    fixed = os.environ.get(TODAY_ENV)
    return parse_day(fixed) if fixed else _utc_day(int(time.time() // 86_400))


@functools.lru_cache(maxsize=2)
def _utc_day(days_since_epoch: int) -> date:
    return _EPOCH + timedelta(days=days_since_epoch)


_EPOCH = date(1970, 1, 1)


def status_on(lifecycle: Lifecycle | None, today: date) -> Status:
    """``shut_down`` from the shutdown day on; ``deprecated`` once the shutdown was announced;
    otherwise ``active`` (a scheduled retirement without a notice, Azure's way, is still active)."""
    if lifecycle is None:
        return "active"
    if lifecycle.shutdown is not None and lifecycle.shutdown <= today:
        return "shut_down"
    if lifecycle.deprecated is not None and lifecycle.deprecated <= today:
        return "deprecated"
    return "active"


def is_shut(target: Target, today: date) -> bool:
    return status_on(target.lifecycle, today) == "shut_down"


class Retired(msgspec.Struct, frozen=True):
    """Why a route is no longer served: every deployment past its shutdown (the latest of the
    days), and the replacements its providers recommend."""

    shutdown: date
    successors: tuple[str, ...]


def retired(route: ModelRoute, today: date) -> Retired | None:
    """The route's retirement when every target is past its shutdown and the operator has not
    pinned the model; None while any target still serves it."""
    day = shutdown_day(route)
    if route.pinned or day is None or day > today:
        return None
    return Retired(day, _successors(route))


def shutdown_day(route: ModelRoute) -> date | None:
    """The day the route stops being served: its last target's shutdown, if every target has one."""
    days = [t.lifecycle.shutdown for t in route.targets if t.lifecycle is not None and t.lifecycle.shutdown is not None]
    return max(days) if days and len(days) == len(route.targets) else None


def _successors(route: ModelRoute) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for t in route.targets if t.lifecycle for s in t.lifecycle.successors))


def skip_reason(target: Target) -> str:
    """Why a plan skips a deployment its provider has shut down (in the attempt)."""
    lifecycle = target.lifecycle
    assert lifecycle is not None and lifecycle.shutdown is not None
    return f"{target.model} was shut down by {target.plugin} on {lifecycle.shutdown.isoformat()}"


class ShutdownNotice(msgspec.Struct, frozen=True):
    """A configured model's deployment past, or within ``WARN_DAYS`` of, its shutdown."""

    model: str
    target: str
    plugin: str
    shutdown: date
    days_left: int
    successors: tuple[str, ...]
    pinned: bool

    @property
    def past(self) -> bool:
        return self.days_left <= 0

    def __str__(self) -> str:
        instead = f"; the provider recommends {quoted_or(self.successors)}" if self.successors else ""
        if self.past:
            then = ("it is pinned (models.{m}.pinned), so it is still sent upstream" if self.pinned else
                    "requests for it are skipped on this target (404 model_not_found once no target serves it)")
            return (f"model {self.model} on {self.target} ({self.plugin}) was shut down on "
                    f"{self.shutdown.isoformat()}{instead}; {then.format(m=self.model)}")
        return (f"model {self.model} on {self.target} ({self.plugin}) shuts down on {self.shutdown.isoformat()}, "
                f"in {self.days_left} day{'s' if self.days_left != 1 else ''}{instead}")


def notices(registry: Registry, today: date, within_days: int = WARN_DAYS) -> list[ShutdownNotice]:
    """Every deployment of a configured model (the config's ``models:``) that is past, or within
    ``within_days`` of, its shutdown. Bundled defaults (no ``models:`` section) are not warned
    about: the operator chose none of them, and a shut-down one answers 404 naming its successor."""
    out: list[ShutdownNotice] = []
    horizon = today + timedelta(days=within_days)
    for model_id in registry.config.models:
        route = registry.models.get(model_id)
        if route is None:
            continue
        for target in route.targets:
            lifecycle = target.lifecycle
            if lifecycle is None or lifecycle.shutdown is None or lifecycle.shutdown > horizon:
                continue
            out.append(ShutdownNotice(model_id, target.instance, target.plugin, lifecycle.shutdown,
                                      (lifecycle.shutdown - today).days, lifecycle.successors, route.pinned))
    return out


def shutdown_timestamp_s(day: date) -> float:
    """A shutdown day as unix seconds (its first instant, UTC)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
