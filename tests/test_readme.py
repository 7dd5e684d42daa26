"""The README is the user's manual: it must name every config key, CLI command and metric."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec.inspect as mi

from gateway.cli import build_parser
from gateway.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _struct_fields(t: mi.Type, seen: set[type], out: dict[str, str]) -> None:
    if isinstance(t, mi.Metadata):
        _struct_fields(t.type, seen, out)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            _struct_fields(member, seen, out)
    elif isinstance(t, (mi.ListType, mi.TupleType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        for item in getattr(t, "item_types", None) or (t.item_type,):  # type: ignore[attr-defined]
            _struct_fields(item, seen, out)
    elif isinstance(t, mi.DictType):
        _struct_fields(t.value_type, seen, out)
    elif isinstance(t, mi.StructType) and t.cls not in seen:
        seen.add(t.cls)
        for field in t.fields:
            out.setdefault(field.encode_name, t.cls.__name__)
            _struct_fields(field.type, seen, out)


def test_every_config_key_is_documented() -> None:
    fields: dict[str, str] = {}
    _struct_fields(mi.type_info(Config), set(), fields)
    missing = sorted(f"{owner}.{name}" for name, owner in fields.items() if f"`{name}`" not in README)
    assert not missing, f"config keys missing from README.md: {missing}"


def test_every_cli_command_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:  # type: ignore[attr-defined]
        assert re.search(rf"opengateway {re.escape(name)}\b", README), f"`opengateway {name}` is not in README.md"
