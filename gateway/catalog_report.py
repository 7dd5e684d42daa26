"""``opengateway models``: each model a configuration serves, with its capabilities, price and,
per deployment, its provider's lifecycle on a given day; ``--check`` fails on a model of the
config's ``models:`` past its shutdown and not pinned."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import date
from typing import Callable, TypeVar

import msgspec

from gateway.catalog import Capabilities, Price, openai_image_models
from gateway.config import Config, ConfigError
from gateway.config_load import config_from_env, load_config
from gateway.model_lifecycle import WARN_DAYS, ShutdownNotice, default_today, notices, parse_day, status_on
from gateway.registry import Registry, Target

T = TypeVar("T")


class TargetRow(msgspec.Struct):
    target: str
    plugin: str
    region: str
    #: ``active``, ``deprecated`` (a shutdown is announced) or ``shut_down``, on the day asked.
    status: str
    deprecated: str | None
    shutdown: str | None
    #: Days from the day asked to the shutdown (negative: past); None without a shutdown date.
    days_left: int | None
    successors: tuple[str, ...]
    source: str | None


class ModelRow(msgspec.Struct):
    id: str
    #: Named in the config's ``models:`` (else a bundled default of a provider).
    configured: bool
    pinned: bool
    capabilities: Capabilities
    price: Price | None
    price_source: str | None
    snapshots: tuple[str, ...]
    snapshot_of: str | None
    targets: list[TargetRow]


def offline_registry(config: Config, today: date, use: Callable[[Registry], T]) -> T:
    """``use`` applied to the model table ``serve`` would build for ``config`` (plugins and their
    settings included), on a client that never connects; ConfigError on a problem."""
    from gateway.http_client import HTTPClient
    from gateway.runtime import Resources, build_runtime
    from gateway.upstream_http import UpstreamHTTP  # the runtime imports much: only when asked

    async def build() -> T:
        runtime = build_runtime(config, Resources(UpstreamHTTP(HTTPClient()), today=lambda: today), log_notices=False)
        try:
            return use(runtime.registry)
        finally:
            await runtime.registry.close()
    return asyncio.run(build())


def command(path: str | None, *, as_json: bool, check: bool, day: str | None) -> int:
    """``opengateway models``: the listing (a table, or JSON), then with ``check`` the verdict
    on stderr; the exit code."""
    from gateway.cli import print_problems

    try:
        today = parse_day(day) if day else default_today()
    except ValueError:
        print(f"--today: expected YYYY-MM-DD, got {day!r}", file=sys.stderr)
        return 2
    try:
        # Without a file: what `serve` would serve from the environment (no key is generated or shown).
        config = load_config(path) if path else config_from_env(os.environ).config
        models, (failing, other) = offline_registry(config, today, lambda registry: (
            rows(registry, today), failures(registry, today)))
    except ConfigError as exc:
        print_problems(exc)
        return 2
    if as_json:
        print(msgspec.json.encode(models).decode())
    else:
        print(f"models served {f'by {path}' if path else 'without a config file'}, as of {today.isoformat()}:")
        print(table(models))
    if check:
        for notice in other:
            print(f"warning: {notice}", file=sys.stderr)
        for notice in failing:
            print(f"past shutdown: {notice}", file=sys.stderr)
        if failing:
            print(f"{len(failing)} deployment(s) of configured models past their shutdown", file=sys.stderr)
            return 1
    return 0


def rows(registry: Registry, today: date) -> list[ModelRow]:
    catalog = openai_image_models()
    out = []
    for route in registry.models.values():
        entry = catalog.get(route.id)
        out.append(ModelRow(route.id, route.id in registry.config.models, route.pinned, route.capabilities,
                            route.price, route.price_source, entry.snapshots if entry else (),
                            entry.snapshot_of if entry else None, [_target(t, today) for t in route.targets]))
    return out


def _target(target: Target, today: date) -> TargetRow:
    lc = target.lifecycle
    shutdown = lc.shutdown if lc else None
    return TargetRow(target.instance, target.plugin, target.region, status_on(lc, today),
                     lc.deprecated.isoformat() if lc and lc.deprecated else None,
                     shutdown.isoformat() if shutdown else None,
                     (shutdown - today).days if shutdown else None, lc.successors if lc else (),
                     lc.source if lc else None)


def failures(registry: Registry, today: date) -> tuple[list[ShutdownNotice], list[ShutdownNotice]]:
    """(what ``--check`` fails on: configured models past their shutdown and not pinned, the rest
    of the notices: near their shutdown, or pinned)."""
    found = notices(registry, today, WARN_DAYS)
    return [n for n in found if n.past and not n.pinned], [n for n in found if not (n.past and not n.pinned)]


def table(models: list[ModelRow]) -> str:
    """The plain-text listing: one line per deployment."""
    lines = [("MODEL", "TARGET", "STATUS", "SHUTDOWN", "SUCCESSORS", "PRICE (USD)", "SIZES", "QUALITIES")]
    for model in models:
        name = model.id + ("" if model.configured else " *")
        for row in model.targets:  # every route has a target (check_references)
            lines.append((name, f"{row.target} ({row.plugin})", _status(row, model.pinned), row.shutdown or "-",
                          ", ".join(row.successors), _price(model.price), _sizes(model.capabilities),
                          ", ".join(model.capabilities.qualities)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1] for line in lines)
    if any(not m.configured for m in models):
        text += "\n* a bundled default: the config's models: does not name it"
    return text


def _status(row: TargetRow, pinned: bool) -> str:
    if row.status == "shut_down":
        return "shut down (pinned)" if pinned else "shut down"
    if row.days_left is not None and row.days_left <= WARN_DAYS:
        return f"{row.status}, {row.days_left} days left"
    return row.status


def _price(price: Price | None) -> str:
    if price is None:
        return "unknown"
    if price.per_image is not None or price.per_megapixel is not None:
        parts = [f"{price.per_image:g}/image" if price.per_image is not None else "",
                 f"{price.per_megapixel:g}/MP" if price.per_megapixel is not None else ""]
        return " + ".join(p for p in parts if p)
    return f"{price.image_output:g}/1M image out" if price.image_output is not None else "per token"


def _sizes(caps: Capabilities) -> str:
    if caps.flexible_sizes is not None:
        rule = caps.flexible_sizes
        return f"auto, WxH (x{rule.multiple_of}, edge <= {rule.max_edge})"
    return ", ".join(caps.sizes)
