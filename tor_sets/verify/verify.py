"""Replay labelled connections through real engines and say which rule fired for what.

Exports :class:`RuleVerdict`, :class:`Verdict`, :func:`rule_expectation`, :func:`outbound_role`, :func:`judge`
(pure: what each rule matched in, verdicts out), :func:`verify` (a scenario, rules files and an engine in, a
:class:`Verdict` value out: ``.ok``, and for every rule the expected, fired, missed and false-alarm connections),
:func:`disagreements` (two engines' replays compared event by event) and :func:`format_verdicts` (a table for
people). A failed verification is a value, not an exception; engine failures raise.

Validating a rules text before it is written (``tor-sets build --validate``, ``tor-sets refresh``) is the same
seam without a capture: :func:`pick_validator` chooses the engine, :func:`validate_text` asks it.

Every engine takes the rules files through one seam (:meth:`tor_sets.engines.Engine.replay`): real Falco runs
them as they are, with ``rule_matching: all``; the sysdig engines expand each rule themselves. Matches are tied
to connections by the event's timestamp, the label every engine shares.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tor_sets import engines
from tor_sets.engines import Engine, Plugin, Replay
from tor_sets.engines.base import Validation
from tor_sets.errors import EngineError, EngineUnavailable, RuleError
from tor_sets.falco.generate import OUTBOUND_RELAY_RULE
from tor_sets.falco.load import LoadedRule, RuleSet, load_rules
from tor_sets.falco.model import Profile
from tor_sets.relays import Role
from tor_sets.verify.scenarios import Expectation, Scenario, write_scenario

__all__ = [
    "RuleVerdict",
    "Verdict",
    "disagreements",
    "format_verdicts",
    "judge",
    "outbound_role",
    "pick_validator",
    "rule_expectation",
    "validate_text",
    "verify",
]

_FIELDS = ("evt.type", "fd.cip", "fd.sip", "fd.cport", "fd.sport", "proc.name", "evt.res")
_SHOWN = 10


def rule_expectation(rule: LoadedRule) -> Expectation | None:
    """Which kind of connection a rule is meant to alert on, read from its expanded condition.

    A rule on ``connect`` watches outbound connections, one on ``accept``/``accept4`` inbound ones.
    """
    text = rule.expanded
    if re.search(r"\baccept4?\b", text):
        return Expectation.INBOUND
    if re.search(r"\bconnect\b", text):
        return Expectation.OUTBOUND
    return None


def outbound_role(rules: RuleSet) -> Role:
    """What the file's outbound rule watches: every relay for tor-sets' relay rule, else entry relays."""
    return Role.RELAY if OUTBOUND_RELAY_RULE in rules.rules else Role.ENTRY


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """How one rule did on one engine."""

    engine: str
    rule: str
    expectation: str | None
    expected: int
    fired: int
    missed: tuple[str, ...] = ()
    false_alarms: tuple[str, ...] = ()
    problem: str | None = None  # why the rule could not be checked (unexpandable condition ...)

    @property
    def ok(self) -> bool:
        return not self.missed and not self.false_alarms and self.problem is None

    def to_json(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "rule": self.rule,
            "expectation": self.expectation,
            "expected": self.expected,
            "fired": self.fired,
            "missed": len(self.missed),
            "false_alarms": len(self.false_alarms),
            "missed_examples": list(self.missed[:_SHOWN]),
            "false_alarm_examples": list(self.false_alarms[:_SHOWN]),
            "problem": self.problem,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """Every rule's verdict on one engine, plus what was replayed."""

    engine: str
    engine_version: str
    rules: tuple[RuleVerdict, ...]
    connections: int
    positives: int
    wall_s: float
    uncovered: tuple[str, ...] = field(default=())  # expectations no rule of the file watches

    @property
    def ok(self) -> bool:
        return bool(self.rules) and all(r.ok for r in self.rules) and not self.uncovered

    def to_json(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "connections": self.connections,
            "positives": self.positives,
            "wall_s": round(self.wall_s, 3),
            "uncovered": list(self.uncovered),
            "rules": [r.to_json() for r in self.rules],
            "ok": self.ok,
        }


