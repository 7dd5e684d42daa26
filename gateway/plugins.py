"""Provider discovery: the ``opengateway.providers`` entry-point group, read once.

Built-in providers are registered in the gateway's own ``setup.cfg`` through this same group,
so the third-party path is the only path. A plugin that fails to import, is not a Provider, or
was written for another contract version is recorded with the reason and skipped; it only
stops the gateway if the config uses it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging

import msgspec

from gateway.provider import API_VERSION, Provider

GROUP = "opengateway.providers"
log = logging.getLogger("opengateway.plugins")


class PluginInfo(msgspec.Struct, frozen=True):
    name: str
    distribution: str
    version: str
    module: str
    cls: type[Provider] | None = None
    error: str | None = None


def _describe(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.metadata["Name"], dist.version) if dist is not None else ("unknown", "unknown")


def _load(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    distribution, version = _describe(ep)
    info = PluginInfo(ep.name, distribution, version, ep.value)
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not take the others down
        return msgspec.structs.replace(info, error=f"import failed: {type(exc).__name__}: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        return msgspec.structs.replace(info, error="is not a subclass of gateway.provider.Provider")
    if cls.api_version != API_VERSION:
        return msgspec.structs.replace(
            info, error=f"written for plugin API version {cls.api_version}, this gateway speaks {API_VERSION}")
    if not (isinstance(getattr(cls, "Settings", None), type) and issubclass(cls.Settings, msgspec.Struct)):
        return msgspec.structs.replace(info, error="has no msgspec Struct 'Settings'")
    return msgspec.structs.replace(info, cls=cls)


@functools.cache
def discover() -> dict[str, PluginInfo]:
    """Every provider in the entry-point group, loaded or with the reason it did not load."""
    found: dict[str, PluginInfo] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        info = _load(ep)
        if info.name in found and found[info.name].cls is not None:
            log.warning("provider %r from %s ignored: %s already provides it",
                        info.name, info.distribution, found[info.name].distribution)
            continue
        if info.error:
            log.warning("provider plugin %r (%s %s) skipped: %s",
                        info.name, info.distribution, info.version, info.error)
        found[info.name] = info
    return found


def provider_class(name: str) -> type[Provider]:
    """The class for a plugin the config uses, or a LookupError that says how to fix it."""
    info = discover().get(name)
    if info is None:
        known = ", ".join(sorted(discover())) or "none"
        raise LookupError(f"no provider plugin named '{name}' is installed (installed: {known}); "
                          f"install the distribution that provides it, e.g. `pip install <its package>`")
    if info.cls is None:
        raise LookupError(f"provider plugin '{name}' from {info.distribution} {info.version} cannot be "
                          f"used: {info.error}; reinstall or upgrade {info.distribution}")
    return info.cls
