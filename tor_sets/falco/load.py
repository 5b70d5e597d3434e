"""Load Falco rules files the way Falco does: items, appends and overrides, exceptions, in load order.

Exports :class:`LoadedRule`, :class:`RuleSet`, :class:`RequiredPlugin` and :func:`load_rules`. Every rule comes
with its condition expanded into one self-contained filter (:mod:`tor_sets.falco.expand`), which is what the
sysdig engines replay::

    - list: tor_exits
      items: ['"1.2.3.4"', '"5.6.7.8"']
    - macro: tor_connect
      condition: evt.type = connect and fd.rip in (tor_exits)
    - rule: Tor exit contacted
      condition: tor_connect and not proc.name = tor
      ...

    expanded: (evt.type = connect and fd.rip in ("1.2.3.4", "5.6.7.8")) and not proc.name = tor

What it follows, read in Falco's sources (falcosecurity/falco ``userspace/engine/``):

- ``rule_loader_reader.cpp``: which items exist (``required_engine_version``, ``required_plugin_versions``,
  ``list``, ``macro``, ``rule``), which keys are required, ``append: true`` and ``override:`` (which keys may be
  appended to or replaced), a rule item with only ``enabled`` re-enabling an earlier rule, ``items:`` that must
  be a sequence of scalars.
- ``rule_loader_collector.cpp``: redefining a name replaces it in place, appending to a missing name is an
  error, appended conditions are joined with a space, exceptions are merged by name.
- ``rule_loader_compiler.cpp``: list items that name an earlier list are spliced in, exceptions become
  ``(condition) and not (...)`` clauses, macros see only macros defined before them, rules see all.

What cannot be expanded (an unknown macro, a list name where a check belongs) is kept as written, named in
:attr:`LoadedRule.unresolved` and reported in :attr:`RuleSet.warnings`.

Spec: https://falco.org/docs/reference/rules/ (rule fields), https://falco.org/docs/rules/overriding/,
https://falco.org/docs/rules/exceptions/.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from tor_sets.errors import RuleError
from tor_sets.falco.expand import BLANKS, LIST_OPERATORS, OPERATORS, Expander, quote_item
from tor_sets.falco.model import PRIORITIES

__all__ = [
    "LoadedRule",
    "RequiredPlugin",
    "RuleSet",
    "load_rules",
]

#: Falco's priorities, most severe first, spelled as Falco reports them (parsed case-insensitively).
_REPORTED_PRIORITIES = tuple(name.capitalize() for name in PRIORITIES)


@dataclass(frozen=True, slots=True)
class LoadedRule:
    """One rule after every append and override, with its condition expanded.

    Attributes:
        name: the rule's name.
        condition: the condition as written, with appended conditions joined by a space (Falco does the same).
        expanded: a self-contained filter: macros written out in parentheses, lists spliced into their value
            lists, exceptions added as ``and not (...)`` clauses.
        output: the output format (trimmed).
        priority: the priority as Falco reports it, e.g. ``Warning`` (written ``WARNING`` or ``warning``).
        tags: the tags, sorted and unique (Falco keeps them as a set).
        enabled: ``False`` when the rule is disabled; it is kept and expanded all the same.
        source: the event source, ``syscall`` unless given.
        desc: the description.
        unresolved: names the expansion could not resolve (unknown macros, a list where a check belongs),
            kept as written in :attr:`expanded`; empty when the expansion is complete.
    """

    name: str
    condition: str
    expanded: str
    output: str
    priority: str
    tags: tuple[str, ...]
    enabled: bool
    source: str = "syscall"
    desc: str = ""
    unresolved: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether :attr:`expanded` resolved every macro and list the condition uses."""
        return not self.unresolved


