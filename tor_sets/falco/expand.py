"""The condition grammar of Falco's filters, and the expansion of a condition into one self-contained filter.

Exports :data:`ALWAYS_FALSE` and :func:`expand_condition`, and for the rules loader (:mod:`tor_sets.falco.load`)
:class:`Expander` (conditions expanded against fixed lists and macros, each macro once), :class:`Expanded`,
:func:`quote_item` and the grammar's :data:`BLANKS`, :data:`OPERATORS` and :data:`LIST_OPERATORS`.

A sysdig build takes a filter condition, not a rules file, so to replay a capture against a rule we need the rule's
condition with every macro and list written out, as Falco's own compiler would build it::

    - list: tor_exits
      items: ['"1.2.3.4"', '"5.6.7.8"']
    - macro: tor_connect
      condition: evt.type = connect and fd.rip in (tor_exits)

    tor_connect and not proc.name = tor
    expanded: (evt.type = connect and fd.rip in ("1.2.3.4", "5.6.7.8")) and not proc.name = tor

What it follows: the filter grammar of libsinsp (falcosecurity/libs ``userspace/libsinsp/filter/parser.h``): the
condition is parsed once, so a macro is only recognised where a check may stand and a list only as a value; and
Falco's ``rule_loader_compiler.cpp``: list items with a blank are double-quoted, macros see only macros defined
before them.

Where our text must differ from Falco's, it stays a filter both sysdig builds accept: ``x in ()`` (an empty list)
is a parse error in the 2022 engine, so the whole check becomes :data:`ALWAYS_FALSE`, which is what the check
evaluates to in current Falco. What cannot be expanded (an unknown macro, a list name where a check belongs) is
kept as written and named in :attr:`Expanded.unresolved`.

Spec: https://falco.org/docs/reference/rules/conditions/ (the condition syntax).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from tor_sets.errors import RuleError

__all__ = [
    "ALWAYS_FALSE",
    "BLANKS",
    "LIST_OPERATORS",
    "OPERATORS",
    "Expanded",
    "Expander",
    "expand_condition",
    "quote_item",
]

#: A check that is false for every event and that both sysdig builds parse; it stands in for ``x in ()``.
ALWAYS_FALSE = "(evt.num = 0 and evt.num != 0)"

# Lexical classes of libsinsp's filter grammar (parser.h); Python's \s stands in for POSIX [[:space:]].
BLANKS = " \t\b\r\n"
_RX_NOT = re.compile(r"not[ \t\b\r\n\v\f]+")
_RX_IDENTIFIER = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")
_RX_FIELD = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*(?:\.[a-zA-Z]+[a-zA-Z0-9_]*)+")
_RX_FIELD_ARG = re.compile(r"[^\[\]\"'\s]+")
_RX_NUMBER = re.compile(r"0[xX][0-9a-zA-Z]+|[+\-]?[0-9]+\.?[0-9]*(?:[eE][+\-][0-9]+)?")
_RX_BARE = re.compile(r"[^()\"'\s=,]+")
_RX_WORD_OPERATOR = re.compile(
    r"(?:glob|iglob|contains|icontains|bcontains|startswith|bstartswith|endswith|regex)[ \t\b\r\n]"
)
_NUM_OPERATORS = ("<=", "<", ">=", ">")
_SYMBOL_OPERATORS = ("==", "=", "!=")
LIST_OPERATORS = ("intersects", "in", "pmatch")
OPERATORS = frozenset(
    {"exists", "<=", "<", ">=", ">", "==", "=", "!=", "glob", "iglob", "contains", "icontains", "bcontains"}
    | {"startswith", "bstartswith", "endswith", "regex", "intersects", "in", "pmatch"}
)


def quote_item(item: str) -> str:
    """Quote a list item that holds a blank, as Falco's compiler does (``quote_item``).

    >>> quote_item("my app"), quote_item('"1.2.3.4"'), quote_item("1.2.3.4")
    ('"my app"', '"1.2.3.4"', '1.2.3.4')
    """
    if " " in item and item[:1] not in ('"', "'"):
        return f'"{item}"'
    return item


@dataclass(frozen=True, slots=True)
class Expanded:
    """A condition after expansion.

    Attributes:
        text: the self-contained filter.
        unresolved: names that could not be resolved (unknown macros, a list where a check belongs), kept as
            written in :attr:`text`; empty when the expansion is complete.
    """

    text: str
    unresolved: tuple[str, ...]


class Expander:
    """Expands conditions against fixed lists and macros; each macro is expanded once and reused."""

    def __init__(
        self,
        lists: Mapping[str, Sequence[str]],
        macros: Mapping[str, str],
        *,
        describe_macro: Callable[[str], str] = lambda name: f"macro '{name}'",
        macro_path: Callable[[str], str | None] = lambda name: None,
        visible: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.lists = lists
        self.macros = macros
        self.describe_macro = describe_macro
        self.macro_path = macro_path
        self.visible = visible
        self.notes: list[str] = []
        self._items: dict[str, list[str]] = {}
        self._done: dict[str, Expanded] = {}
        self._active: list[str] = []

    def list_items(self, name: str) -> list[str]:
        items = self._items.get(name)
        if items is None:
            items = self._items[name] = [quote_item(item) for item in self.lists[name]]
        return items

    def macro(self, name: str) -> Expanded:
        done = self._done.get(name)
        if done is not None:
            return done
        if name in self._active:
            chain = " -> ".join([*self._active[self._active.index(name) :], name])
            raise RuleError(
                f"{self.describe_macro(name)}: macros refer to each other in a cycle: {chain}",
                path=self.macro_path(name),
            )
        self._active.append(name)
        try:
            done = self.condition(self.macros[name], self.describe_macro(name), macro=name, path=self.macro_path(name))
        finally:
            self._active.pop()
        self._done[name] = done
        return done

    def condition(self, text: str, owner: str, *, macro: str | None = None, path: str | None = None) -> Expanded:
        parser = _Parser(text.strip(BLANKS), self, owner, macro, path)
        try:
            expanded = parser.run()
        except RecursionError:
            raise RuleError(f"{owner}: the condition is nested too deeply to expand", path=path) from None
        return Expanded(expanded, tuple(parser.unresolved))


class _Parser:
    """One pass over a condition along libsinsp's grammar, copying it and splicing in macros and lists.

    The output is built as a list of pieces (untouched spans of the input between substitutions) joined once at
    the end, so a 10,000-item list costs one join, not 10,000 string concatenations.
    """

    __slots__ = ("_copied", "_expander", "_i", "_macro", "_out", "_owner", "_path", "_s", "unresolved")

    def __init__(self, text: str, expander: Expander, owner: str, macro: str | None, path: str | None) -> None:
        self._s = text
        self._i = 0
        self._out: list[str] = []
        self._copied = 0
        self._expander = expander
        self._owner = owner
        self._macro = macro
        self._path = path
        self.unresolved: dict[str, None] = {}

    def run(self) -> str:
        if not self._s:
            raise RuleError(f"{self._owner}: the condition is empty", path=self._path)
        self._or()
        self._blank()
        if self._i != len(self._s):
            self._fail("unexpected text, expected 'and', 'or' or the end")
        self._out.append(self._s[self._copied :])
        return "".join(self._out)

    # -- grammar ---------------------------------------------------------------------------------------------

    def _or(self) -> None:
        self._blank()
        self._and()
        self._blank()
        while self._s.startswith("or", self._i):
            self._i += 2
            if self._blank():
                self._and()
            elif self._eat("("):
                self._embedded()
            else:
                self._fail("expected a blank or '(' after 'or'")
            self._blank()

    def _and(self) -> None:
        self._blank()
        self._not()
        self._blank()
        while self._s.startswith("and", self._i):
            self._i += 3
            if self._blank():
                self._not()
            elif self._eat("("):
                self._embedded()
            else:
                self._fail("expected a blank or '(' after 'and'")
            self._blank()

    def _not(self) -> None:
        self._blank()
        while match := _RX_NOT.match(self._s, self._i):
            self._i = match.end()
        if self._eat("not("):
            self._embedded()
        else:
            self._check()

    def _embedded(self) -> None:
        self._or()
        self._blank()
        if not self._eat(")"):
            self._fail("expected ')'")

    def _check(self) -> None:
        self._blank()
        if self._eat("("):
            self._embedded()
            return
        start = self._i
        if match := _RX_FIELD.match(self._s, start):
            self._i = match.end()
            self._field_argument()
            self._condition(start)
            return
        if match := _RX_IDENTIFIER.match(self._s, start):
            self._i = match.end()
            if self._eat("("):  # a field transformer such as tolower(proc.name)
                self._transformer_rest()
                self._condition(start)
            else:
                self._identifier(match.group(), start, match.end())
            return
        self._fail("expected '(', a field check or a macro name")

    def _field_argument(self) -> None:
        # proc.aname[2], evt.arg["path"]
        if not self._eat("["):
            return
        if not (self._quoted() or self._regex(_RX_FIELD_ARG)):
            self._fail("expected a field argument")
        if not self._eat("]"):
            self._fail("expected ']'")

    def _transformer_rest(self) -> None:
        # after "tolower(": a field or another transformer, then ")"
        self._blank()
        match = _RX_IDENTIFIER.match(self._s, self._i)
        if match and self._s.startswith("(", match.end()) and not _RX_FIELD.match(self._s, self._i):
            self._i = match.end() + 1
            self._transformer_rest()
        elif match := _RX_FIELD.match(self._s, self._i):
            self._i = match.end()
            self._field_argument()
        else:
            self._fail("expected a field inside the transformer")
        self._blank()
        if not self._eat(")"):
            self._fail("expected ')' closing the transformer")

    def _transformer_value(self) -> bool:
        # val(proc.name), tolower(proc.name) on the right-hand side of a comparison
        match = _RX_IDENTIFIER.match(self._s, self._i)
        if match is None or not self._s.startswith("(", match.end()):
            return False
        self._i = match.end() + 1
        self._transformer_rest()
        return True

    def _condition(self, check_start: int) -> None:
        self._blank()
        s, i = self._s, self._i
        if s.startswith("exists", i):
            self._i += 6
            return
        for operator in _NUM_OPERATORS:
            if s.startswith(operator, i):
                self._i += len(operator)
                self._number_value()
                return
        for operator in _SYMBOL_OPERATORS:
            if s.startswith(operator, i):
                self._i += len(operator)
                self._string_value()
                return
        if match := _RX_WORD_OPERATOR.match(s, i):
            self._i = match.end()
            self._string_value()
            return
        for operator in LIST_OPERATORS:
            if s.startswith(operator, i):
                self._i += len(operator)
                self._list_value(check_start)
                return
        self._fail("expected a comparison operator")

    def _number_value(self) -> None:
        self._blank()
        if not (self._transformer_value() or self._regex(_RX_NUMBER)):
            self._fail("expected a number")

    def _string_value(self) -> None:
        self._blank()
        if self._transformer_value() or self._quoted():
            return
        start = self._i
        if not self._regex(_RX_BARE):
            self._fail("expected a value")
        word = self._s[start : self._i]
        if word in self._expander.lists:
            # Falco substitutes list names as text anywhere in a condition, so it does so here too.
            items = self._expander.list_items(word)
            self._replace(start, self._i, ", ".join(items))
            self._note(f"list '{word}' is used as a single value, not inside 'in (...)'")

    def _list_value(self, check_start: int) -> None:
        self._blank()
        if self._eat("("):
            self._value_list(check_start, self._i - 1)
            return
        if self._transformer_value():
            return
        start = self._i
        if not self._regex(_RX_IDENTIFIER):
            self._fail("expected '(' after 'in', 'intersects' or 'pmatch'")
        name = self._s[start : self._i]
        if name not in self._expander.lists:
            self._unresolved(name, f"unknown list '{name}' after an operator")
            return
        self._splice(check_start, start, self._i, self._expander.list_items(name), (name,))

    def _value_list(self, check_start: int, opened: int) -> None:
        values: list[tuple[int, int, bool]] = []  # start, end, bare (only bare words can name a list)
        self._blank()
        value = self._plain_value()
        if value is not None:
            values.append(value)
            self._blank()
            while self._eat(","):
                self._blank()
                value = self._plain_value()
                if value is None:
                    self._fail("expected a value after ','")
                values.append(value)
                self._blank()
        if not self._eat(")"):
            self._fail("expected ',' or ')' in the value list")
        lists = self._expander.lists
        words = [self._s[start:end] for start, end, _ in values]
        named = tuple(word for word, (_, _, bare) in zip(words, values, strict=True) if bare and word in lists)
        if values and not named:
            return
        items: list[str] = []
        for word, (_, _, bare) in zip(words, values, strict=True):
            if bare and word in lists:
                items.extend(self._expander.list_items(word))
            else:
                items.append(word)
        self._splice(check_start, opened, self._i, items, named)

    def _splice(self, check_start: int, start: int, end: int, items: list[str], named: tuple[str, ...]) -> None:
        """Write ``(items)`` over ``start:end``; with no items, replace the whole check with ALWAYS_FALSE."""
        if items:
            self._replace(start, end, "(" + ", ".join(items) + ")")
            return
        self._replace(check_start, end, ALWAYS_FALSE)
        what = "empty list " + ", ".join(f"'{name}'" for name in named) if named else "an empty value list"
        self._note(f"{what}: the check '{self._s[check_start:end]}' never matches; written as {ALWAYS_FALSE}")

    def _identifier(self, name: str, start: int, end: int) -> None:
        expander = self._expander
        if name in expander.macros:
            if self._macro is not None and expander.visible is not None and not expander.visible(self._macro, name):
                self._note(f"uses macro '{name}', which is defined after it (Falco rejects this: undefined macro)")
            expanded = expander.macro(name)
            self._replace(start, end, "(" + expanded.text + ")")
            for inner in expanded.unresolved:
                self.unresolved[inner] = None
        elif name in expander.lists:
            self._unresolved(name, f"list '{name}' stands where a check belongs; kept as written")
        else:
            self._unresolved(name, f"unknown macro '{name}'; kept as written")

    # -- lexing and output -----------------------------------------------------------------------------------

    def _blank(self) -> bool:
        s, i, n = self._s, self._i, len(self._s)
        while i < n and s[i] in BLANKS:
            i += 1
        found = i != self._i
        self._i = i
        return found

    def _eat(self, text: str) -> bool:
        if self._s.startswith(text, self._i):
            self._i += len(text)
            return True
        return False

    def _regex(self, rx: re.Pattern[str]) -> bool:
        match = rx.match(self._s, self._i)
        if match is None:
            return False
        self._i = match.end()
        return True

    def _quoted(self) -> bool:
        # "a \"b\" c" or 'x': ends at the first delimiter not preceded by a backslash (libsinsp's rule)
        s, i = self._s, self._i
        if i >= len(s) or s[i] not in "\"'":
            return False
        j = i + 1
        while (k := s.find(s[i], j)) >= 0:
            if s[k - 1] != "\\":
                self._i = k + 1
                return True
            j = k + 1
        self._fail("unterminated quoted string")

    def _plain_value(self) -> tuple[int, int, bool] | None:
        start = self._i
        if self._quoted():
            return start, self._i, False
        if self._regex(_RX_BARE):
            return start, self._i, True
        return None

    def _replace(self, start: int, end: int, text: str) -> None:
        self._out.append(self._s[self._copied : start])
        self._out.append(text)
        self._copied = end

    def _note(self, message: str) -> None:
        self._expander.notes.append(f"{self._owner}: {message}")

    def _unresolved(self, name: str, message: str) -> None:
        if name not in self.unresolved:
            self.unresolved[name] = None
            self._note(message)

    def _fail(self, why: str) -> NoReturn:
        s, i = self._s, min(self._i, len(self._s))
        line = s.count("\n", 0, i) + 1
        column = i - (s.rfind("\n", 0, i) + 1) + 1
        near = s[i : i + 30] or "the end"
        raise RuleError(
            f"{self._owner}: cannot parse the condition at line {line}, column {column}: {why} (near {near!r})",
            path=self._path,
        )


def expand_condition(condition: str, lists: Mapping[str, Sequence[str]], macros: Mapping[str, str]) -> str:
    """Expand one condition into a self-contained filter.

    Macros (identifiers where a check may stand) are replaced by their own expansion in parentheses; list names
    inside ``in (...)``, ``intersects (...)`` and ``pmatch (...)`` by their items joined with ``", "``. Items are
    final: pass lists as :attr:`RuleSet.lists` holds them (nested lists already resolved).

    >>> expand_condition("tor and fd.rip in (exits, 9.9.9.9)", {"exits": ['"1.2.3.4"']}, {"tor": "evt.type=connect"})
    '(evt.type=connect) and fd.rip in ("1.2.3.4", 9.9.9.9)'
    >>> expand_condition("fd.rip in (none)", {"none": []}, {})
    '(evt.num = 0 and evt.num != 0)'

    Args:
        condition: a Falco condition.
        lists: list name → items as they should appear in the filter.
        macros: macro name → condition as written (expanded recursively).

    Returns:
        The expanded condition.

    Raises:
        RuleError: the condition cannot be parsed, macros form a cycle, or it uses a name that is neither a
            macro nor a list.
    """
    expander = Expander(lists, macros)
    expanded = expander.condition(condition, "condition")
    if expanded.unresolved:
        names = ", ".join(f"'{name}'" for name in expanded.unresolved)
        raise RuleError(f"condition: cannot expand {names}: neither a known macro nor a list")
    return expanded.text
