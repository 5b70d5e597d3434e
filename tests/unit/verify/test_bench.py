"""The benchmark's pure parts: the encodings, the OR-ed condition, the capture it replays, and its report.

The measurements themselves need real engines: tests/integration/verify/test_bench.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.scap_reader import connections
from tor_sets.build import build
from tor_sets.errors import RuleError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.falco.load import load_rules
from tor_sets.plugin import plugin_rules_text
from tor_sets.relays import Snapshot, classify
from tor_sets.verify import BenchReport, EncodingCost, bench_json, encodings, format_bench
from tor_sets.verify.bench import FalcoCost, bench_capture, rules_condition


def test_encodings_cover_the_same_relays_in_the_order_reported() -> None:
    names = [e.name for e in encodings(thresholds=(2, 16), lossy_budgets=(8,))]
    assert names == ["literal-2022", "networks-only", "hybrid-2", "hybrid-16", "addresses-only", "lossy-8"]


def test_the_condition_ors_every_rule(bundled: Snapshot) -> None:
    condition = rules_condition(plugin_rules_text(build(bundled)))
    assert condition.count("tor.") == 2 and " or " in condition
    rules = load_rules(build(bundled).text).rules
    assert (
        rules_condition(build(bundled).text) == f"({rules[OUTBOUND_RULE].expanded}) or ({rules[INBOUND_RULE].expanded})"
    )


def test_the_condition_of_several_texts_leaves_disabled_rules_out() -> None:
    one = "- rule: a\n  desc: d\n  condition: evt.type = connect\n  output: o\n  priority: INFO\n"
    two = "- rule: b\n  desc: d\n  condition: evt.type = accept\n  output: o\n  priority: INFO\n  enabled: false\n"
    assert rules_condition(one, two) == "(evt.type = connect)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- rule: a\n  desc: d\n  condition: nowhere\n  output: o\n  priority: INFO\n",
            "rule 'a': cannot expand nowhere",
        ),
        ("- list: l\n  items: []\n", "no enabled rule"),
    ],
    ids=["unexpandable", "no-rule"],
)
def test_a_condition_that_cannot_be_made_is_a_rule_error(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        rules_condition(text)


def test_the_capture_mixes_tor_and_other_connections_as_asked(bundled: Snapshot, tmp_path: Path) -> None:
    sets = classify(bundled)
    path = tmp_path / "bench.scap"
    events, tor = bench_capture(sets, path, connections=2000, tor_share=0.25)
    records = list(connections(path))
    assert len(records) == 2000
    outbound = [r for r in records if r.kind == "connect"]
    assert events == 6 * len(outbound) + 4 * (len(records) - len(outbound))
    to_tor = sum(r.server in sets.entry for r in outbound) + sum(
        r.client in sets.exit for r in records if r.kind != "connect"
    )
    assert to_tor == tor and 400 < tor < 600
    assert {r.server.version for r in outbound} == {4, 6}
    assert bench_capture(sets, tmp_path / "again.scap", connections=2000, tor_share=0.25) == (events, tor)
    assert (tmp_path / "again.scap").read_bytes() == path.read_bytes()  # the same seed, the same capture


REPORT = BenchReport(
    measurements=(
        EncodingCost(
            encoding="hybrid-16",
            description="hybrid",
            engine="sysdig-modern",
            rules_bytes=120_000,
            list_items=7000,
            networks=12,
            false_positive_addresses=0,
            load_s=0.25,
            max_rss_kb=20480,
            replay_s=1.5,
            relative=1.25,
            matches=10_000,
        ),
    ),
    baseline={"sysdig-modern": 1.2},
    events=1_100_000,
    connections=200_000,
    tor_connections=10_000,
    engine_versions={"sysdig-modern": "0.41.4"},
    build_s=0.4,
    build_peak_mb=45,
    machine={"cpu": "test"},
    command="tor-sets bench",
    repetitions=3,
)


def test_the_table_has_a_row_per_encoding_and_the_build_cost() -> None:
    lines = format_bench(REPORT).splitlines()
    assert lines[0] == "sysdig-modern 0.41.4: replay with no Tor rule 1.200 s (median)"
    assert lines[2].split() == ["hybrid-16", "120000", "7000", "12", "0.250", "20.0", "1.500", "1.25", "-", "-", "0"]
    assert lines[-1] == "build (bundled snapshot): 0.400 s, peak 45 MB"


def test_the_json_document_carries_its_schema_and_every_figure() -> None:
    document = json.loads(json.dumps(bench_json(REPORT)))
    assert document["schema"] == 1 and document["tor_sets_version"]
    assert document["measurements"][0]["encoding"] == "hybrid-16" and document["falco"] == []


def test_the_plot_shows_instructions_when_counted_and_says_cpu_time_when_not() -> None:
    from dataclasses import replace

    from tor_sets.verify.bench_report import plot_points

    label, points = plot_points(REPORT, "sysdig-modern")
    assert label.startswith("replay CPU time") and points == [("hybrid-16", 120.0, 1.25)]
    counted = replace(
        REPORT, measurements=(replace(REPORT.measurements[0], relative_instructions=1.04, instructions_per_event=9.0),)
    )
    label, points = plot_points(counted, "sysdig-modern")
    assert label.startswith("instructions per event") and points == [("hybrid-16", 120.0, 1.04)]


def test_the_markdown_names_each_engines_capture_and_the_falco_install() -> None:
    from dataclasses import replace

    from tor_sets.verify.bench_report import _markdown

    report = replace(REPORT, captures={"sysdig-modern": (10_000, 55_000)})
    text = _markdown(report, "hybrid-16")
    assert "Capture: 10,000 connections (55,000 events)" in text and "A smaller capture than the others" in text
    assert "Installing Falco" not in text  # nothing recorded, nothing claimed
    install = {
        "steps": {"build root": {"seconds": 94.6, "at": "T1"}, "compile": {"seconds": 1237.8, "at": "T1"}},
        "last": {"seconds": 0.7, "at": "T2", "did": []},
    }
    falco = (
        FalcoCost(
            name="lists",
            description="the default list rules",
            rules_bytes=125_000,
            instructions_per_event=1100.0,
            relative_instructions=1.097,
            startup_instructions=542_000_000,
            cpu_per_event_us=1.2,
            relative_cpu=1.1,
            max_rss_kb=40_000,
            alerts=0,
        ),
    )
    text = _markdown(replace(report, falco=falco, falco_version="0.44.1", falco_install=install), "hybrid-16")
    assert "| **cold install, all steps** | **1,332.4** | |" in text
    assert "| last install (nothing: everything was cached) | 0.7 | T2 |" in text


def test_the_committed_report_is_what_the_code_writes_from_its_json(tmp_path: Path, capsys) -> None:
    """docs/benchmarks.md is written from docs/benchmarks.json (``tor-sets bench --from-json``): a figure typed into
    the markdown, or a report layout changed without writing the report again, fails here."""
    from tor_sets.cli import main
    from tor_sets.verify import read_bench_json

    docs = Path(__file__).resolve().parents[3] / "docs"
    document = json.loads((docs / "benchmarks.json").read_text())
    assert json.loads(json.dumps(bench_json(read_bench_json(document)))) == document
    assert main(["bench", "--from-json", str(docs / "benchmarks.json"), "--output", str(tmp_path)]) == 0
    assert (tmp_path / "benchmarks.md").read_text() == (docs / "benchmarks.md").read_text()
    assert json.loads((tmp_path / "benchmarks.json").read_text()) == document
    assert "hybrid-64" in capsys.readouterr().out


def test_from_json_refuses_what_is_no_report(tmp_path: Path, capsys) -> None:
    from tor_sets.cli import main

    (tmp_path / "other.json").write_text('{"schema": 99}')
    (tmp_path / "broken.json").write_text("{")
    assert main(["bench", "--from-json", str(tmp_path / "other.json"), "--output", str(tmp_path / "out")]) == 2
    assert "other.json: not a benchmarks document of schema 1" in capsys.readouterr().err
    assert main(["bench", "--from-json", str(tmp_path / "broken.json"), "--output", str(tmp_path / "out")]) == 2
    assert main(["bench", "--from-json", str(tmp_path / "other.json")]) == 2
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    # a report whose values are not what a run writes: one line, exit 2, and nothing of DIR touched
    docs = Path(__file__).resolve().parents[3] / "docs"
    good = json.loads((docs / "benchmarks.json").read_text())
    for broken in (
        {"captures": 5},
        {"machine": 5},
        {"measurements": [{**good["measurements"][0], "rules_bytes": "x"}]},
    ):
        (tmp_path / "odd.json").write_text(json.dumps({**good, **broken}))
        (tmp_path / "kept").mkdir(exist_ok=True)
        (tmp_path / "kept" / "benchmarks.md").write_text("last good")
        assert main(["bench", "--from-json", str(tmp_path / "odd.json"), "--output", str(tmp_path / "kept")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tor-sets: error: {tmp_path / 'odd.json'}: ") and "\n" not in err, broken
        assert [p.name for p in (tmp_path / "kept").iterdir()] == ["benchmarks.md"], broken
        assert (tmp_path / "kept" / "benchmarks.md").read_text() == "last good"