def judge(
    engine: str,
    fired: Mapping[str, frozenset[int]],
    rules: Sequence[LoadedRule],
    scenario: Scenario,
    problems: Mapping[str, str] | None = None,
    taken: Mapping[int, str] | None = None,
) -> list[RuleVerdict]:
    """Verdicts for every rule, from the timestamps each rule fired on.

    A connection counts as missed when no rule of its kind fired on it, so files that split one kind over several
    rules (per family, like the 2022 tool's) are judged as a whole. A rule in ``problems`` could not be evaluated
    by the engine: its verdict says why, and it takes no part in the union. ``taken`` names, per event, a rule
    outside the judged ones that alerted on it (which, under ``rule_matching: first``, explains a miss).
    """
    problems = problems or {}
    taken = taken or {}
    by_ts = scenario.by_ts()

    def describe(ts: int) -> str:
        lab = by_ts.get(ts)
        text = lab.describe() if lab else f"an event at {ts} that is no labelled connection"
        return f"{text} (taken by rule {taken[ts]!r})" if ts in taken else text

    evaluated = [rule for rule in rules if rule.name not in problems]
    kinds = {rule.name: rule_expectation(rule) for rule in evaluated}
    union: dict[Expectation, set[int]] = {}
    for rule in evaluated:
        kind = kinds[rule.name]
        if kind is not None:
            union.setdefault(kind, set()).update(fired.get(rule.name, frozenset()))
    out = [
        RuleVerdict(engine, rule.name, None, 0, 0, problem=problems[rule.name])
        for rule in rules
        if rule.name in problems
    ]
    for rule in evaluated:
        kind = kinds[rule.name]
        hits = fired.get(rule.name, frozenset())
        expected = scenario.expected(kind) if kind else frozenset()
        missed = sorted(expected - union.get(kind, set())) if kind else []
        false = sorted(hits - expected)
        out.append(
            RuleVerdict(
                engine=engine,
                rule=rule.name,
                expectation=kind.value if kind else None,
                expected=len(expected),
                fired=len(hits),
                missed=tuple(describe(ts) for ts in missed),
                false_alarms=tuple(describe(ts) for ts in false),
            )
        )
    return out


def verify(
    rules: Sequence[Path],
    scenario: Scenario,
    engine: Engine,
    *,
    workdir: Path | None = None,
    timeout: float = 600,
    expect: Sequence[Expectation] = (),
    plugins: Sequence[Plugin] = (),
    before: Sequence[Path] = (),
    rule_matching: str = "all",
) -> Verdict:
    """Replay ``scenario`` through ``engine`` against rules files and judge every enabled syscall rule.

    Args:
        rules: the rules files judged, loaded in this order (each engine loads them its own way).
        before: rules files loaded before them and not judged, e.g. Falco's default ruleset: with
            ``rule_matching="first"`` a rule of theirs that matches an event first takes it from ours, which the
            verdict then reports as missed.
        rule_matching: Falco's ``rule_matching`` (``all``, or ``first``, Falco's default).
        scenario: labelled connections (:func:`tor_sets.verify.scenarios.make_scenario`).
        engine: a real engine (:mod:`tor_sets.engines`).
        workdir: where to write the capture (``scenario.scap``, kept); a temporary folder by default.
        timeout: seconds before an engine process is killed.
        expect: kinds of connection some rule must watch (a file without such a rule fails).
        plugins: plugins the rules need.

    Raises:
        RuleError: the rules do not load.
        EngineError: the engine failed (not: the rules missed something, which the verdict reports).
    """
    ruleset: RuleSet = load_rules(*rules)
    checked = list(ruleset.syscall_rules)
    loaded = [*before, *rules]
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tor-sets-verify-")))
        folder.mkdir(parents=True, exist_ok=True)
        capture = folder / "scenario.scap"
        write_scenario(scenario, capture)
        replay = engine.replay(
            capture, loaded, fields=_FIELDS, plugins=plugins, rule_matching=rule_matching, timeout=timeout
        )
    fired = {rule.name: replay.fired(rule.name) for rule in checked}
    problems = {name: why for name, why in replay.problems.items() if name in fired}
    taken = {m.ts_ns: name for name, matches in replay.hits.items() if name not in fired for m in matches}
    verdicts = judge(engine.name, fired, checked, scenario, problems, taken)
    watched = {v.expectation for v in verdicts}
    uncovered = tuple(f"no rule watches {kind.value} connections" for kind in expect if kind.value not in watched)
    counts = scenario.counts()
    return Verdict(
        engine=engine.name,
        engine_version=engine.version(),
        rules=tuple(verdicts),
        connections=counts["connections"],
        positives=counts["positive"],
        wall_s=replay.wall_s,
        uncovered=uncovered,
    )


