"""The fake engine (tor_sets.engines.fake): a replay is what a real engine returns, answered from a function."""

from __future__ import annotations

from pathlib import Path

import pytest

from tor_sets.engines import ENGINES, FakeEngine, Match, Plugin
from tor_sets.errors import EngineError, EngineUnavailable, RuleError

RULES = """\
- rule: first
  desc: d
  condition: evt.type = connect
  output: o
  priority: WARNING
- rule: second
  desc: d
  condition: evt.type = connect and fd.sport = 443
  output: o
  priority: WARNING
- rule: switched off
  desc: d
  condition: evt.type = connect
  output: o
  priority: WARNING
  enabled: false
- rule: other source
  desc: d
  condition: ct.name = x
  output: o
  priority: WARNING
  source: aws_cloudtrail
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def test_every_enabled_syscall_rule_gets_an_entry(rules: Path, tmp_path: Path) -> None:
    replay = FakeEngine(lambda capture, ruleset: {"first": [3, 1]}).replay(tmp_path / "c.scap", [rules])
    assert replay.engine == "fake"
    assert set(replay.hits) == {"first", "second"}  # not the disabled rule, not another source's
    assert replay.fired("first") == {1, 3} and replay.hits["second"] == ()
    assert [m.ts_ns for m in replay.hits["first"]] == [1, 3]  # in capture order


def test_timestamps_become_matches_with_every_field_unknown(rules: Path, tmp_path: Path) -> None:
    given = Match(7, "connect", {"fd.sip": "203.0.113.1"})
    replay = FakeEngine(lambda c, r: {"first": [5, given]}).replay(tmp_path / "c", [rules], fields=("fd.sip",))
    assert replay.hits["first"] == (Match(5, "<NA>", {"fd.sip": "<NA>"}), given)


def test_the_function_sees_the_capture_and_the_loaded_rules(rules: Path, tmp_path: Path) -> None:
    seen = []
    FakeEngine(lambda capture, ruleset: seen.append((capture, sorted(ruleset.rules))) or {}).replay(
        tmp_path / "c.scap", [rules]
    )
    assert seen == [(tmp_path / "c.scap", ["first", "other source", "second", "switched off"])]


def test_a_rule_the_files_do_not_hold_is_an_error(rules: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"hits name rules the files do not hold: \['frist'\]"):
        FakeEngine(lambda c, r: {"frist": [1]}).replay(tmp_path / "c", [rules])


def test_rule_matching_first_keeps_each_event_with_the_first_rule(rules: Path, tmp_path: Path) -> None:
    engine = FakeEngine(lambda c, r: {"first": [1], "second": [1, 2]})
    assert engine.replay(tmp_path / "c", [rules]).fired("second") == {1, 2}
    first = engine.replay(tmp_path / "c", [rules], rule_matching="first")
    assert (first.fired("first"), first.fired("second")) == ({1}, {2})
    with pytest.raises(RuleError, match="rule_matching must be one of all, first"):
        engine.replay(tmp_path / "c", [rules], rule_matching="some")


def test_problems_are_reported_and_get_no_hits(rules: Path, tmp_path: Path) -> None:
    engine = FakeEngine(lambda c, r: {"second": [1]}, problems={"second": "cannot expand: x", "absent": "y"})
    replay = engine.replay(tmp_path / "c", [rules])
    assert dict(replay.problems) == {"second": "cannot expand: x"}  # only rules of the files
    assert "second" not in replay.hits


def test_each_replay_is_recorded_as_asked(rules: Path, tmp_path: Path) -> None:
    engine = FakeEngine()
    plugin = Plugin("torsets", tmp_path / "lib.so")
    engine.replay(tmp_path / "c", [rules], fields=("evt.type",), plugins=[plugin], rule_matching="first")
    (asked,) = engine.replays
    assert (asked.rules, asked.plugins, asked.rule_matching, asked.fields) == (
        (rules,),
        (plugin,),
        "first",
        ("evt.type",),
    )


def test_rules_that_do_not_load_are_a_rule_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: r\n  condition: evt.type = connect\n")
    with pytest.raises(RuleError, match="missing 'output'"):
        FakeEngine().replay(tmp_path / "c", [bad])


def test_validate_is_the_loader_alone(rules: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: r\n  condition: evt.type = connect\n")
    (ok,) = FakeEngine().validate([rules])
    assert ok.ok and ok.message == "Ok"
    verdicts = FakeEngine().validate([rules, bad])
    assert [v.ok for v in verdicts] == [False, False] and "missing 'output'" in verdicts[0].message


def test_an_unavailable_fake_says_why(rules: Path, tmp_path: Path) -> None:
    engine = FakeEngine(unavailable="switched off for this test")
    assert not engine.available()
    with pytest.raises(EngineUnavailable, match="fake: switched off for this test"):
        engine.replay(tmp_path / "c", [rules])
    with pytest.raises(EngineUnavailable):
        engine.version()


def test_bare_conditions_are_refused_and_compile_accepts_anything(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="replays rules files only"):
        FakeEngine().filter(tmp_path / "c", "evt.type = connect")
    FakeEngine().compile("anything at all")
    assert FakeEngine(version="9.9").version() == "9.9"


def test_the_fake_is_no_engine_of_the_command_line() -> None:
    assert "fake" not in ENGINES and FakeEngine not in ENGINES.values()
