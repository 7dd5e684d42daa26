"""The documentation site (docs/, built by MkDocs) is the user's manual: every config key, CLI
command and option, metric, error code and provider setting the code has is documented there, in
a table row of the page that owns it, and the README stays a short front page that points to it.

Each check reads the code (the Config Structs, the argparse parser, the prometheus-client
collectors, the ``code`` literals of gateway/ and plugins/), so adding one of those without a
documentation row fails here. ``mkdocs build --strict`` (run by .ci/run) checks links and anchors.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
from pathlib import Path

import msgspec.inspect as mi
import prometheus_client
import yaml

from gateway import metrics
from gateway.cli import build_parser
from gateway.config import Config
from gateway.plugins import discover

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_HEADING = re.compile(r"^(#{1,6}) (.+)$", re.M)


def page(name: str) -> str:
    """A docs page without its code blocks (a key in an example is not its documentation)."""
    return _FENCE.sub("", (DOCS / name).read_text())


def section(text: str, code: str) -> str:
    """The text under the first heading that names ``code`` in backticks, up to the next heading."""
    headings = list(_HEADING.finditer(text))
    for i, heading in enumerate(headings):
        if f"`{code}`" in heading.group(2):
            end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
            return text[heading.end():end]
    raise AssertionError(f"no heading names `{code}`")


def first_cells(text: str) -> list[str]:
    """The first cell of every table row (header and separator rows included: harmless)."""
    return [line.split("|")[1] for line in text.splitlines() if line.startswith("|") and line.count("|") >= 3]


def documented(cells: list[str], name: str) -> bool:
    return any(f"`{name}`" in cell or f"`{name} " in cell for cell in cells)


# -- configuration ------------------------------------------------------------------------------

def _structs(t: mi.Type, path: str, out: dict[str, mi.StructType], seen: set[type]) -> None:
    """Every Struct of the config with the path a reader looks it up by (``models.<id>.price``)."""
    if isinstance(t, mi.Metadata):
        _structs(t.type, path, out, seen)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            _structs(member, path, out, seen)
    elif isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        _structs(t.item_type, path + "[]", out, seen)
    elif isinstance(t, mi.TupleType):
        for item in t.item_types:
            _structs(item, path + "[]", out, seen)
    elif isinstance(t, mi.DictType):
        _structs(t.value_type, path + ".<id>", out, seen)
    elif isinstance(t, mi.StructType) and t.cls not in seen:
        seen.add(t.cls)
        out[path] = t
        for field in t.fields:
            _structs(field.type, f"{path}.{field.encode_name}".lstrip("."), out, seen)


def config_structs() -> dict[str, mi.StructType]:
    out: dict[str, mi.StructType] = {}
    _structs(mi.type_info(Config), "", out, set())
    return out


def test_every_config_key_is_in_the_configuration_reference() -> None:
    reference = page("configuration.md")
    structs = config_structs()
    assert {"server", "providers[]", "models.<id>", "models.<id>.capabilities.flexible_sizes", "keys[]",
            "keys[].limits", "router.breaker", "cors"} <= set(structs)
    # The top level: one row per section in the table of sections.
    sections = next(t for t in reference.split("\n\n") if t.startswith("| section |"))
    missing = [f.encode_name for f in structs[""].fields if not documented(first_cells(sections), f.encode_name)]
    # Every other Struct: a heading naming its path, and a row per key in its table.
    for path, struct in structs.items():
        if path:
            cells = first_cells(section(reference, path))
            missing += [f"{path}.{f.encode_name}" for f in struct.fields if not documented(cells, f.encode_name)]
    assert not missing, f"config keys without a row in docs/configuration.md: {missing}"


# -- the command line ---------------------------------------------------------------------------

def commands(parser: argparse.ArgumentParser, prefix: str = "opengateway"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    """(``opengateway keys create``, its parser) for the top level and every runnable command."""
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = [(prefix, parser)] if prefix == "opengateway" else []
            for name, sub in action.choices.items():
                found += commands(sub, f"{prefix} {name}")
    return found


def test_every_cli_command_and_option_is_documented() -> None:
    cli = page("cli.md")
    found = commands(build_parser())
    assert {name for name, _ in found} >= {"opengateway", "opengateway serve", "opengateway check-config",
                                           "opengateway models", "opengateway plugins", "opengateway keys create"}
    missing = []
    for name, parser in found:
        cells = first_cells(section(cli, name))
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                       argparse._SubParsersAction)):
                continue
            shown = max(action.option_strings, key=len) if action.option_strings else (
                action.metavar or action.dest.upper())
            if not documented(cells, str(shown)):
                missing.append(f"{name} {shown}")
    assert not missing, f"command-line options without a row in docs/cli.md: {missing}"


# -- metrics ------------------------------------------------------------------------------------

def exposed_metrics() -> set[str]:
    """Each collector of gateway/metrics.py by the name /metrics shows (counters with ``_total``)."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            for family in value.describe():
                names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    exposed = exposed_metrics()
    assert {"opengateway_requests_total", "opengateway_request_duration_seconds",
            "opengateway_breaker_state"} <= exposed
    cells = first_cells(page("observability/metrics.md"))
    missing = sorted(name for name in exposed if not documented(cells, name))
    assert not missing, f"metrics without a row in docs/observability/metrics.md: {missing}"
    listed = {m for cell in cells for m in re.findall(r"`(opengateway_\w+)`", cell)}
    assert listed - exposed == set(), "docs/observability/metrics.md lists metrics the gateway does not export"


