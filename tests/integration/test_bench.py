"""The benchmark machinery on a tiny input and the real engine (figures live in docs/, never asserted on)."""

from __future__ import annotations

import json

import pytest

from tor_sets.cli import main
from tor_sets.engines import get_engine
from tor_sets.errors import EngineUnavailable

pytestmark = pytest.mark.integration


def test_bench_runs_end_to_end_on_a_tiny_capture(tmp_path, capsys):
    try:
        get_engine("sysdig-modern").check()
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
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
    md = (tmp_path / "benchmarks.md").read_text()
    assert "tor-sets bench" in md and "| `hybrid-16` |" in md
    assert (tmp_path / "benchmarks-sysdig-modern.png").read_bytes()[:4] == b"\x89PNG"