def disagreements(first: Replay, second: Replay, describe: Callable[[int], str] | None = None) -> list[str]:
    """Every event on which two engines' replays of the same capture and rules disagree, rule by rule.

    An event counts when one engine matched it for a rule and the other did not; rules one engine could not
    evaluate (:attr:`Replay.problems`) and rules only one engine reports are named too. Empty: they agree.

    >>> from tor_sets.engines import Match, Replay
    >>> a = Replay("falco", {"r": (Match(1, "connect"), Match(2, "connect"))})
    >>> b = Replay("sysdig", {"r": (Match(1, "connect"),)})
    >>> disagreements(a, b)
    ["rule 'r': the event at 2 matched on falco only"]
    """
    name = describe or (lambda ts: f"the event at {ts}")
    found = []
    for rule in sorted(set(first.hits) | set(second.hits) | set(first.problems) | set(second.problems)):
        for replay in (first, second):
            if rule in replay.problems:
                found.append(f"rule {rule!r}: {replay.engine} cannot evaluate it: {replay.problems[rule]}")
        if rule in first.problems or rule in second.problems:
            continue
        if (rule in first.hits) != (rule in second.hits):
            only = first if rule in first.hits else second
            found.append(f"rule {rule!r}: only {only.engine} knows it")
            continue
        a, b = first.fired(rule), second.fired(rule)
        found += [f"rule {rule!r}: {name(ts)} matched on {first.engine} only" for ts in sorted(a - b)]
        found += [f"rule {rule!r}: {name(ts)} matched on {second.engine} only" for ts in sorted(b - a)]
    return found


def pick_validator(name: str | None, *, profile: Profile, required: bool) -> Engine | None:
    """The engine to validate with: ``name``, else the best present for the rules' profile.

    Real Falco first. The 2022 engine (sysdig-legacy) rejects IPv6 networks, so it only validates legacy-profile
    rules unless asked for by name. Rules whose outputs name container fields (profiles before Falco 0.41) do not
    load in Falco 0.41 and later without the container plugin, so they are validated by the sysdig builds, in
    whose libs those fields are built in.

    Raises:
        EngineUnavailable: ``required`` and no suitable engine is present (or ``name`` is not).
    """
    if name is not None:
        engine = engines.get_engine(name)
        engine.check()
        return engine
    order = [n for n in engines.PREFERENCE if n != "sysdig-legacy"]
    if profile.container_fields:
        order = [n for n in order if not issubclass(engines.ENGINES[n], engines.FalcoEngine)]
    if profile.name == "legacy":
        order.insert(0, "sysdig-legacy")
    reasons = []
    for candidate in order:
        engine = engines.get_engine(candidate)
        try:
            engine.check()
        except EngineError as exc:  # unavailable, or its check itself failed (e.g. a docker daemon that hangs)
            reasons.append(str(exc))
            continue
        return engine
    if required:
        raise EngineUnavailable("no engine to validate with: " + "; ".join(reasons))
    return None