@dataclass(frozen=True, slots=True)
class RequiredPlugin:
    """One ``required_plugin_versions`` entry: a plugin and the alternatives that also satisfy it.

    Attributes:
        name: the plugin's name, e.g. ``container``.
        version: the minimum version, e.g. ``0.2.0``.
        alternatives: ``(name, version)`` pairs of other plugins accepted instead.
    """

    name: str
    version: str
    alternatives: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Everything loaded from one or more rules files, in Falco's load order.

    Attributes:
        lists: list name → items, with items that name an earlier list replaced by that list's items.
        macros: macro name → condition as written (appends joined), ready for
            :func:`~tor_sets.falco.expand.expand_condition`.
        rules: rule name → :class:`LoadedRule`, in the order the rules were first defined.
        required_engine_version: the highest ``required_engine_version`` seen, as written, or ``None``.
        required_plugin_versions: every ``required_plugin_versions`` entry, in file order.
        warnings: one line each for what could not be expanded, was ignored or is deprecated, naming the file
            and the item.
    """

    lists: Mapping[str, tuple[str, ...]]
    macros: Mapping[str, str]
    rules: Mapping[str, LoadedRule]
    required_engine_version: str | None = None
    required_plugin_versions: tuple[RequiredPlugin, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def syscall_rules(self) -> tuple[LoadedRule, ...]:
        """The enabled rules of the syscall source, in load order: what an engine replaying a capture evaluates."""
        return tuple(r for r in self.rules.values() if r.enabled and r.source == "syscall")


# ---------------------------------------------------------------------------------------------------------------
# Reading rules files
# ---------------------------------------------------------------------------------------------------------------

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _TextLoader(_SafeLoader):
    """A safe loader that keeps every plain scalar as the text written (``080``, ``1e3``, ``yes``), like yaml-cpp.

    Only nulls are still recognised, because Falco treats ``items:`` (null) differently from ``items: []``.
    """

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            if value in ("", "~", "null", "Null", "NULL"):
                return _NULL_TAG
            return _MERGE_TAG if value == "<<" else _STR_TAG
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]


# yaml-cpp's convert<bool>: these words in lower case, upper case or capitalised
_TRUE = frozenset({"y", "yes", "true", "on"})
_FALSE = frozenset({"n", "no", "false", "off"})
_MACRO_NAME = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")
_LIST_NAME = re.compile(r"[^()\"'\s=,]+")
_ENGINE_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?")
_RULE_APPENDABLE = frozenset({"condition", "output", "desc", "tags", "exceptions"})
_RULE_REPLACEABLE = frozenset(
    {"condition", "output", "desc", "priority", "tags", "exceptions", "enabled", "warn_evttypes"}
    | {"skip-if-unknown-filter"}
)

# An exception value: a scalar, or (for multi-field exceptions) a sequence whose entries are scalars or
# sequences of scalars.
_Value = str | list[Any]


@dataclass(slots=True)
class _ListInfo:
    items: list[str]
    index: int
    visibility: int
    origin: str


@dataclass(slots=True)
class _MacroInfo:
    condition: str
    index: int
    visibility: int
    origin: str


@dataclass(slots=True)
class _ExceptionInfo:
    name: str
    fields: str | list[str] | None
    comps: str | list[str] | None
    values: list[_Value]
    has_values: bool


@dataclass(slots=True)
class _RuleInfo:
    name: str
    condition: str
    output: str
    desc: str
    priority: str
    source: str
    enabled: bool
    tags: set[str]
    exceptions: list[_ExceptionInfo]
    origin: str


class _Item:
    """One top-level item being read: where it is, for messages, and typed access to its keys."""

    __slots__ = ("data", "label", "path", "what")

    def __init__(self, data: dict[Any, Any], label: str, path: str | None, what: str) -> None:
        self.data = data
        self.label = label
        self.path = path
        self.what = what

    def error(self, message: str) -> RuleError:
        return RuleError(f"{self.label}: {self.what}: {message}", path=self.path)

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, *, required: bool = True) -> str | None:
        """A non-empty scalar, as Falco's ``decode_val`` demands."""
        if key not in self.data:
            if required:
                raise self.error(f"missing '{key}'")
            return None
        value = self.data[key]
        if value is None:
            raise self.error(f"'{key}' is empty")
        if not isinstance(value, str):
            raise self.error(f"'{key}' must be a single value, not a {_kind(value)}")
        if not value:
            raise self.error(f"'{key}' must not be empty")
        return value

    def flag(self, key: str) -> bool | None:
        value = self.text(key, required=False)
        if value is None:
            return None
        word = value.lower()
        if value in (word, word.upper(), word.capitalize()):
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        raise self.error(f"'{key}' must be true or false, not {value!r}")

    def scalars(self, key: str) -> list[str] | None:
        """A sequence of scalars (``items``, ``tags``)."""
        if key not in self.data:
            return None
        value = self.data[key]
        if value is None:
            raise self.error(
                f"'{key}' is empty (YAML null); Falco rejects the whole file: write '{key}: []' for no {key}"
            )
        if not isinstance(value, list):
            raise self.error(f"'{key}' must be a sequence, not a {_kind(value)}")
        for number, entry in enumerate(value, 1):
            if not isinstance(entry, str):
                raise self.error(f"'{key}' entry {number} must be a single value, not a {_kind(entry)}")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "mapping"
    return "scalar"


