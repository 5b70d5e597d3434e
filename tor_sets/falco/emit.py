"""Emission of a :class:`~tor_sets.falco.model.RulesFile` as Falco YAML.

Exports :func:`render`. The output is deterministic (same model → same bytes): keys in Falco's customary order,
long conditions as literal blocks, the header first as ``#`` comments. Macros and rules are dumped by PyYAML.

Address lists are the bulk of the file, so their items are laid out by :func:`flow_items`: a flow sequence with
one line per leading octet (IPv4) or leading 16 bits (IPv6), items separated by a bare comma, IPv6 values
single-quoted. A relay that comes or goes changes one line of the diff, the file stays small, and an empty list is
``[]``, never null. Only values matching ``_VALUE`` (digits, hex, ``.``, ``:``, ``/``) may be laid out this way.
Before returning, :func:`render` loads the text back and checks every item is as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml

from tor_sets.errors import RuleError
from tor_sets.falco.model import FalcoList, Macro, Rule, RulesFile

__all__ = ["render"]


class _Literal(str):
    """A string emitted as a YAML literal block."""


class _Flow(list[str]):
    """A sequence emitted in flow style."""


class _Dumper(yaml.SafeDumper):
    pass


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|")


def _flow(dumper: yaml.SafeDumper, value: _Flow) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(value), flow_style=True)


_Dumper.add_representer(_Literal, _literal)
_Dumper.add_representer(_Flow, _flow)


def _text(value: str) -> str:
    return _Literal(value + "\n") if "\n" in value else value


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE = re.compile(r"[0-9A-Fa-f.:/]+")


def _group(value: str) -> str:
    return value.split(":", 1)[0] if ":" in value else value.split(".", 1)[0]


def flow_items(items: Sequence[str], indent: int = 4) -> str:
    """Lay out address-list values as a YAML flow sequence, one line per leading octet or hextet.

    >>> print(flow_items(["1.2.3.4", "1.9.9.9", "5.6.7.0/24", "2001:db8::1"]))
    [1.2.3.4,1.9.9.9,
        5.6.7.0/24,
        '2001:db8::1']
    """
    if not items:
        return "[]"
    lines: list[list[str]] = []
    previous = None
    for value in items:
        if not _VALUE.fullmatch(value):
            raise RuleError(f"refusing to write list value {value[:40]!r}: not an address or network")
        group = _group(value)
        if group != previous:
            lines.append([])
            previous = group
        lines[-1].append(f"'{value}'" if ":" in value else value)
    return "[" + (",\n" + " " * indent).join(",".join(line) for line in lines) + "]"


def _list_text(item: FalcoList) -> str:
    if not _NAME.fullmatch(item.name):
        raise RuleError(f"refusing to write list name {item.name[:40]!r}")
    return f"- list: {item.name}\n  items: {flow_items(item.items)}\n"


def _mapping(item: Macro | Rule) -> dict[str, Any]:
    if isinstance(item, Macro):
        return {"macro": item.name, "condition": _text(item.condition)}
    out: dict[str, Any] = {
        "rule": item.name,
        "desc": item.desc,
        "condition": _text(item.condition),
        "output": item.output,
        "priority": item.priority,
    }
    if item.tags:
        out["tags"] = _Flow(item.tags)
    if not item.enabled:
        out["enabled"] = False
    return out


def _dump(document: list[dict[str, Any]]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=118, allow_unicode=False, indent=2)


def render(rules_file: RulesFile) -> str:
    """Render the rules file as YAML text.

    Raises:
        RuleError: the text does not load back into the same items (a bug, never silently written).
    """
    parts = [f"# {line}".rstrip() + "\n" for line in rules_file.header]
    if rules_file.required_engine_version is not None:
        parts.append("\n" + _dump([{"required_engine_version": rules_file.required_engine_version}]))
    if rules_file.required_plugins:
        plugins = [{"name": name, "version": version} for name, version in rules_file.required_plugins]
        parts.append("\n" + _dump([{"required_plugin_versions": plugins}]))
    for item in rules_file.items:
        parts.append("\n" + (_list_text(item) if isinstance(item, FalcoList) else _dump([_mapping(item)])))
    text = "".join(parts)
    _check(text, rules_file)
    return text


def _check(text: str, rules_file: RulesFile) -> None:
    loaded = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    preamble = ("required_engine_version", "required_plugin_versions")
    items = [i for i in loaded if not any(k in i for k in preamble)] if isinstance(loaded, list) else None
    if items is None or len(items) != len(rules_file.items):
        raise RuleError("rendered rules do not load back as the same items")
    for item, back in zip(rules_file.items, items, strict=True):
        if isinstance(item, FalcoList) and back.get("items") != list(item.items):
            raise RuleError(f"list {item.name} does not load back as written")
        if isinstance(item, Macro | Rule) and str(back.get("condition", "")).rstrip("\n") != item.condition:
            raise RuleError(f"condition of {item.name} does not load back as written")
