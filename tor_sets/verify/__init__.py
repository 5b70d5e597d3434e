"""Proof that rules do what they say: labelled connections, a capture of them, real engines' verdicts, and cost.

The data's way: relay sets → :func:`make_scenario` (labelled connections: what each kind of rule must alert on,
and what it must leave alone) → :func:`write_scenario` (a capture file, :mod:`.capture`) → an engine replays it
against the rules files (:meth:`tor_sets.engines.Engine.replay`) → :func:`judge` and :func:`verify` (a
:class:`Verdict` of one :class:`RuleVerdict` per rule: missed connections, false alarms). :func:`disagreements`
compares two engines event by event. :func:`pick_validator` and :func:`validate_text` have an engine load a rules
text before it is written. :func:`run_bench` and :func:`falco_cost` measure what the rules cost an engine, and
:func:`write_report` writes the figures into docs/ (:func:`read_bench_json` reads them back).

Modules: :mod:`.scenarios`, :mod:`.capture` (the capture writer), :mod:`.verify`, :mod:`.bench` (measuring) and
:mod:`.bench_report` (the report). See docs/verify.md and docs/benchmarks.md.

Example::

    from tor_sets import build, bundled_snapshot, classify
    from tor_sets.engines import auto
    from tor_sets.falco import load_rules
    from tor_sets.verify import make_scenario, verify

    snapshot = bundled_snapshot()
    Path("tor_rules.yaml").write_text(build(snapshot).text)
    scenario = make_scenario(classify(snapshot), lists=load_rules(Path("tor_rules.yaml")).lists)
    verdict = verify([Path("tor_rules.yaml")], scenario, auto())
    print(verdict.ok)
"""

from __future__ import annotations

from tor_sets.verify.bench import BenchReport, Encoding, EncodingCost, FalcoCost, encodings, falco_cost, run_bench
from tor_sets.verify.bench_report import bench_json, format_bench, read_bench_json, write_report
from tor_sets.verify.scenarios import Expectation, Labelled, Scenario, make_scenario, write_scenario
from tor_sets.verify.verify import (
    RuleVerdict,
    Verdict,
    disagreements,
    format_verdicts,
    judge,
    outbound_role,
    pick_validator,
    rule_expectation,
    validate_text,
    verify,
)

__all__ = [
    "BenchReport",
    "Encoding",
    "EncodingCost",
    "Expectation",
    "FalcoCost",
    "Labelled",
    "RuleVerdict",
    "Scenario",
    "Verdict",
    "bench_json",
    "disagreements",
    "encodings",
    "falco_cost",
    "format_bench",
    "format_verdicts",
    "judge",
    "make_scenario",
    "outbound_role",
    "pick_validator",
    "read_bench_json",
    "rule_expectation",
    "run_bench",
    "validate_text",
    "verify",
    "write_report",
    "write_scenario",
]
