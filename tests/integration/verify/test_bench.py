"""The benchmark machinery on a tiny input and the real engine (figures live in docs/, never asserted on)."""

from __future__ import annotations

import json

import pytest

from tests.support.engines import engine_or_skip
from tor_sets.cli import main

pytestmark = pytest.mark.integration


def test_bench_runs_end_to_end_on_a_tiny_capture(tmp_path, capsys):
    engine_or_skip("sysdig-modern")
    code = main(
        [
            "bench",
            "--engine",
            "sysdig-modern",
            "--connections",
            "2000",
            "--repetitions",
            "1",
            "--thresholds",
            "2,16",
            "--lossy-budgets",
            "8",
            "--count-connections",
            "0",
            "--output",
            str(tmp_path),
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {m["encoding"]: m for m in doc["measurements"]}
    assert set(rows) == {"literal-2022", "networks-only", "hybrid-2", "hybrid-16", "addresses-only", "lossy-8"}
    # every encoding covers the same relays, so every replay matches the same Tor connections; the 2022 tool's
    # rules miss the accept4 ones on the current engine
    ours = {m["matches"] for name, m in rows.items() if name != "literal-2022"}
    assert len(ours) == 1 and rows["hybrid-16"]["matches"] > rows["literal-2022"]["matches"] > 0
    assert rows["networks-only"]["list_items"] == rows["networks-only"]["networks"] > 0
    assert rows["addresses-only"]["networks"] == 0
    assert rows["lossy-8"]["false_positive_addresses"] > 0 and rows["hybrid-16"]["false_positive_addresses"] == 0
    assert rows["hybrid-16"]["rules_bytes"] < rows["literal-2022"]["rules_bytes"]
    assert doc["build_s"] > 0 and doc["build_peak_mb"] > 0
    assert doc["counted_events"] == 0 and rows["hybrid-16"]["instructions_per_event"] is None
    md = (tmp_path / "benchmarks.md").read_text()
    assert "tor-sets bench" in md and "| `hybrid-16` |" in md
    assert (tmp_path / "benchmarks-sysdig-modern.png").read_bytes()[:4] == b"\x89PNG"


def test_instruction_counts_are_repeatable_and_see_network_scans(bundled, tmp_path):
    engine = engine_or_skip("sysdig-modern")
    from tor_sets.relays import classify
    from tor_sets.verify.bench import bench_capture, encodings, run_bench

    capture = tmp_path / "small.scap"
    bench_capture(classify(bundled), capture, connections=300)
    networks = ", ".join(f"198.51.{i // 256}.{i % 256}/32" for i in range(0, 2000))
    plain = engine.count_instructions(capture, "evt.type = connect and fd.sip = 198.51.100.1")
    again = engine.count_instructions(capture, "evt.type = connect and fd.sip = 198.51.100.1")
    assert abs(plain - again) < 0.002 * plain  # only scratch-folder names differ between runs
    scan = engine.count_instructions(capture, f"evt.type = connect and fd.snet in ({networks})")
    loaded = engine.count_instructions(None, f"evt.type = connect and fd.snet in ({networks})")
    assert scan - loaded > plain - engine.count_instructions(None, "evt.type = connect and fd.sip = 198.51.100.1")
    # the benchmark turns those counts into per-event figures relative to no Tor rule
    (hybrid,) = [e for e in encodings(thresholds=(16,), lossy_budgets=()) if e.name == "hybrid-16"]
    result = run_bench(
        bundled, [engine], tmp_path, connections=300, repetitions=1, chosen=[hybrid], count_connections=300
    )
    (m,) = result.measurements
    assert result.counted_events > 1000 and m.instructions_per_event and m.relative_instructions > 1


def test_real_falco_cost_on_tiny_captures(tmp_path, capsys):
    engine_or_skip("falco-local")
    argv = ["bench", "--engine", "falco-local", "--falco-connections", "1000", "--repetitions", "1"]
    assert main([*argv, "--output", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    variants = {v["name"]: v for v in doc["falco"]}
    assert list(variants) == ["no Tor rule", "lists", "addresses-only", "literal-2022", "plugin"]
    assert doc["falco_version"] == "0.44.1" and doc["falco_events"][1] > doc["falco_events"][0] > 0
    assert variants["no Tor rule"]["relative_instructions"] == 1.0
    for name in ("lists", "addresses-only", "literal-2022", "plugin"):
        # every Tor variant evaluates something on each connect and accept, and none alerts on non-Tor peers
        assert variants[name]["relative_instructions"] > 1.0 and variants[name]["alerts"] == 0
    # loading thousands of list items is what the plugin saves at start-up (and at every rules reload)
    assert variants["plugin"]["startup_instructions"] < variants["lists"]["startup_instructions"] / 2
    md = (tmp_path / "benchmarks.md").read_text()
    assert "## Real Falco 0.44.1" in md and "| `plugin` |" in md
    assert (tmp_path / "benchmarks-falco.png").read_bytes()[:4] == b"\x89PNG"


def test_falco_instruction_counts_are_repeatable(bundled, tmp_path):
    from tor_sets.build import build
    from tor_sets.relays import classify
    from tor_sets.verify.bench import bench_capture

    engine = engine_or_skip("falco-local")
    capture = tmp_path / "c.scap"
    bench_capture(classify(bundled), capture, connections=500, tor_share=0.0)
    rules = tmp_path / "tor_rules.yaml"
    rules.write_text(build(bundled).text)
    first, second = (engine.count_instructions(capture, [rules]) for _ in range(2))
    assert abs(first - second) / first < 0.005