# -- error codes --------------------------------------------------------------------------------

def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Attribute):
        return [target.attr]
    if isinstance(target, ast.Tuple):
        return [name for element in target.elts for name in _names(element)]
    return []


def error_codes() -> dict[str, set[str]]:
    """Every error code in gateway/ and plugins/, with the files it is in: the literals of a
    ``code=`` argument (both branches of a conditional included, ``exc.code or "stream_failed"``),
    of a ``code = ...`` / ``error_code = ...`` assignment (class attributes, the table Azure's
    statuses map through) and of ``code`` in a tuple of values assigned to a tuple; and the codes
    the local provider's simulated failures pass on (a table unpacked at run time)."""
    found: dict[str, set[str]] = {}
    for root in ("gateway", "plugins"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                values: set[str] = set()
                if isinstance(node, ast.keyword) and node.arg == "code":
                    values = _strings(node.value)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Tuple):  # only where each value is written out
                            if isinstance(node.value, ast.Tuple):
                                for element, value in zip(target.elts, node.value.elts):
                                    if set(_names(element)) & {"code", "error_code"}:
                                        values |= _strings(value)
                        elif set(_names(target)) & {"code", "error_code"}:
                            values |= _strings(node.value)
                for value in values:
                    found.setdefault(value, set()).add(str(path.relative_to(ROOT)))
    local = importlib.import_module("plugins.local")
    for _type, code, _message in local.FAILURES.values():
        if code is not None:
            found.setdefault(code, set()).add("plugins/local.py")
    return found


def test_every_error_code_is_in_the_error_table() -> None:
    codes = error_codes()
    # The collector sees each kind: a class attribute, a keyword, a conditional, a status table.
    assert {"invalid_api_key", "model_not_allowed", "stream_failed", "insufficient_quota",
            "deployment_not_found", "moderation_blocked"} <= set(codes)
    cells = first_cells(page("api/errors.md"))
    missing = sorted(code for code in codes if not documented(cells, code))
    assert not missing, f"error codes without a row in docs/api/errors.md: {missing}"
    listed = {code for cell in cells for code in re.findall(r"`([a-z_]+)`", cell)}
    assert listed - set(codes) == set(), "docs/api/errors.md lists codes the gateway never answers with"


# -- providers ----------------------------------------------------------------------------------

def test_every_built_in_provider_has_a_page_with_every_setting() -> None:
    built_in = {name: info for name, info in discover().items() if info.distribution == "opengateway"}
    assert {"openai", "azure_openai", "local", "google", "stability", "bfl", "fal"} <= set(built_in)
    table = page("providers/index.md")
    for name, info in built_in.items():
        assert f"[`{name}`]({name}.md)" in table, name
        module, cls = info.module.split(":")
        settings = getattr(importlib.import_module(module), cls).Settings
        text = (DOCS / "providers" / f"{name}.md").read_text()  # the example config is the reference
        missing = [field for field in settings.__struct_fields__ if f"{field}:" not in text]
        assert not missing, f"docs/providers/{name}.md does not show the settings {missing}"


# -- the site and the README --------------------------------------------------------------------

def nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [str(value)]
    return pages


def test_every_page_is_in_the_nav_once() -> None:
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    files = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == files


def quick_start(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def test_the_readme_is_a_short_front_page_whose_quick_start_is_the_sites() -> None:
    assert len(README.splitlines()) < 200
    readme = README.split("<!-- section: quick-start -->", 1)[1].split("<!-- /section: quick-start -->", 1)[0]
    assert quick_start(readme) == quick_start((DOCS / "getting-started.md").read_text())
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    relative = [link for link in links if "://" not in link]
    assert len(relative) >= 15 and all((ROOT / link).is_file() for link in relative), relative
    linked = {str((ROOT / link).resolve().relative_to(DOCS)) for link in relative if link.startswith("docs/")}
    assert linked == set(nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