def _parse_engine_version(text: str) -> tuple[int, int, int] | None:
    if text.isdigit():  # the pre-0.37 integer form, meaning 0.N.0
        return (0, int(text), 0)
    match = _ENGINE_VERSION.fullmatch(text)
    if match is None:
        return None
    return (int(match[1]), int(match[2]), int(match[3]))


def _priority(item: _Item, text: str) -> str:
    lowered = text.lower()
    if lowered == "info":
        return "Informational"
    for name in _REPORTED_PRIORITIES:
        if name.lower() == lowered:
            return name
    expected = ", ".join(p.lower() for p in _REPORTED_PRIORITIES)
    raise item.error(f"invalid priority {text!r}; expected one of {expected}")


class _Collector:
    """Falco's collector: the lists, macros and rules of all files read so far, with their definition order."""

    def __init__(self) -> None:
        self.lists: dict[str, _ListInfo] = {}
        self.macros: dict[str, _MacroInfo] = {}
        self.rules: dict[str, _RuleInfo] = {}
        self.engine_version: tuple[tuple[int, int, int], str] | None = None
        self.plugins: list[RequiredPlugin] = []
        self.warnings: list[str] = []
        self.paths: dict[str, str | None] = {}  # source label → file path, for RuleError.path
        self._counter = 0

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    # -- files -----------------------------------------------------------------------------------------------

    def read(self, text: str, label: str, path: str | None) -> None:
        self.paths[label] = path
        try:
            documents = list(yaml.load_all(text, Loader=_TextLoader))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise RuleError(f"{label}: invalid YAML{where}: {problem}", path=path) from error
        for document in documents:
            if document is None:
                continue
            if not isinstance(document, list):
                raise RuleError(f"{label}: rules content must be a YAML sequence of items", path=path)
            for number, data in enumerate(document, 1):
                if data is None:
                    continue
                if not isinstance(data, dict):
                    raise RuleError(f"{label}: item {number} must be a mapping, not a {_kind(data)}", path=path)
                self._item(data, label, path, number)

    def _item(self, data: dict[Any, Any], label: str, path: str | None, number: int) -> None:
        if "required_engine_version" in data:
            self._engine_version(_Item(data, label, path, "required_engine_version"))
        elif "required_plugin_versions" in data:
            self._plugin_versions(_Item(data, label, path, "required_plugin_versions"))
        elif "list" in data:
            name = _Item(data, label, path, f"item {number}").text("list")
            assert name is not None
            self._list(_Item(data, label, path, f"list '{name}'"), name)
        elif "macro" in data:
            name = _Item(data, label, path, f"item {number}").text("macro")
            assert name is not None
            self._macro(_Item(data, label, path, f"macro '{name}'"), name)
        elif "rule" in data:
            name = _Item(data, label, path, f"item {number}").text("rule")
            assert name is not None
            self._rule(_Item(data, label, path, f"rule '{name}'"), name)
        else:
            keys = ", ".join(sorted(str(key) for key in data))
            self.warnings.append(f"{label}: item {number}: unknown top-level item ({keys}); ignored")

    def _engine_version(self, item: _Item) -> None:
        text = item.text("required_engine_version")
        assert text is not None
        version = _parse_engine_version(text)
        if version is None:
            raise item.error(f"cannot parse {text!r}: expected an integer or x.y.z")
        if self.engine_version is None or version > self.engine_version[0]:
            self.engine_version = (version, text)

    def _plugin_versions(self, item: _Item) -> None:
        entries = item.data["required_plugin_versions"]
        if not isinstance(entries, list):
            raise item.error(f"must be a sequence, not a {_kind(entries)}")
        for number, entry in enumerate(entries, 1):
            if not isinstance(entry, dict):
                raise item.error(f"entry {number} must be a mapping, not a {_kind(entry)}")
            plugin = _Item(entry, item.label, item.path, f"required_plugin_versions entry {number}")
            name, version = plugin.text("name"), plugin.text("version")
            assert name is not None and version is not None
            alternatives: list[tuple[str, str]] = []
            others = entry.get("alternatives")
            if others is not None:
                if not isinstance(others, list):
                    raise plugin.error(f"'alternatives' must be a sequence, not a {_kind(others)}")
                for other in others:
                    if not isinstance(other, dict):
                        raise plugin.error(f"an alternative must be a mapping, not a {_kind(other)}")
                    alternative = _Item(other, item.label, item.path, f"plugin '{name}' alternative")
                    alt_name, alt_version = alternative.text("name"), alternative.text("version")
                    assert alt_name is not None and alt_version is not None
                    alternatives.append((alt_name, alt_version))
            self.plugins.append(RequiredPlugin(name, version, tuple(alternatives)))

    # -- lists and macros ------------------------------------------------------------------------------------

    def _overrides(self, item: _Item, appendable: frozenset[str], replaceable: frozenset[str]) -> dict[str, str]:
        """The ``override:`` mapping, checked like Falco's ``decode_overrides``: key → append|replace."""
        if not item.has("override"):
            return {}
        overrides = item.data["override"]
        if not isinstance(overrides, dict):
            raise item.error(f"'override' must be a mapping, not a {_kind(overrides)}")
        result: dict[str, str] = {}
        for key, operation in overrides.items():
            if operation == "append":
                if key not in appendable:
                    raise item.error(f"'{key}' cannot be appended to, use 'replace' instead")
            elif operation == "replace":
                if key not in replaceable:
                    raise item.error(f"'{key}' cannot be replaced")
            else:
                allowed = [word for word, keys in (("append", appendable), ("replace", replaceable)) if key in keys]
                raise item.error(
                    f"invalid override operation {operation!r} for '{key}'; allowed: {', '.join(allowed) or 'none'}"
                )
            result[str(key)] = operation
        return result

    def _append_flag(self, item: _Item, overrides: Mapping[str, str]) -> bool:
        append = bool(item.flag("append"))
        if append and overrides:
            raise item.error("'append' and 'override' cannot be used together")
        if append:
            self.warnings.append(
                f"{item.label}: {item.what}: 'append: true' is deprecated since Falco 0.37; use 'override'"
            )
        return append

    def _list(self, item: _Item, name: str) -> None:
        if not _LIST_NAME.fullmatch(name):
            raise item.error("invalid list name: it must not contain blanks, quotes, '(', ')', ',' or '='")
        items = item.scalars("items")
        if items is None:
            raise item.error("missing 'items'")
        overrides = self._overrides(item, frozenset({"items"}), frozenset({"items"}))
        append = self._append_flag(item, overrides) or overrides.get("items") == "append"
        if append:
            previous = self.lists.get(name)
            if previous is None:
                raise item.error("cannot append to a list that is not defined earlier")
            previous.items.extend(items)
            previous.visibility = self._next()
            return
        identifier = self._next()
        previous = self.lists.get(name)
        index = previous.index if previous is not None else identifier
        self.lists[name] = _ListInfo(list(items), index, identifier, item.label)

    def _macro(self, item: _Item, name: str) -> None:
        if not _MACRO_NAME.fullmatch(name):
            raise item.error("invalid macro name: it must be a letter followed by letters, digits or '_'")
        condition = item.text("condition")
        assert condition is not None
        overrides = self._overrides(item, frozenset({"condition"}), frozenset({"condition"}))
        append = self._append_flag(item, overrides) or overrides.get("condition") == "append"
        if append:
            previous = self.macros.get(name)
            if previous is None:
                raise item.error("cannot append to a macro that is not defined earlier")
            previous.condition += " " + condition
            previous.visibility = self._next()
            return
        identifier = self._next()
        before = self.macros.get(name)
        index = before.index if before is not None else identifier
        self.macros[name] = _MacroInfo(condition, index, identifier, item.label)

    # -- rules -----------------------------------------------------------------------------------------------

    def _rule(self, item: _Item, name: str) -> None:
        overrides = self._overrides(item, _RULE_APPENDABLE, _RULE_REPLACEABLE)
        if self._append_flag(item, overrides):
            self._rule_legacy_append(item, name)
        elif overrides:
            self._rule_override(item, name, overrides)
        elif not any(item.has(key) for key in ("condition", "output", "desc", "priority")):
            self._rule_enable(item, name)
        else:
            self._rule_define(item, name)

    def _previous_rule(self, item: _Item, name: str, action: str) -> _RuleInfo:
        previous = self.rules.get(name)
        if previous is None:
            raise item.error(f"cannot {action} a rule that is not defined earlier")
        previous.origin = item.label
        return previous

    def _rule_define(self, item: _Item, name: str) -> None:
        condition, output, desc = item.text("condition"), item.text("output"), item.text("desc")
        priority = item.text("priority")
        assert condition is not None and output is not None and desc is not None and priority is not None
        source = item.text("source", required=False) or "syscall"
        previous = self.rules.get(name)
        if previous is not None and previous.source != source:
            raise item.error(f"redefined with source '{source}', but it was defined with '{previous.source}'")
        enabled = item.flag("enabled")
        exceptions = self._exceptions(item, appending=False)
        for exception in exceptions:
            self._validate_exception(item, exception)
        self.rules[name] = _RuleInfo(
            name=name,
            condition=condition,
            output=output.strip(),
            desc=desc,
            priority=_priority(item, priority),
            source=source,
            enabled=True if enabled is None else enabled,
            tags=set(item.scalars("tags") or ()),
            exceptions=exceptions,
            origin=item.label,
        )

    def _rule_enable(self, item: _Item, name: str) -> None:
        # A rule item with none of condition/output/desc/priority only switches an earlier rule on or off.
        enabled = item.flag("enabled")
        if enabled is None:
            raise item.error("missing 'condition', 'output', 'desc' and 'priority' (or 'enabled' alone)")
        self._previous_rule(item, name, "enable or disable").enabled = enabled
        self.warnings.append(
            f"{item.label}: {item.what}: a rule item with only 'enabled' is deprecated; use 'override: "
            "{enabled: replace}'"
        )

    def _rule_legacy_append(self, item: _Item, name: str) -> None:
        # append: true takes only condition and exceptions (rule_loader_reader.cpp)
        condition = item.text("condition", required=False)
        exceptions = self._exceptions(item, appending=True) if item.has("exceptions") else None
        previous = self._previous_rule(item, name, "append to")
        if condition is None and exceptions is None:
            raise item.error("an appended rule must have 'condition' or 'exceptions'")
        if condition:
            previous.condition += " " + condition
        if exceptions is not None:
            self._merge_exceptions(item, previous, exceptions)

    def _rule_override(self, item: _Item, name: str, overrides: Mapping[str, str]) -> None:
        for key in sorted((_RULE_APPENDABLE | _RULE_REPLACEABLE) - overrides.keys()):
            if item.has(key):
                raise item.error(f"unexpected key '{key}': it has no entry under 'override'")
        for key, operation in overrides.items():
            if not item.has(key):
                raise item.error(f"an {operation} override for '{key}' was given but '{key}' is not defined")
        appends = [key for key, operation in overrides.items() if operation == "append"]
        replaces = [key for key, operation in overrides.items() if operation == "replace"]
        if appends:
            previous = self._previous_rule(item, name, "append to")
            for key in appends:
                if key == "exceptions":
                    self._merge_exceptions(item, previous, self._exceptions(item, appending=True))
                elif key == "tags":
                    previous.tags.update(item.scalars("tags") or ())
                else:
                    text = item.text(key)
                    assert text is not None
                    setattr(previous, key, getattr(previous, key) + " " + text)
        if replaces:
            previous = self._previous_rule(item, name, "replace keys of")
            for key in replaces:
                if key == "exceptions":
                    exceptions = self._exceptions(item, appending=True)
                    for exception in exceptions:
                        self._validate_exception(item, exception)
                    previous.exceptions = exceptions
                elif key == "tags":
                    previous.tags = set(item.scalars("tags") or ())
                elif key == "priority":
                    text = item.text("priority")
                    assert text is not None
                    previous.priority = _priority(item, text)
                elif key == "enabled":
                    enabled = item.flag("enabled")
                    assert enabled is not None
                    previous.enabled = enabled
                elif key in ("condition", "output", "desc"):
                    text = item.text(key)
                    assert text is not None
                    setattr(previous, key, text.strip() if key == "output" else text)
                else:  # warn_evttypes, skip-if-unknown-filter: no effect on the expansion
                    item.flag(key)

    # -- exceptions ------------------------------------------------------------------------------------------

    def _exceptions(self, item: _Item, *, appending: bool) -> list[_ExceptionInfo]:
        """Read ``exceptions:`` as Falco's ``read_rule_exceptions`` does; ``fields`` is optional when appending."""
        raw = item.data.get("exceptions")
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise item.error(f"'exceptions' must be a sequence, not a {_kind(raw)}")
        result: list[_ExceptionInfo] = []
        for number, entry in enumerate(raw, 1):
            if not isinstance(entry, dict):
                raise item.error(f"exception {number} must be a mapping, not a {_kind(entry)}")
            name = _Item(entry, item.label, item.path, f"{item.what}: exception {number}").text("name")
            assert name is not None
            where = _Item(entry, item.label, item.path, f"{item.what}: exception '{name}'")
            if any(known.name == name for known in result):
                raise where.error("exception names within one item must be unique")
            fields = self._exception_entry(where, "fields", required=not appending)
            comps = self._exception_entry(where, "comps", required=False)
            values: list[_Value] = []
            if "values" in entry:
                raw_values = entry["values"]
                if not isinstance(raw_values, list):
                    raise where.error(f"'values' must be a sequence, not a {_kind(raw_values)}")
                for value in raw_values:
                    values.append(self._exception_value(where, value))
            elif appending:
                self.warnings.append(f"{where.label}: {where.what}: overriding or appending with no values")
            result.append(_ExceptionInfo(name, fields, comps, values, "values" in entry))
        return result

    @staticmethod
    def _exception_entry(where: _Item, key: str, *, required: bool) -> str | list[str] | None:
        if key not in where.data:
            if required:
                raise where.error(f"missing '{key}'")
            return None
        value = where.data[key]
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and all(isinstance(entry, str) and entry for entry in value):
            return value
        raise where.error(f"'{key}' must be a value or a sequence of values")

    @staticmethod
    def _exception_value(where: _Item, value: Any) -> _Value:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list):
            for entry in value:
                if isinstance(entry, str) and entry:
                    continue
                if isinstance(entry, list) and all(isinstance(inner, str) and inner for inner in entry):
                    continue
                raise where.error("each of 'values' must hold values or sequences of values")
            return value
        raise where.error(f"each of 'values' must be a value or a sequence, not {_kind(value)}")

    @staticmethod
    def _validate_exception(item: _Item, exception: _ExceptionInfo) -> None:
        """Falco's ``validate_exception_info``, which also fills in the default comparisons."""
        where = f"exception '{exception.name}'"
        if exception.fields is None:
            raise item.error(f"{where}: missing 'fields'")
        if isinstance(exception.fields, list):
            if exception.comps is None:
                exception.comps = ["="] * len(exception.fields)
            if not isinstance(exception.comps, list) or len(exception.comps) != len(exception.fields):
                raise item.error(f"{where}: 'fields' and 'comps' must be sequences of equal length")
            for comp in exception.comps:
                if comp not in OPERATORS:
                    raise item.error(f"{where}: '{comp}' is not a supported comparison operator")
        else:
            if exception.comps is None:
                exception.comps = "in"
            if exception.comps not in LIST_OPERATORS:
                raise item.error(f"{where}: with a single field, 'comps' must be one of in, pmatch, intersects")
        _Collector._check_values(item, exception, exception.values)

    @staticmethod
    def _check_values(item: _Item, exception: _ExceptionInfo, values: Sequence[_Value]) -> None:
        """Each value has one entry per field (several fields) or is a single value (one field)."""
        fields = exception.fields
        for value in values:
            if isinstance(fields, list):
                if not isinstance(value, list) or len(value) != len(fields):
                    raise item.error(
                        f"exception '{exception.name}': each value must list one entry per field ({len(fields)})"
                    )
            elif not isinstance(value, str):
                raise item.error(f"exception '{exception.name}': with a single field, each value must be a value")

    def _merge_exceptions(self, item: _Item, rule: _RuleInfo, exceptions: list[_ExceptionInfo]) -> None:
        for exception in exceptions:
            known = next((old for old in rule.exceptions if old.name == exception.name), None)
            if known is None:
                if not exception.has_values:
                    raise item.error(f"exception '{exception.name}': a new exception needs 'values'")
                self._validate_exception(item, exception)
                rule.exceptions.append(exception)
            elif exception.fields is not None or exception.comps is not None:
                raise item.error(f"exception '{exception.name}': only values can be appended to an existing exception")
            else:
                self._check_values(item, known, exception.values)
                known.values.extend(exception.values)

    # -- the result ------------------------------------------------------------------------------------------

    def resolved_lists(self) -> dict[str, tuple[str, ...]]:
        """Splice list items that name a list defined before (Falco's visibility rule), recursively."""
        done: dict[str, tuple[str, ...]] = {}
        active: list[str] = []

        def resolve(name: str) -> tuple[str, ...]:
            if name in done:
                return done[name]
            info = self.lists[name]
            if name in active:
                chain = " -> ".join([*active[active.index(name) :], name])
                raise RuleError(
                    f"{info.origin}: list '{name}': lists refer to each other in a cycle: {chain}",
                    path=self.paths.get(info.origin),
                )
            active.append(name)
            items: list[str] = []
            for entry in info.items:
                ref = self.lists.get(entry)
                if ref is None or ref.index >= info.visibility:
                    items.append(entry)
                    continue
                if any(inner in self.lists and self.lists[inner].index < ref.visibility for inner in ref.items):
                    self.warnings.append(
                        f"{info.origin}: list '{name}': item '{entry}' is a list that itself names lists; "
                        "current Falco splices only one level, so it would see the inner names as plain values"
                    )
                items.extend(resolve(entry))
            active.pop()
            done[name] = tuple(items)
            return done[name]

        return {name: resolve(name) for name in self.lists}

    def result(self) -> RuleSet:
        lists = self.resolved_lists()
        macro_infos = self.macros
        expander = Expander(
            lists,
            {name: info.condition for name, info in macro_infos.items()},
            describe_macro=lambda name: f"{macro_infos[name].origin}: macro '{name}'",
            macro_path=lambda name: self.paths.get(macro_infos[name].origin),
            visible=lambda user, used: macro_infos[used].index < macro_infos[user].visibility,
        )
        for name in macro_infos:
            expander.macro(name)
        rules: dict[str, LoadedRule] = {}
        summaries: list[str] = []
        for name, info in self.rules.items():
            owner = f"{info.origin}: rule '{name}'"
            expanded = expander.condition(
                _with_exceptions(info.condition, info.exceptions), owner, path=self.paths.get(info.origin)
            )
            if expanded.unresolved:
                names = ", ".join(f"'{unknown}'" for unknown in expanded.unresolved)
                summaries.append(f"{owner}: expansion incomplete: cannot resolve {names}")
            if not info.enabled:
                summaries.append(f"{owner}: disabled (enabled: false); Falco loads it but never matches it")
            rules[name] = LoadedRule(
                name=name,
                condition=info.condition,
                expanded=expanded.text,
                output=info.output,
                priority=info.priority,
                tags=tuple(sorted(info.tags)),
                enabled=info.enabled,
                source=info.source,
                desc=info.desc,
                unresolved=expanded.unresolved,
            )
        return RuleSet(
            lists=MappingProxyType(lists),
            macros=MappingProxyType({name: info.condition for name, info in macro_infos.items()}),
            rules=MappingProxyType(rules),
            required_engine_version=self.engine_version[1] if self.engine_version else None,
            required_plugin_versions=tuple(self.plugins),
            warnings=tuple([*self.warnings, *expander.notes, *summaries]),
        )


