"""Verification's judging without root or engines: judge(), verify() and disagreements() on the fake engine.

Two kinds of fake: one answering from a table the test writes (exact control over what "fired"), and one that
evaluates the rules' expanded conditions on the capture verify() wrote (tests/support/conditions.py), which takes
real rules files from rules text to verdict: the project's rules pass, broken ones fail and name their misses.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tests.support.conditions import evaluating_engine
from tests.support.scap_reader import connections
from tor_sets.build import BuildOptions, build
from tor_sets.engines import FakeEngine, Match, Replay
from tor_sets.errors import EngineUnavailable, RuleError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RELAY_RULE, OUTBOUND_RULE, RulesOptions
from tor_sets.falco.legacy2022 import render_2022
from tor_sets.falco.load import load_rules
from tor_sets.relays import Role, Snapshot, classify
from tor_sets.verify import (
    Expectation,
    Labelled,
    RuleVerdict,
    Scenario,
    Verdict,
    disagreements,
    format_verdicts,
    judge,
    make_scenario,
    outbound_role,
    rule_expectation,
    validate_text,
    verify,
)
from tor_sets.verify.capture import Connection

HOST = ipaddress.ip_address("10.20.0.5")
ENTRY = ipaddress.ip_address("198.51.100.1")
ENTRY_2 = ipaddress.ip_address("198.51.100.2")
EXIT = ipaddress.ip_address("203.0.113.9")
PUBLIC = ipaddress.ip_address("192.0.32.7")

#: the smallest rules file of the project's shape: one outbound rule, one inbound rule
RULES = f"""\
- rule: {OUTBOUND_RULE}
  desc: d
  condition: evt.type = connect and fd.sip in ({ENTRY}, {ENTRY_2})
  output: o
  priority: WARNING
- rule: {INBOUND_RULE}
  desc: d
  condition: evt.type in (accept, accept4) and fd.cip in ({EXIT})
  output: o
  priority: WARNING
