"""A tiny evaluator of expanded Falco conditions over a capture's connections: the brain of a fake engine.

TEST SUPPORT. :func:`evaluating_engine` is a :class:`~tor_sets.engines.FakeEngine` whose replays read the capture
with the tests' strict reader (tests/support/scap_reader.py) and evaluate each rule's expanded condition on every
connect, accept and accept4 exit in it, so that verification can be tested end to end (rules text → scenario →
capture → replay → verdict) without root or a real engine.

Only the part of the filter grammar that tor-sets' rules and the 2022 tool's files use is understood; anything else
raises ``ValueError`` naming it, so a test never passes on a condition the evaluator cannot read:

- ``and``, ``or``, ``not`` and parentheses;
- ``evt.type = X``, ``evt.type in (X, Y)``, ``evt.dir = <``, ``evt.rawres >= N``, ``evt.res = EINPROGRESS``,
  ``evt.num = 0`` (never true) and ``evt.num != 0``;
- ``fd.sip``, ``fd.cip``, ``fd.rip``, ``fd.lip`` with ``=`` or ``in (...)``, and ``fd.snet``, ``fd.cnet``,
  ``fd.rnet``, ``fd.lnet`` with ``in (...)``.

As on the real engines, a connect that failed (neither 0 nor EINPROGRESS) has no socket tuple, so every ``fd.*``
check is false on it, and ``evt.type`` names accept4 events ``accept4`` (the current libs). The local end is the
host's: the client of a connect, the server of an accept.

Example::

    engine = evaluating_engine()
    verdict = verify([rules], scenario, engine)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path

from tests.support.scap_reader import ConnectionRecord, connections
from tor_sets.engines import FakeEngine
from tor_sets.falco.load import RuleSet

Check = Callable[[ConnectionRecord], bool]

_TOKEN = re.compile(r"""\s*(\(|\)|,|>=|<=|!=|==|=|<|>|"[^"]*"|'[^']*'|[^\s(),=<>!"']+)""")
_EINPROGRESS = -115
_ADDRESS_FIELDS = {"fd.sip", "fd.cip", "fd.rip", "fd.lip"}
_NETWORK_FIELDS = {"fd.snet": "fd.sip", "fd.cnet": "fd.cip", "fd.rnet": "fd.rip", "fd.lnet": "fd.lip"}


def _tokens(text: str) -> list[str]:
    out = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"the fake evaluator cannot read {text[position : position + 30]!r}")
        out.append(match[1])
        position = match.end()
    return out


def _has_tuple(record: ConnectionRecord) -> bool:
    return record.kind != "connect" or record.result in (0, _EINPROGRESS)


def _address(record: ConnectionRecord, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    local, remote = (record.client, record.server) if record.kind == "connect" else (record.server, record.client)
    return {"fd.sip": record.server, "fd.cip": record.client, "fd.rip": remote, "fd.lip": local}[field]


def _value(token: str) -> str:
    return token[1:-1] if token[:1] in "\"'" else token


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.text = text

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ValueError(f"the fake evaluator ran out of condition: {self.text[:80]!r}")
        self.at += 1
        return token

    def expect(self, token: str) -> None:
        got = self.take()
        if got != token:
            raise ValueError(f"the fake evaluator expected {token!r}, got {got!r}")

    def condition(self) -> Check:
        check = self.any_of()
        if self.peek() is not None:
            raise ValueError(f"the fake evaluator cannot read {' '.join(self.tokens[self.at : self.at + 5])!r}")
        return check

    def any_of(self) -> Check:
        parts = [self.all_of()]
        while self.peek() == "or":
            self.take()
            parts.append(self.all_of())
        return parts[0] if len(parts) == 1 else lambda r: any(p(r) for p in parts)

    def all_of(self) -> Check:
        parts = [self.negation()]
        while self.peek() == "and":
            self.take()
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else lambda r: all(p(r) for p in parts)

    def negation(self) -> Check:
        if self.peek() == "not":
            self.take()
            inner = self.negation()
            return lambda r: not inner(r)
        if self.peek() == "(":
            self.take()
            inner = self.any_of()
            self.expect(")")
            return inner
        return self.check()

    def values(self) -> list[str]:
        self.expect("(")
        out = [_value(self.take())]
        while self.peek() == ",":
            self.take()
            out.append(_value(self.take()))
        self.expect(")")
        return out

    def check(self) -> Check:
        field, operator = self.take(), self.take()
        values = self.values() if operator == "in" else [_value(self.take())]
        return _check(field, operator, values)


def _check(field: str, operator: str, values: list[str]) -> Check:
    if field == "evt.type" and operator in ("=", "in"):
        kinds = frozenset(values)
        return lambda r: r.kind in kinds
    if (field, operator, values) == ("evt.dir", "=", ["<"]):
        return lambda r: True  # the reader yields exit events only
    if field == "evt.rawres" and operator == ">=":
        least = int(values[0])
        return lambda r: r.result >= least
    if (field, operator, values) == ("evt.res", "=", ["EINPROGRESS"]):
        return lambda r: r.result == _EINPROGRESS
    if field == "evt.num" and operator in ("=", "!=") and values == ["0"]:
        return (lambda r: False) if operator == "=" else (lambda r: True)
    if field in _ADDRESS_FIELDS and operator in ("=", "in"):
        addresses = frozenset(ipaddress.ip_address(v) for v in values)
        return lambda r: _has_tuple(r) and _address(r, field) in addresses
    if field in _NETWORK_FIELDS and operator == "in":
        networks = [ipaddress.ip_network(v) for v in values]
        side = _NETWORK_FIELDS[field]

        def inside(r: ConnectionRecord) -> bool:
            if not _has_tuple(r):
                return False
            address = _address(r, side)
            return any(address.version == n.version and address in n for n in networks)

        return inside
    raise ValueError(f"the fake evaluator does not know the check {field} {operator} {values[:3]}")


def compile_condition(text: str) -> Check:
    """A predicate over decoded connections equal to the expanded condition ``text``.

    Raises:
        ValueError: ``text`` uses something the evaluator does not know.
    """
    return _Parser(text).condition()


def matching(capture: Path, rules: RuleSet) -> dict[str, list[int]]:
    """For each enabled syscall rule, the timestamps of the capture's connections its expanded condition accepts."""
    records = list(connections(capture))
    out: dict[str, list[int]] = {}
    for rule in rules.syscall_rules:
        check = compile_condition(rule.expanded)
        out[rule.name] = [r.ts_ns for r in records if check(r)]
    return out


def evaluating_engine(**kwargs: object) -> FakeEngine:
    """A fake engine that evaluates the rules on the capture (see the module docstring); ``kwargs`` go to it."""
    return FakeEngine(matching, **kwargs)  # type: ignore[arg-type]