def _with_exceptions(condition: str, exceptions: Sequence[_ExceptionInfo]) -> str:
    """Add a rule's exceptions to its condition the way Falco's ``build_rule_exception_infos`` writes them.

    >>> ex = _ExceptionInfo("known", ["proc.name", "fd.sport"], ["=", "in"], [["nginx", ["80", "443"]]], True)
    >>> _with_exceptions("evt.type = connect", [ex])
    '(evt.type = connect) and not (( proc.name = nginx and  fd.sport in (80, 443)))'
    """
    if not exceptions:
        return condition
    parts = ["(", condition.strip(BLANKS), ")"]
    for exception in exceptions:
        clause = _exception_clause(exception)
        if clause:
            parts += [" and not ", clause]
    return "".join(parts)


def _exception_clause(exception: _ExceptionInfo) -> str:
    fields, comps = exception.fields, exception.comps
    if not isinstance(fields, list):
        # one field: (proc.name in (a, b))
        values = [quote_item(value) for value in exception.values if isinstance(value, str)]
        return f"({fields} {comps} ({', '.join(values)}))" if values else ""
    assert isinstance(comps, list)
    alternatives: list[str] = []
    for row in exception.values:
        assert isinstance(row, list)  # shape checked by _Collector._check_values
        checks: list[str] = []
        for name, comp, value in zip(fields, comps, row, strict=True):
            if isinstance(value, list):
                text = "(" + ", ".join(quote_item(entry) for entry in value) + ")"
            elif comp in LIST_OPERATORS:
                text = value if value.startswith("(") else f"({value})"
            else:
                text = quote_item(value)
            checks.append(f" {name} {comp} {text}")
        alternatives.append("(" + " and ".join(checks) + ")")
    return "(" + " or ".join(alternatives) + ")" if alternatives else ""


def load_rules(*sources: Path | str) -> RuleSet:
    """Load rules files in Falco's load order and expand every rule.

    Later sources append to and override earlier ones, as with Falco's repeated ``-r``. Every rule is kept,
    disabled ones too, with :attr:`LoadedRule.expanded` ready for ``sysdig -r capture FILTER``.

    Args:
        *sources: a :class:`~pathlib.Path` to a rules file, or a ``str`` holding YAML text.

    Returns:
        The loaded :class:`RuleSet`; what could not be expanded is in its ``warnings``.

    Raises:
        RuleError: a file cannot be read or is not valid YAML; an item breaks a rule Falco enforces (missing
            key, ``items:`` null, appending to an undefined name, bad priority or override); a condition cannot
            be parsed; macros or lists refer to each other in a cycle.
    """
    collector = _Collector()
    texts = sum(1 for source in sources if isinstance(source, str))
    number = 0
    for source in sources:
        if isinstance(source, Path):
            try:
                text = source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
                raise RuleError(f"{source}: cannot read the rules file: {reason}", path=str(source)) from error
            collector.read(text, str(source), str(source))
        else:
            number += 1
            collector.read(source, "<rules text>" if texts == 1 else f"<rules text {number}>", None)
    return collector.result()