"""


def connect(ts: int, server: ipaddress.IPv4Address | ipaddress.IPv6Address, result: int = 0) -> Connection:
    return Connection("connect", HOST, 40000, server, 443, ts, 4101, result)


def accept(ts: int, client: ipaddress.IPv4Address | ipaddress.IPv6Address, kind: str = "accept4") -> Connection:
    return Connection(kind, client, 30000, HOST, 443, ts, 4103)  # type: ignore[arg-type]


#: two outbound and one inbound positive, three negatives
SCENARIO = Scenario(
    (
        Labelled(connect(1000, ENTRY), frozenset({Expectation.OUTBOUND}), "entry relay"),
        Labelled(connect(2000, ENTRY_2, -115), frozenset({Expectation.OUTBOUND}), "entry relay, pending"),
        Labelled(accept(3000, EXIT), frozenset({Expectation.INBOUND}), "exit relay"),
        Labelled(connect(4000, PUBLIC), frozenset(), "public non-Tor address"),
        Labelled(connect(5000, ENTRY, -111), frozenset(), "failed connect to a relay"),
        Labelled(accept(6000, PUBLIC, "accept"), frozenset(), "public non-Tor address"),
    )
)
TRUTH = {OUTBOUND_RULE: [1000, 2000], INBOUND_RULE: [3000]}


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "tor_rules.yaml"
    path.write_text(RULES)
    return path


def loaded(text: str = RULES) -> list:
    return list(load_rules(text).rules.values())


def by_rule(verdicts: list[RuleVerdict] | tuple[RuleVerdict, ...]) -> dict[str, RuleVerdict]:
    return {v.rule: v for v in verdicts}


# --- judge: pure ----------------------------------------------------------------------------------------------


def test_rule_kinds_are_read_from_the_expanded_condition() -> None:
    kinds = {rule.name: rule_expectation(rule) for rule in loaded()}
    assert kinds == {OUTBOUND_RULE: Expectation.OUTBOUND, INBOUND_RULE: Expectation.INBOUND}
    (other,) = loaded("- rule: r\n  desc: d\n  condition: evt.type = open\n  output: o\n  priority: INFO\n")
    assert rule_expectation(other) is None


def test_every_expected_connection_fired_and_nothing_else_is_ok() -> None:
    fired = {name: frozenset(ts) for name, ts in TRUTH.items()}
    verdicts = by_rule(judge("fake", fired, loaded(), SCENARIO))
    outbound, inbound = verdicts[OUTBOUND_RULE], verdicts[INBOUND_RULE]
    assert outbound.ok and inbound.ok
    assert (outbound.expectation, outbound.expected, outbound.fired) == ("outbound", 2, 2)
    assert (inbound.expectation, inbound.expected, inbound.fired) == ("inbound", 1, 1)


def test_a_missed_connection_is_named_with_its_label() -> None:
    fired = {OUTBOUND_RULE: frozenset({1000}), INBOUND_RULE: frozenset({3000})}
    outbound = by_rule(judge("fake", fired, loaded(), SCENARIO))[OUTBOUND_RULE]
    assert not outbound.ok
    assert outbound.missed == (f"connect to {ENTRY_2} (res -115) by pid 4101: entry relay, pending",)
    assert outbound.false_alarms == ()


def test_an_alert_on_a_negative_is_a_false_alarm_named_with_its_label() -> None:
    fired = {OUTBOUND_RULE: frozenset({1000, 2000, 5000}), INBOUND_RULE: frozenset({3000, 6000})}
    verdicts = by_rule(judge("fake", fired, loaded(), SCENARIO))
    assert verdicts[OUTBOUND_RULE].false_alarms == (
        f"connect to {ENTRY} (res -111) by pid 4101: failed connect to a relay",
    )
    assert verdicts[INBOUND_RULE].false_alarms == (f"accept from {PUBLIC} on port 443: public non-Tor address",)
    assert not verdicts[OUTBOUND_RULE].ok and not verdicts[OUTBOUND_RULE].missed


def test_an_alert_on_no_labelled_connection_is_a_false_alarm_named_by_its_time() -> None:
    fired = {OUTBOUND_RULE: frozenset({1000, 2000, 1500}), INBOUND_RULE: frozenset({3000})}
    outbound = by_rule(judge("fake", fired, loaded(), SCENARIO))[OUTBOUND_RULE]
    assert outbound.false_alarms == ("an event at 1500 that is no labelled connection",)


def test_rules_of_one_kind_are_judged_together() -> None:
    """Files that split a kind over several rules (the 2022 tool's: one per family) miss nothing between them."""
    text = RULES.replace(f", {ENTRY_2})", ")") + (
        f"- rule: second outbound\n  desc: d\n  condition: evt.type = connect and fd.sip in ({ENTRY_2})\n"
        "  output: o\n  priority: WARNING\n"
    )
    fired = {
        OUTBOUND_RULE: frozenset({1000}),
        "second outbound": frozenset({2000}),
        INBOUND_RULE: frozenset({3000}),
    }
    verdicts = judge("fake", fired, loaded(text), SCENARIO)
    assert all(v.ok for v in verdicts) and [v.expected for v in verdicts] == [2, 1, 2]
    # ... but each rule answers for its own false alarms
    fired["second outbound"] = frozenset({2000, 4000})
    assert by_rule(judge("fake", fired, loaded(text), SCENARIO))["second outbound"].false_alarms


def test_a_rule_the_engine_cannot_evaluate_has_its_problem_and_covers_nothing() -> None:
    fired = {OUTBOUND_RULE: frozenset(), INBOUND_RULE: frozenset({3000})}
    problems = {OUTBOUND_RULE: "cannot expand: unknown_macro"}
    verdicts = by_rule(judge("fake", fired, loaded(), SCENARIO, problems))
    broken = verdicts[OUTBOUND_RULE]
    assert broken == RuleVerdict("fake", OUTBOUND_RULE, None, 0, 0, problem="cannot expand: unknown_macro")
    assert not broken.ok and verdicts[INBOUND_RULE].ok


def test_a_miss_taken_by_another_rule_names_that_rule() -> None:
    fired = {OUTBOUND_RULE: frozenset({1000, 2000}), INBOUND_RULE: frozenset()}
    inbound = by_rule(judge("fake", fired, loaded(), SCENARIO, taken={3000: "Unexpected inbound"}))[INBOUND_RULE]
    assert inbound.missed == (f"accept4 from {EXIT} on port 443: exit relay (taken by rule 'Unexpected inbound')",)


def test_a_rule_of_no_known_kind_expects_nothing_and_alarms_on_everything_it_fires_on() -> None:
    text = RULES + "- rule: opens\n  desc: d\n  condition: evt.type = open\n  output: o\n  priority: INFO\n"
    fired = {**{n: frozenset(ts) for n, ts in TRUTH.items()}, "opens": frozenset({4000})}
    opens = by_rule(judge("fake", fired, loaded(text), SCENARIO))["opens"]
    assert (opens.expectation, opens.expected, opens.missed) == (None, 0, ())
    assert len(opens.false_alarms) == 1 and not opens.ok


def test_json_shows_counts_and_at_most_ten_examples() -> None:
    many = RuleVerdict("fake", "r", "outbound", 20, 0, missed=tuple(f"m{i}" for i in range(20)))
    document = many.to_json()
    assert (document["missed"], len(document["missed_examples"]), document["ok"]) == (20, 10, False)  # type: ignore[arg-type]


# --- verify: the fake engine answering from a table -------------------------------------------------------------


def test_verify_passes_when_the_engine_fires_on_the_truth(rules: Path) -> None:
    engine = FakeEngine(lambda capture, ruleset: TRUTH, version="1.2.3")
    verdict = verify([rules], SCENARIO, engine)
    assert verdict.ok
    assert (verdict.engine, verdict.engine_version, verdict.connections, verdict.positives) == ("fake", "1.2.3", 6, 3)
    assert verdict.to_json()["ok"] is True
    (asked,) = engine.replays
    assert (asked.rules, asked.rule_matching) == ((rules,), "all")


def test_verify_replays_the_capture_of_the_scenario(rules: Path, tmp_path: Path) -> None:
    seen: list[list[int]] = []

    def hits(capture: Path, ruleset: object) -> dict[str, list[int]]:
        seen.append([r.ts_ns for r in connections(capture)])
        return TRUTH

    verify([rules], SCENARIO, FakeEngine(hits), workdir=tmp_path / "work")
    assert seen == [[lab.connection.ts_ns for lab in SCENARIO.connections]]
    assert (tmp_path / "work" / "scenario.scap").is_file()  # kept in the workdir


def test_a_miss_fails_the_verdict(rules: Path) -> None:
    verdict = verify([rules], SCENARIO, FakeEngine(lambda c, r: {**TRUTH, INBOUND_RULE: []}))
    assert not verdict.ok
    assert by_rule(verdict.rules)[INBOUND_RULE].missed == (f"accept4 from {EXIT} on port 443: exit relay",)


def test_only_enabled_syscall_rules_are_judged(rules: Path, tmp_path: Path) -> None:
    off = tmp_path / "off.yaml"
    off.write_text(f"- rule: {INBOUND_RULE}\n  enabled: false\n")
    verdict = verify([rules, off], SCENARIO, FakeEngine(lambda c, r: {OUTBOUND_RULE: TRUTH[OUTBOUND_RULE]}))
    assert [v.rule for v in verdict.rules] == [OUTBOUND_RULE] and verdict.ok


@pytest.mark.parametrize(
    ("expect", "uncovered"),
    [
        ((), ()),
        ((Expectation.OUTBOUND,), ()),
        ((Expectation.OUTBOUND, Expectation.INBOUND), ("no rule watches inbound connections",)),
    ],
    ids=["nothing-asked", "outbound-watched", "inbound-unwatched"],
)
def test_kinds_no_rule_watches_fail_the_verdict(tmp_path: Path, expect: tuple, uncovered: tuple) -> None:
    outbound_only = tmp_path / "outbound.yaml"
    outbound_only.write_text(RULES.split(f"- rule: {INBOUND_RULE}")[0])
    engine = FakeEngine(lambda c, r: {OUTBOUND_RULE: TRUTH[OUTBOUND_RULE]})
    verdict = verify([outbound_only], SCENARIO, engine, expect=expect)
    assert verdict.uncovered == uncovered
    assert verdict.ok == (not uncovered)


def test_a_file_with_no_rule_to_judge_fails(tmp_path: Path) -> None:
    empty = tmp_path / "lists.yaml"
    empty.write_text("- list: l\n  items: []\n")
    verdict = verify([empty], SCENARIO, FakeEngine())
    assert verdict.rules == () and not verdict.ok


def test_rules_loaded_before_take_events_first_and_the_miss_names_the_taker(rules: Path, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.yaml"
    upstream.write_text(
        "- rule: Unexpected inbound\n  desc: d\n  condition: evt.type in (accept, accept4)\n  output: o\n"
        "  priority: NOTICE\n"
    )
    engine = FakeEngine(lambda c, r: {**TRUTH, "Unexpected inbound": [3000, 6000]})
    verdict = verify([rules], SCENARIO, engine, before=[upstream], rule_matching="first")
    assert [asked.rules for asked in engine.replays] == [(upstream, rules)]
    assert [v.rule for v in verdict.rules] == [OUTBOUND_RULE, INBOUND_RULE]  # the upstream rule is not judged
    inbound = by_rule(verdict.rules)[INBOUND_RULE]
    assert inbound.missed == (f"accept4 from {EXIT} on port 443: exit relay (taken by rule 'Unexpected inbound')",)
    assert verify([rules], SCENARIO, engine, before=[upstream], rule_matching="all").ok


def test_problems_of_the_engine_reach_the_verdict_and_the_table(rules: Path) -> None:
    engine = FakeEngine(lambda c, r: TRUTH, problems={INBOUND_RULE: "cannot expand: tor_exit_relay_client"})
    verdict = verify([rules], SCENARIO, engine)
    assert not verdict.ok and by_rule(verdict.rules)[INBOUND_RULE].problem == "cannot expand: tor_exit_relay_client"
    table = format_verdicts([verdict])
    assert "CANNOT CHECK" in table and f"fake / {INBOUND_RULE}: cannot expand: tor_exit_relay_client" in table


def test_engine_failures_and_rules_that_do_not_load_raise(rules: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="fake: not here"):
        verify([rules], SCENARIO, FakeEngine(unavailable="not here"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: r\n")
    with pytest.raises(RuleError):
        verify([bad], SCENARIO, FakeEngine())


def test_the_table_shows_each_rule_then_what_it_missed_then_the_summary(rules: Path) -> None:
    good = verify([rules], SCENARIO, FakeEngine(lambda c, r: TRUTH))
    bad = verify([rules], SCENARIO, FakeEngine(lambda c, r: {**TRUTH, OUTBOUND_RULE: [1000, 4000]}))
    lines = format_verdicts([good, bad]).splitlines()
    assert lines[0].split() == ["engine", "rule", "expected", "fired", "missed", "false", "result"]
    rows = [line.split()[-1] for line in lines[2:6]]
    assert rows == ["ok", "ok", "FAIL", "ok"]
    assert f"fake / {OUTBOUND_RULE}: missed connect to {ENTRY_2} (res -115) by pid 4101: entry relay, pending" in lines
    assert (
        f"fake / {OUTBOUND_RULE}: false alarm on connect to {PUBLIC} (res 0) by pid 4101: public non-Tor address"
        in (lines)
    )
    assert lines[-2:] == [
        "fake 0.0.0-fake: 6 connections (3 Tor), PASS",
        "fake 0.0.0-fake: 6 connections (3 Tor), FAIL (1 missed, 1 false alarms)",
    ]


def test_the_table_lists_the_misses_of_rules_split_by_family_once_on_a_row_of_their_own(bundled, tmp_path) -> None:
    paths = []
    for name, text in sorted(render_2022(classify(bundled)).items()):
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    scenario = make_scenario(classify(bundled), lists=load_rules(*paths).lists)
    verdict = verify(paths, scenario, evaluating_engine())
    lines = format_verdicts([verdict]).splitlines()
    inbound = next(line.split() for line in lines if "all 2 inbound rules" in line)
    missed = len(next(v for v in verdict.rules if "ingress" in v.rule).missed)
    assert missed and inbound[-5:] == [
        str(len(scenario.expected(Expectation.INBOUND))),
        inbound[-4],
        str(missed),
        "0",
        "FAIL",
    ]
    assert next(line.split() for line in lines if "all 2 outbound rules" in line)[-3:] == ["0", "0", "ok"]
    assert sum("the inbound rules: missed accept4" in line for line in lines) == min(missed, 10)
    assert not any("(ingress): missed" in line for line in lines)  # not once per rule
    assert lines[-1].endswith(f"FAIL ({missed} missed, 0 false alarms)")


# --- verify end to end: the fake engine evaluating the rules on the capture --------------------------------------


def verify_built(snapshot: Snapshot, path: Path, **kwargs: object) -> tuple[Verdict, Scenario]:
    ruleset = load_rules(path)
    scenario = make_scenario(classify(snapshot), lists=ruleset.lists, outbound_role=outbound_role(ruleset), **kwargs)
    return verify([path], scenario, evaluating_engine()), scenario  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def good_text(bundled: Snapshot) -> str:
    return build(bundled).text


def test_the_projects_rules_pass(bundled: Snapshot, good_text: str, tmp_path: Path) -> None:
    path = tmp_path / "tor_rules.yaml"
    path.write_text(good_text)
    verdict, scenario = verify_built(bundled, path)
    assert verdict.ok, [r.to_json() for r in verdict.rules]
    rules = by_rule(verdict.rules)
    assert rules[OUTBOUND_RULE].fired == rules[OUTBOUND_RULE].expected > 400
    assert rules[INBOUND_RULE].fired == rules[INBOUND_RULE].expected > 400
    assert verdict.connections == len(scenario.connections) >= 1000


def test_rules_watching_every_relay_pass_against_every_relay(bundled: Snapshot, tmp_path: Path) -> None:
    path = tmp_path / "tor_rules.yaml"
    path.write_text(build(bundled, BuildOptions(rules=RulesOptions(roles=frozenset({Role.RELAY, Role.EXIT})))).text)
    verdict, _ = verify_built(bundled, path)
    assert verdict.ok and {v.rule for v in verdict.rules} == {OUTBOUND_RELAY_RULE, INBOUND_RULE}


def _dropped_exit_ipv6_list(text: str) -> str:
    start = text.index("- list: tor_exit_only_ipv6_addresses")
    end = text.index("\n\n", start)
    return text[:start] + "- list: tor_exit_only_ipv6_addresses\n  items: []" + text[end:]


#: (how the good rules are broken, the rule that must fail, what every miss must be)
BROKEN = {
    "without-accept4": (
        lambda text: text.replace("evt.type in (accept, accept4)", "evt.type = accept", 1),
        INBOUND_RULE,
        lambda miss: miss.startswith("accept4 from "),
    ),
    "exit-ipv6-list-dropped": (
        _dropped_exit_ipv6_list,
        INBOUND_RULE,
        lambda miss: ipaddress.ip_address(miss.split()[2]).version == 6,
    ),
    "client-field-for-the-server": (
        lambda text: text.replace("(fd.sip in (tor_entry_only", "(fd.cip in (tor_entry_only", 1),
        OUTBOUND_RULE,
        lambda miss: miss.startswith("connect to "),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_rules_fail_and_name_what_they_miss(
    case: str, bundled: Snapshot, good_text: str, tmp_path: Path
) -> None:
    breaks, rule, expected_miss = BROKEN[case]
    text = breaks(good_text)
    assert text != good_text
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    verdict, _ = verify_built(bundled, path)
    failing = by_rule(verdict.rules)[rule]
    assert not verdict.ok and failing.missed and not failing.false_alarms
    assert all(expected_miss(m) for m in failing.missed), failing.missed[:3]
    others = [v for v in verdict.rules if v.rule != rule]
    assert others and all(v.ok for v in others)


def test_the_2022_files_miss_accept4_and_nothing_else(bundled: Snapshot, tmp_path: Path) -> None:
    paths = []
    for name, text in sorted(render_2022(classify(bundled)).items()):
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    scenario = make_scenario(classify(bundled), lists=load_rules(*paths).lists)
    verdict = verify(paths, scenario, evaluating_engine())
    ingress = [v for v in verdict.rules if "ingress" in v.rule]
    egress = [v for v in verdict.rules if "egress" in v.rule]
    assert len(ingress) == len(egress) == 2
    assert all(v.missed and all(m.startswith("accept4 from") for m in v.missed) for v in ingress)
    assert not any(v.missed or v.false_alarms for v in egress)  # a failed connect has no tuple to match


def test_excluded_ranges_do_not_alert(bundled: Snapshot, tmp_path: Path) -> None:
    sets = classify(bundled)
    some = sorted(sets.family(Role.ENTRY, 4), key=int)[10]
    exclude = (ipaddress.ip_network(f"{some}/24", strict=False),)
    path = tmp_path / "tor_rules.yaml"
    path.write_text(build(bundled, BuildOptions(exclude=exclude)).text)
    verdict, scenario = verify_built(bundled, path, exclude=exclude)
    assert any("inside excluded range" in lab.label for lab in scenario.connections)
    assert verdict.ok
    # the same scenario against rules that forgot the exclusion: false alarms inside the range
    unexcluded = tmp_path / "unexcluded.yaml"
    unexcluded.write_text(build(bundled).text)
    verdict = verify([unexcluded], scenario, evaluating_engine())
    alarms = [m for v in verdict.rules for m in v.false_alarms]
    assert alarms and all("inside excluded range" in m for m in alarms)


# --- disagreements ----------------------------------------------------------------------------------------------


def replay(engine: str, hits: dict[str, tuple[int, ...]], problems: dict[str, str] | None = None) -> Replay:
    return Replay(
        engine, {rule: tuple(Match(ts, "connect") for ts in ts_ns) for rule, ts_ns in hits.items()}, problems or {}
    )


#: first replay, second replay, every disagreement named
DISAGREEMENTS = {
    "same-events": (replay("a", {"r": (1, 2)}), replay("b", {"r": (1, 2)}), []),
    "one-side-each": (
        replay("a", {"r": (1, 2)}),
        replay("b", {"r": (2, 3)}),
        ["rule 'r': the event at 1 matched on a only", "rule 'r': the event at 3 matched on b only"],
    ),
    "rule-known-to-one": (replay("a", {"r": (), "s": ()}), replay("b", {"r": ()}), ["rule 's': only a knows it"]),
    "cannot-evaluate": (
        replay("a", {"r": (1,)}),
        replay("b", {}, {"r": "cannot expand: m"}),
        ["rule 'r': b cannot evaluate it: cannot expand: m"],
    ),
}


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_disagreements_name_every_event_and_rule(case: str) -> None:
    first, second, expected = DISAGREEMENTS[case]
    assert disagreements(first, second) == expected


def test_disagreements_describe_events_as_asked() -> None:
    found = disagreements(replay("a", {"r": (1,)}), replay("b", {"r": ()}), lambda ts: f"connection #{ts}")
    assert found == ["rule 'r': connection #1 matched on a only"]


def test_fake_engines_disagree_where_their_hits_differ(rules: Path, tmp_path: Path) -> None:
    capture = tmp_path / "c.scap"
    one = FakeEngine(lambda c, r: TRUTH).replay(capture, [rules])
    other = FakeEngine(lambda c, r: {**TRUTH, INBOUND_RULE: [3000, 6000]}).replay(capture, [rules])
    by_ts = SCENARIO.by_ts()
    assert disagreements(one, other, lambda ts: by_ts[ts].describe()) == [
        f"rule {INBOUND_RULE!r}: accept from {PUBLIC} on port 443: public non-Tor address matched on fake only"
    ]


# --- validate_text ----------------------------------------------------------------------------------------------


def test_validate_text_returns_the_engines_verdict() -> None:
    verdict = validate_text(RULES, FakeEngine())
    assert verdict.ok and verdict.message == "Ok"


def test_validate_text_names_the_engine_and_hides_the_scratch_path() -> None:
    with pytest.raises(RuleError) as info:
        validate_text("- rule: r\n  condition: evt.type = connect\n", FakeEngine())
    message = str(info.value)
    assert message.startswith("fake: the rules: rule 'r': missing") and "tor-sets-validate-" not in message
