"""The model table: configured provider instances and the ``owner/model`` ids they serve.

Built once per configuration (start-up and reload) from the config and the plugins'
``models()``. Resolving a client's model id (aliases, bare ids, unknown ids) happens here, in
``Registry.resolve`` and nowhere else. Each deployment carries its provider's lifecycle of the
model (the plugin's own, else the bundled catalogue's for the plugin's name).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.catalog import Capabilities, Lifecycle, Price, openai_image_models
from gateway.config import Config, ConfigError, KeyConfig, Problem
from gateway.config_load import validation_problem
from gateway.errors import InvalidRequest, model_does_not_exist, quoted_or
from gateway.keyring import may_use
from gateway.plugins import provider_class
from gateway.provider import Provider
from gateway.redact import secrets_of
from gateway.tokens import TokenRule
from gateway.upstream_http import UpstreamHTTP


class Target(msgspec.Struct, frozen=True):
    """One deployment of a model: a provider instance that serves it."""

    id: str  # "<provider instance id>:<model id>"
    instance: str
    plugin: str
    region: str
    model: str
    provider: Provider
    weight: float | None = None
    #: What this deployment accepts when it differs from the model's (an Azure deployment next to
    #: OpenAI has no webp); None when the model's capabilities hold. The router skips a target
    #: that cannot take the request instead of letting its upstream refuse it.
    capabilities: Capabilities | None = None
    #: When this provider retires the model (gateway/model_lifecycle.py); None: not known.
    lifecycle: Lifecycle | None = None


class ModelRoute(msgspec.Struct, frozen=True):
    id: str
    capabilities: Capabilities
    targets: tuple[Target, ...]
    fallbacks: tuple[str, ...] = ()
    price: Price | None = None
    #: Where ``price`` came from: ``config`` (the operator's), ``bundled`` (models.yaml), ``plugin``
    #: (the price the provider plugin declares in ``models()``), or None.
    price_source: str | None = None
    #: Two or more targets carry weights: their order is drawn per request (gateway/router.py).
    weighted: bool = False
    #: Output tokens per image (gateway/tokens.py), for estimates before a call; None: unknown.
    tokens: TokenRule | None = None
    #: The operator serves the model past its shutdown (``models.<id>.pinned``).
    pinned: bool = False


class Registry:
    def __init__(self, config: Config, providers: dict[str, Provider], models: dict[str, ModelRoute]) -> None:
        self.config = config
        self.providers = providers
        self.models = models
        self.aliases = config.aliases

    @classmethod
    def build(cls, config: Config, http: UpstreamHTTP) -> "Registry":
        """Instantiate every provider instance and the model table; ConfigError on any problem."""
        problems: list[Problem] = []
        providers: dict[str, Provider] = {}
        regions: dict[str, tuple[str, str]] = {}
        for i, inst in enumerate(config.providers):
            path = f"$.providers[{i}]"
            try:
                plugin = provider_class(inst.plugin)
            except LookupError as exc:
                problems.append(Problem(f"{path}.plugin", str(exc)))
                continue
            try:
                settings = msgspec.convert(inst.settings, plugin.Settings)
            except msgspec.ValidationError as exc:
                problems.append(validation_problem(exc, f"{path}.settings"))
                continue
            try:
                providers[inst.id] = plugin(settings, http)
            except Exception as exc:
                problems.append(Problem(path, f"plugin '{inst.plugin}' refused its settings: {exc}"))
                continue
            regions[inst.id] = (inst.plugin, inst.region)
        if problems:
            raise ConfigError(problems)
        declared_models = {iid: list(p.models()) for iid, p in providers.items()}
        declared = {iid: {m.id: m.capabilities for m in models} for iid, models in declared_models.items()}
        declared_prices = {iid: {m.id: m.price for m in models} for iid, models in declared_models.items()}
        declared_lifecycles = {iid: {m.id: m.lifecycle for m in models} for iid, models in declared_models.items()}
        table = config.models or _default_table(declared)
        catalog = openai_image_models()
        models: dict[str, ModelRoute] = {}
        for model_id, mc in table.items():
            own: list[tuple[str, float | None, Capabilities | None]] = []
            for j, raw in enumerate(mc.targets):
                iid, weight = (raw, None) if isinstance(raw, str) else (raw.provider, raw.weight)
                served = declared[iid].get(model_id)
                if served is None and mc.capabilities is None:
                    problems.append(Problem(
                        f"$.models.{model_id}.targets[{j}]",
                        f"provider instance '{iid}' ({regions[iid][0]}) does not serve '{model_id}' (it serves: "
                        f"{', '.join(declared[iid]) or 'nothing'}); configure it in the instance's settings, "
                        "or give the model `capabilities` to vouch for it"))
                own.append((iid, weight, served))
            # The operator's capabilities hold for every target; otherwise the first target's.
            caps = mc.capabilities or next((c for _, _, c in own if c is not None), None) or (
                catalog[model_id].capabilities if model_id in catalog else Capabilities())
            targets = []
            for iid, weight, served in own:
                differs = mc.capabilities is None and served is not None and served != caps
                plugin_name, region = regions[iid]
                own_caps = _with_extra_fields(served, mc.extra_fields) if differs and served is not None else None
                lifecycle = declared_lifecycles[iid].get(model_id) or (
                    catalog[model_id].lifecycle.get(plugin_name) if model_id in catalog else None)
                targets.append(Target(f"{iid}:{model_id}", iid, plugin_name, region, model_id, providers[iid],
                                      weight, own_caps, lifecycle))
            caps = _with_extra_fields(caps, mc.extra_fields)
            bundled = catalog[model_id].price if model_id in catalog else None
            # The operator's price, the bundled one, or the one the first target's plugin declares.
            declared_price = next((p for iid, _, _ in own if (p := declared_prices[iid].get(model_id))), None)
            price = mc.price or bundled or declared_price
            source = None if price is None else "config" if mc.price is not None else \
                "bundled" if bundled is not None else "plugin"
            weighted = sum(t.weight is not None for t in targets) > 1
            tokens = catalog[model_id].tokens if model_id in catalog else None
            models[model_id] = ModelRoute(model_id, caps, tuple(targets), tuple(mc.fallbacks), price, source, weighted,
                                          tokens, mc.pinned)
        if problems:
            raise ConfigError(problems)
        return cls(config, providers, models)

    def resolve(self, model: str) -> ModelRoute:
        """The route for a client's model id, or the error OpenAI-minded clients expect: the id
        itself, an alias, or a bare id (``gpt-image-2``, as LiteLLM sends ``openai/gpt-image-2``)
        that names exactly one configured ``owner/gpt-image-2`` (``bare_model_ids: resolve``)."""
        route = self.models.get(model)
        if route is not None:
            return route
        alias = self.aliases.get(model)
        if alias is not None and alias in self.models:
            return self.models[alias]
        if model and "/" not in model:
            owned = [m for m in self.models if m.partition("/")[2] == model]
            if len(owned) == 1 and self.config.bare_model_ids == "resolve":
                return self.models[owned[0]]
            if len(owned) > 1 and self.config.bare_model_ids == "resolve":
                raise InvalidRequest(
                    f"The model '{model}' is ambiguous: it may be {quoted_or(owned)}. Send the full owner/model id.",
                    param="model", code="invalid_value")
            if owned:
                raise InvalidRequest(
                    f"Invalid model id '{model}': model ids take the form owner/model. Use {quoted_or(owned)} instead.",
                    param="model", code="invalid_value")
        raise model_does_not_exist(model)

    def secrets(self) -> list[str]:
        """Every configured provider credential (for the redactor)."""
        return [secret for inst in self.config.providers for secret in secrets_of(inst.settings)]

    def visible_models(self, key: KeyConfig) -> list[str]:
        return [m for m in self.models if may_use(key, m)]

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


def _with_extra_fields(caps: Capabilities, extra_fields: list[str]) -> Capabilities:
    if not extra_fields:
        return caps
    return msgspec.structs.replace(caps, extra_fields=tuple(dict.fromkeys([*caps.extra_fields, *extra_fields])))


def _default_table(declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Without a ``models:`` section each declared model goes to the first instance serving it."""
    from gateway.config import ModelConfig

    table: dict[str, ModelConfig] = {}
    for iid, models in declared.items():
        for model_id in models:
            table.setdefault(model_id, ModelConfig(targets=[iid]))
    return table
