"""tor_sets.falco.expand: Falco conditions parsed along libsinsp's grammar and expanded into one filter."""

from __future__ import annotations

import doctest

import pytest

from tor_sets.errors import RuleError
from tor_sets.falco import expand
from tor_sets.falco.expand import ALWAYS_FALSE, expand_condition

LISTS: dict[str, list[str]] = {
    "tor_exits": ['"1.2.3.4"', '"5.6.7.8"'],
    "tor_exits_v6": ['"2001:db8::1"'],
    "shells": ["bash", "sh"],
    "spaced": ["my app", "bash", '"already quoted"'],
    "nothing": [],
}
MACROS: dict[str, str] = {
    "connect_exit": "evt.type = connect and evt.dir = <",
    "tor_connect": "connect_exit and fd.rip in (tor_exits)",
    "notable": "proc.name = tor",
    "andromeda": "proc.name = andromeda",
}

# condition → expansion, with LISTS and MACROS above
EXPANSIONS = [
    # nothing to expand: returned exactly as written, evt.dir included
    ("evt.type = connect and evt.dir = <", "evt.type = connect and evt.dir = <"),
    ("evt.type=connect and evt.dir=<", "evt.type=connect and evt.dir=<"),
    ("evt.rawres >= 0 or evt.res = EINPROGRESS", "evt.rawres >= 0 or evt.res = EINPROGRESS"),
    ("evt.type in (connect, accept, accept4)", "evt.type in (connect, accept, accept4)"),
    ("fd.rip exists and fd.sport != 0x1F", "fd.rip exists and fd.sport != 0x1F"),
    ("proc.aname[2] = sshd and evt.arg[0] = x", "proc.aname[2] = sshd and evt.arg[0] = x"),
    ("fd.sip = val(fd.cip)", "fd.sip = val(fd.cip)"),
    ("evt.type = connect\nand fd.rip exists", "evt.type = connect\nand fd.rip exists"),
    # macros, in parentheses, recursively
    ("connect_exit", "(evt.type = connect and evt.dir = <)"),
    ("not connect_exit", "not (evt.type = connect and evt.dir = <)"),
    ("not(connect_exit)", "not((evt.type = connect and evt.dir = <))"),
    ("fd.rip exists and(connect_exit)", "fd.rip exists and((evt.type = connect and evt.dir = <))"),
    ("tor_connect", '((evt.type = connect and evt.dir = <) and fd.rip in ("1.2.3.4", "5.6.7.8"))'),
    ("notable and andromeda", "(proc.name = tor) and (proc.name = andromeda)"),
    ("  connect_exit  ", "(evt.type = connect and evt.dir = <)"),
    # a macro's name as a value is a plain string, not a macro
    ("proc.name = connect_exit", "proc.name = connect_exit"),
    # lists inside in / intersects / pmatch, items joined with ", "
    ("fd.rip in (tor_exits)", 'fd.rip in ("1.2.3.4", "5.6.7.8")'),
    ("fd.rip in(tor_exits)", 'fd.rip in("1.2.3.4", "5.6.7.8")'),
    ("fd.rip in ( tor_exits , 9.9.9.9 )", 'fd.rip in ("1.2.3.4", "5.6.7.8", 9.9.9.9)'),
    ("fd.rip in (tor_exits, tor_exits_v6)", 'fd.rip in ("1.2.3.4", "5.6.7.8", "2001:db8::1")'),
    ("proc.name pmatch (shells)", "proc.name pmatch (bash, sh)"),
    ("proc.aname intersects (shells)", "proc.aname intersects (bash, sh)"),
    ("tolower(proc.name) in (shells)", "tolower(proc.name) in (bash, sh)"),
    ("fd.rip in tor_exits", 'fd.rip in ("1.2.3.4", "5.6.7.8")'),
    # items with a blank are double-quoted, as Falco does; quoted items stay as written
    ("proc.name in (spaced)", 'proc.name in ("my app", bash, "already quoted")'),
    # quoted text is never a list name
    ('proc.name in ("shells", shells)', 'proc.name in ("shells", bash, sh)'),
    ('proc.cmdline contains "tor_exits"', 'proc.cmdline contains "tor_exits"'),
    # empty lists: the check can never match; 'x in ()' does not parse on the 2022 engine
    ("fd.rip in (nothing)", ALWAYS_FALSE),
    ("fd.rip in ()", ALWAYS_FALSE),
    ("not fd.rip in (nothing) and connect_exit", f"not {ALWAYS_FALSE} and (evt.type = connect and evt.dir = <)"),
    ("fd.rip in (nothing, 9.9.9.9)", "fd.rip in (9.9.9.9)"),
    ("fd.rip in (nothing, nothing)", ALWAYS_FALSE),
]


@pytest.mark.parametrize(("condition", "expected"), EXPANSIONS)
def test_expand_condition(condition: str, expected: str) -> None:
    assert expand_condition(condition, LISTS, MACROS) == expected


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("connect_exit and mystery", "'mystery'"),
        ("shells", "'shells'"),  # a list where a check belongs
        ("fd.rip in unknown_list", "'unknown_list'"),
        ("(evt.type = connect", r"expected '\)'"),
        ("evt.type = connect)", "unexpected text"),
        ("evt.type connect", "comparison operator"),
        ('proc.name = "unterminated', "unterminated"),
        ("fd.rip in (a, )", "after ','"),
        ("", "empty"),
        ("evt.type = connect andx", "after 'and'"),
    ],
)
def test_expand_condition_errors(condition: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        expand_condition(condition, LISTS, MACROS)


def test_parse_error_names_line_and_column() -> None:
    with pytest.raises(RuleError, match=r"line 2, column 6"):
        expand_condition("evt.type = connect\nand (", {}, {})


def test_macro_cycle_is_an_error() -> None:
    macros = {"a": "b and evt.type = connect", "b": "proc.name = x or c", "c": "a"}
    with pytest.raises(RuleError, match=r"cycle: a -> b -> c -> a"):
        expand_condition("a", {}, macros)
    with pytest.raises(RuleError, match="cycle"):
        expand_condition("self_ref", {}, {"self_ref": "self_ref"})


def test_quoted_strings_with_escapes_are_skipped_whole() -> None:
    condition = r'proc.cmdline = "a \" shells (" and proc.name in (shells)'
    assert expand_condition(condition, LISTS, MACROS) == r'proc.cmdline = "a \" shells (" and proc.name in (bash, sh)'


def test_doctests() -> None:
    assert doctest.testmod(expand).failed == 0
