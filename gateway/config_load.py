"""Reading the configuration: a YAML file decoded into the Structs of gateway/config.py, loaded once.

Secrets stay out of the file through ``${ENV_VAR}`` references (``${VAR:-default}`` gives a
default). Problems are collected, not raised one at a time, each with its location
(``$.providers[1].plugin``, line 12), so ``opengateway check-config`` can report all of them.
With no file at all, ``config_from_env`` builds a working configuration from the environment.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any, Literal, Mapping

import msgspec
import yaml

from gateway.config import (Config, ConfigError, CorsConfig, KeyConfig, ModelConfig, Problem, ProviderInstance,
                            ServerConfig, TracingConfig, key_hash)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def is_model_id(model_id: str) -> bool:
    """``owner/model``, the form a model id takes in the config (and in a plugin's ``models()``)."""
    return _MODEL_ID.match(model_id) is not None


def _lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    """Map every JSON path of a YAML document to its 1-based line."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _lines(value, f"{path}.{key.value}", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _lines(value, f"{path}[{i}]", out)


def _expand(value: Any, env: Mapping[str, str], path: str, problems: list[Problem]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) in env:
                return env[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            problems.append(Problem(path, f"environment variable {m.group(1)} is not set"))
            return ""
        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]+)`$")


def validation_problem(exc: msgspec.ValidationError, path: str) -> Problem:
    """A msgspec error as a Problem at the full path of the offending value."""
    message, _, where = str(exc).partition(" - at `$")
    path += where.rstrip("`")
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown:
        path, message = f"{path}.{unknown.group(1)}", "unknown field"
    return Problem(path, message)


def _convert(value: Any, type_: Any, path: str, problems: list[Problem], unset: list[str] = []) -> Any:
    """``value`` as ``type_``, or None with its problem. A value refused because an unset variable
    left it empty is tried again without it (its default), so the rest is still checked."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        problem = validation_problem(exc, path)
        if unset and related(problem.path, unset):
            return _convert(_without(value, path, unset), type_, path, problems)
        problems.append(problem)
        return None


def _without(value: Any, path: str, drop: list[str]) -> Any:
    """``value`` without the mapping entries at the paths ``drop``."""
    if isinstance(value, dict):
        return {k: _without(v, f"{path}.{k}", drop) for k, v in value.items() if f"{path}.{k}" not in drop}
    if isinstance(value, list):
        return [_without(v, f"{path}[{i}]", drop) for i, v in enumerate(value)]
    return value


class Inspection(msgspec.Struct, frozen=True):
    """What ``inspect_config`` made of a file: every problem, and the config as far as it could
    be built (unset ``${VAR}`` read as empty), for checks that come after the file's own."""

    config: Config | None
    problems: list[Problem]
    #: Where an unset environment variable was referenced (its problem is among ``problems``).
    unset_paths: list[str]


def inspect_config(text: str, env: Mapping[str, str] | None = None) -> Inspection:
    """Every problem of a YAML config in one pass. An unset variable does not stop the checks:
    the rest of the file is still decoded and cross-checked, so one run reports everything."""
    env = os.environ if env is None else env
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return Inspection(None, [Problem("$", f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                         mark.line + 1 if mark else None)], [])
    lines: dict[str, int] = {}
    if node is not None:
        _lines(node, "$", lines)
    unset: list[Problem] = []
    raw = _expand(raw if raw is not None else {}, env, "$", unset)
    if not isinstance(raw, dict):
        return Inspection(None, [Problem("$", "the config must be a mapping", 1)], [])
    unset_paths = [p.path for p in unset]
    # Convert section by section (and item by item) so that one bad entry does not hide the next.
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    for name, field_type in _SECTIONS.items():
        if name not in raw:
            continue
        value = raw[name]
        if isinstance(value, list) and name in ("providers", "keys", "admin_keys"):
            item_type = field_type.__args__[0]
            sections[name] = [_convert(v, item_type, f"$.{name}[{i}]", problems, unset_paths)
                              for i, v in enumerate(value)]
        elif isinstance(value, dict) and name == "models":
            sections[name] = {k: _convert(v, ModelConfig, f"$.models.{k}", problems, unset_paths)
                              for k, v in value.items()}
        else:
            sections[name] = _convert(value, field_type, f"$.{name}", problems, unset_paths)
    config = None
    if not problems:  # every section decoded: cross-check them (an unknown section changes nothing here)
        config = msgspec.convert(sections, Config)
        problems.extend(check_references(config))
    for name in raw:
        if name not in _SECTIONS:
            problems.append(Problem(f"$.{name}", f"unknown section (expected one of: {', '.join(_SECTIONS)})"))
    # A value left empty by an unset variable is reported once, as unset, not again as invalid.
    problems = unset + [p for p in problems if not related(p.path, unset_paths)]
    return Inspection(config, [_locate(p, lines) for p in problems], unset_paths)


def related(path: str, others: list[str]) -> bool:
    """``path`` is one of ``others``, or an ancestor or descendant of one (``$.a`` and ``$.a.b``)."""
    return any(path == o or o.startswith((path + ".", path + "[")) or path.startswith((o + ".", o + "["))
               for o in others)


def parse_config(text: str, env: Mapping[str, str] | None = None, source: str = "config") -> Config:
    """Parse and check a YAML config; raise ConfigError listing every problem found."""
    inspection = inspect_config(text, env)
    if inspection.problems:
        raise ConfigError(inspection.problems, source)
    assert inspection.config is not None
    return inspection.config


_SECTIONS = {f.name: f.type for f in msgspec.structs.fields(Config)}


def with_lines(problems: list[Problem], text: str) -> list[Problem]:
    """Give problems found after parsing (plugin settings, say) the lines of their paths."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return problems
    if node is not None:
        _lines(node, "$", lines)
    return [p if p.line else _locate(p, lines) for p in problems]


def _locate(problem: Problem, lines: dict[str, int]) -> Problem:
    path = problem.path
    while path and path not in lines:
        path = path[: max(path.rfind("."), path.rfind("["))] if ("." in path[1:] or "[" in path) else ""
    return msgspec.structs.replace(problem, line=lines.get(path))


def check_references(config: Config) -> list[Problem]:
    """Cross-references inside the config (plugins themselves are checked when loaded)."""
    problems: list[Problem] = []
    ids = [p.id for p in config.providers]
    for i, pid in enumerate(ids):
        if pid in ids[:i]:
            problems.append(Problem(f"$.providers[{i}].id", f"duplicate provider id '{pid}'"))
    for model_id, model in config.models.items():
        path = f"$.models.{model_id}"
        if not is_model_id(model_id):
            problems.append(Problem(path, f"model ids are owner/model, e.g. openai/{model_id}"))
        if not model.targets:
            problems.append(Problem(f"{path}.targets", "at least one target is required"))
        for j, target in enumerate(model.targets):
            pid = target if isinstance(target, str) else target.provider
            if pid not in ids:
                problems.append(Problem(f"{path}.targets[{j}]", f"no provider with id '{pid}'"))
        for j, fallback in enumerate(model.fallbacks):
            if fallback not in config.models:
                problems.append(Problem(f"{path}.fallbacks[{j}]", f"no model '{fallback}' in models"))
    for alias, target in config.aliases.items():
        if config.models and target not in config.models:
            problems.append(Problem(f"$.aliases.{alias}", f"no model '{target}' in models"))
    problems.extend(_check_server(config.server))
    problems.extend(_check_cors(config.cors))
    problems.extend(_check_tracing(config.tracing))
    names = [k.name for k in config.keys]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(Problem(f"$.keys[{i}].name", f"duplicate key name '{name}'"))
    return problems


def _check_server(server: ServerConfig) -> list[Problem]:
    import ipaddress

    problems: list[Problem] = []
    for i, cidr in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(Problem(f"$.server.trusted_proxies[{i}]",
                                    f"'{cidr}' is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
    if server.admin_port is not None and server.admin_port != 0 and server.admin_port == server.port:
        problems.append(Problem("$.server.admin_port", "must differ from server.port"))
    return problems


def _check_cors(cors: CorsConfig) -> list[Problem]:
    from yarl import URL

    problems: list[Problem] = []
    for i, origin in enumerate(cors.allow_origins):
        path = f"$.cors.allow_origins[{i}]"
        if origin == "*":
            if cors.allow_credentials:
                problems.append(Problem(path, "'*' cannot go with allow_credentials: true (any page could make "
                                              "credentialed calls); list the origins"))
            continue
        if origin == "null":
            problems.append(Problem(path, "'null' is the origin of every sandboxed frame and local file: "
                                          "allowing it allows any of them"))
            continue
        try:
            url = URL(origin)
            normal = str(url.origin()) if url.absolute and url.host else None
        except ValueError:
            normal = None
        if normal is None:
            problems.append(Problem(path, f"'{origin}' is not an origin: expected scheme://host[:port], "
                                          "e.g. https://app.example.com"))
        elif normal != origin:
            problems.append(Problem(path, f"write it as browsers send it: '{normal}' (lower case, no path, "
                                          "no default port)"))
    return problems


#: The modules ``tracing.enabled`` needs, and where they come from.
OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
OTEL_INSTALL = "pip install 'opengateway[otel]'"


def _check_tracing(tracing: TracingConfig) -> list[Problem]:
    from yarl import URL

    if not tracing.enabled:
        return []
    problems: list[Problem] = []
    try:
        url = URL(tracing.endpoint)
        valid = url.scheme in ("http", "https") and bool(url.host)
    except ValueError:
        valid = False
    if not valid:
        problems.append(Problem("$.tracing.endpoint", f"'{tracing.endpoint}' is not an http(s) URL "
                                                      "(e.g. http://otel-collector:4318/v1/traces)"))
    missing = otel_missing_problem()
    if missing is not None:
        problems.append(missing)
    return problems


def otel_missing_problem() -> Problem | None:
    """``tracing.enabled`` without the OpenTelemetry packages (the first module of ``OTEL_MODULES``
    that cannot be imported), as a problem that says how to install them; None when installed."""
    from importlib.util import find_spec

    for missing in OTEL_MODULES:
        try:
            if find_spec(missing) is not None:
                continue
        except ImportError:  # a parent package is missing
            pass
        return Problem("$.tracing.enabled",
                       f"tracing needs the OpenTelemetry packages ({missing} is not installed): {OTEL_INSTALL}")
    return None


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([Problem("$", f"cannot read the file: {exc.strerror}")], path) from None
    return parse_config(text, env, source=path)


class EnvConfig(msgspec.Struct, frozen=True):
    """A config built from the environment, and what to tell the operator at start-up."""

    config: Config
    generated_key: str | None
    upstream: Literal["openai", "local"]


def config_from_env(env: Mapping[str, str] | None = None) -> EnvConfig:
    """No config file: one key from OPENGATEWAY_API_KEY (or a generated one), and ``openai/*``
    served by OpenAI when OPENAI_API_KEY is set, otherwise by the embedded local provider."""
    env = os.environ if env is None else env
    generated = None
    key = env.get("OPENGATEWAY_API_KEY")
    if not key:
        key = generated = "og-" + secrets.token_urlsafe(32)
    if env.get("OPENAI_API_KEY"):
        settings: dict[str, Any] = {"api_key": env["OPENAI_API_KEY"]}
        if env.get("OPENAI_BASE_URL"):
            settings["base_url"] = env["OPENAI_BASE_URL"]
        for name, setting in (("OPENAI_ORG_ID", "organization"), ("OPENAI_PROJECT_ID", "project")):
            if env.get(name):
                settings[setting] = env[name]
        provider = ProviderInstance(id="openai", plugin="openai", region="global", settings=settings)
        upstream: Literal["openai", "local"] = "openai"
    else:
        provider = ProviderInstance(id="local", plugin="local", region="local")
        upstream = "local"
    # No ``models:`` section: every model the provider declares (the bundled catalogue) is routed
    # to it, and one that is past its shutdown answers 404 naming its successor.
    config = Config(providers=[provider], keys=[KeyConfig(name="default", hash=key_hash(key))])
    return EnvConfig(config, generated, upstream)
