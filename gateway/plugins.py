"""Provider discovery: the ``opengateway.providers`` entry-point group, read once.

Built-in providers are registered in the gateway's own ``setup.cfg`` through this same group,
so the third-party path is the only path. A plugin that fails to import, is not a Provider, or
was written for another contract version is recorded with the reason and skipped; it only
stops the gateway if the config uses it.

``discover`` imports every plugin and logs those that cannot be used: ``opengateway plugins``
and ``serve`` (once, before any worker starts) call it. ``provider_class`` imports only the
plugin asked for, so a worker holds the plugins its configuration uses and no others (each
unused one would cost it a few hundred KB).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging

import msgspec

from gateway.provider import API_VERSION, Provider

GROUP = "opengateway.providers"
log = logging.getLogger("opengateway.plugins")


class PluginInfo(msgspec.Struct, frozen=True):
    """One entry point of the group: where it came from, and its class or why it has none."""

    name: str
    distribution: str
    version: str
    module: str
    cls: type[Provider] | None = None
    error: str | None = None
    #: What the operator can do about ``error``.
    fix: str | None = None
    #: The contract version the plugin declares (None when it could not be imported).
    api_version: int | None = None

    @property
    def ok(self) -> bool:
        return self.cls is not None


def _describe(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.metadata["Name"], dist.version) if dist is not None else ("unknown", "unknown")


def _load(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    distribution, version = _describe(ep)
    info = PluginInfo(ep.name, distribution, version, ep.value)
    reinstall = f"reinstall or upgrade it (`pip install --upgrade {distribution}`), or uninstall it"
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not take the others down
        return msgspec.structs.replace(info, error=f"import failed: {type(exc).__name__}: {exc}", fix=reinstall)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        return msgspec.structs.replace(info, error=f"{ep.value} is not a subclass of gateway.provider.Provider",
                                       fix=reinstall)
    declared = getattr(cls, "api_version", None)
    info = msgspec.structs.replace(info, api_version=declared if isinstance(declared, int) else None)
    if declared != API_VERSION:
        return msgspec.structs.replace(
            info, error=f"written for plugin API version {declared}, this gateway speaks {API_VERSION}",
            fix=f"install a release of {distribution} built for plugin API version {API_VERSION}")
    if not (isinstance(getattr(cls, "Settings", None), type) and issubclass(cls.Settings, msgspec.Struct)):
        return msgspec.structs.replace(info, error="has no msgspec Struct 'Settings'", fix=reinstall)
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        return msgspec.structs.replace(info, error=f"does not implement {missing}", fix=reinstall)
    return msgspec.structs.replace(info, cls=cls)


@functools.cache
def discover() -> dict[str, PluginInfo]:
    """Every provider in the entry-point group, loaded or with the reason it did not load.

    Read once per process: installing or removing a plugin takes effect at the next start.
    """
    found: dict[str, PluginInfo] = {}
    for ep in _entry_points():
        info = _load(ep)
        if info.name in found and found[info.name].ok:
            log.warning("provider %r from %s ignored: %s already provides it",
                        info.name, info.distribution, found[info.name].distribution)
            continue
        if info.error:
            log.warning("provider plugin %r (%s %s, %s) skipped: %s; %s",
                        info.name, info.distribution, info.version, info.module, info.error, info.fix)
        found[info.name] = info
    return found


@functools.cache
def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    return tuple(importlib.metadata.entry_points(group=GROUP))


@functools.cache
def _named(name: str) -> PluginInfo | None:
    """The plugin ``name``, importing only its entry points: the first that loads wins, as in
    ``discover``; None when no entry point has that name."""
    info = None
    for ep in _entry_points():
        if ep.name == name:
            info = _load(ep)
            if info.ok:
                break
    return info


def provider_class(name: str) -> type[Provider]:
    """The class for a plugin the config uses, or a LookupError that says how to fix it."""
    info = _named(name)
    if info is None:
        known = ", ".join(sorted({ep.name for ep in _entry_points()})) or "none"
        raise LookupError(f"no provider plugin named '{name}' is installed (installed: {known}); "
                          f"install the distribution that provides it, e.g. `pip install <its package>`, "
                          f"and check `opengateway plugins`")
    if info.cls is None:
        raise LookupError(f"provider plugin '{name}' from the distribution {info.distribution} "
                          f"{info.version} cannot be used: {info.error}; {info.fix}")
    return info.cls