def validate_text(text: str, engine: Engine, *, plugins: Sequence[Plugin] = ()) -> Validation:
    """Have ``engine`` load a rules text (``falco -V`` on real Falco) and return its verdict.

    Raises:
        RuleError: it does not load; the message starts with the engine's name.
        EngineError: the engine failed otherwise.
    """
    with tempfile.TemporaryDirectory(prefix="tor-sets-validate-") as tmp:
        path = Path(tmp) / "tor_rules.yaml"
        path.write_text(text, encoding="utf-8")
        (verdict,) = engine.validate([path], plugins=plugins)
    if not verdict.ok:
        first = verdict.message.splitlines()[0] if verdict.message else "no message"
        raise RuleError(f"{engine.name}: {first.replace(str(path), 'the rules')}")
    return verdict


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    """A table for people: one row per engine and rule, then the first missed connections.

    Where a file splits one kind over several rules (the 2022 tool's per-family files), a connection is missed when
    none of them fired, so those rules are shown with their own fired and false-alarm counts and one row more for
    all of them together, which carries the misses (listed once, not once per rule).
    """
    header = f"{'engine':<21} {'rule':<54} {'expected':>8} {'fired':>6} {'missed':>6} {'false':>6}  result"
    lines = [header, "-" * len(header)]
    notes: list[str] = []

    def row(engine: str, name: str, expected: object, fired: int, missed: object, false: int, result: str) -> str:
        return f"{engine:<21} {name[:54]:<54} {expected!s:>8} {fired:>6} {missed!s:>6} {false:>6}  {result}"

    for verdict in verdicts:
        kinds: dict[str | None, list[RuleVerdict]] = {}
        for r in verdict.rules:
            kinds.setdefault(None if r.problem else r.expectation, []).append(r)
        for r in verdict.rules:
            shared = not r.problem and r.expectation is not None and len(kinds[r.expectation]) > 1
            if r.problem:
                notes.append(f"{verdict.engine} / {r.rule}: {r.problem}")
            if shared:
                result = "ok" if not r.false_alarms else "FAIL"
                lines.append(row(verdict.engine, r.rule, "", r.fired, "", len(r.false_alarms), result))
            else:
                result = "ok" if r.ok else ("CANNOT CHECK" if r.problem else "FAIL")
                lines.append(
                    row(verdict.engine, r.rule, r.expected, r.fired, len(r.missed), len(r.false_alarms), result)
                )
                notes.extend(f"{verdict.engine} / {r.rule}: missed {m}" for m in r.missed[:_SHOWN])
            notes.extend(f"{verdict.engine} / {r.rule}: false alarm on {m}" for m in r.false_alarms[:_SHOWN])
        for kind, group in kinds.items():
            if kind is None or len(group) < 2:
                continue
            name = f"  all {len(group)} {kind} rules"
            first = group[0]
            ok = not first.missed and not any(r.false_alarms for r in group)
            lines.append(
                row(
                    verdict.engine,
                    name,
                    first.expected,
                    sum(r.fired for r in group),
                    len(first.missed),
                    sum(len(r.false_alarms) for r in group),
                    "ok" if ok else "FAIL",
                )
            )
            notes.extend(f"{verdict.engine} / the {kind} rules: missed {m}" for m in first.missed[:_SHOWN])
        notes.extend(f"{verdict.engine}: {u}" for u in verdict.uncovered)

    def outcome(verdict: Verdict) -> str:
        if verdict.ok:
            return "PASS"
        missed = sum(len(r.missed) for r in _one_per_kind(verdict.rules))
        false = sum(len(r.false_alarms) for r in verdict.rules)
        return f"FAIL ({missed} missed, {false} false alarms)"

    summary = "\n".join(
        f"{v.engine} {v.engine_version}: {v.connections} connections ({v.positives} Tor), {outcome(v)}"
        for v in verdicts
    )
    return "\n".join([*lines, "", *notes, *([""] if notes else []), summary]) + "\n"


def _one_per_kind(rules: Sequence[RuleVerdict]) -> list[RuleVerdict]:
    """One verdict per kind of connection (rules of one kind share their misses), and every unchecked rule."""
    seen: set[str] = set()
    out = []
    for r in rules:
        if r.problem or r.expectation is None or r.expectation not in seen:
            out.append(r)
        if r.expectation is not None and not r.problem:
            seen.add(r.expectation)
    return out
