"""Unit tests of the engine seam: output parsing, error mapping and the subprocess runner (no engines)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tor_sets.engines import sysdig
from tor_sets.engines.base import Match, Run
from tor_sets.engines.process import run_process
from tor_sets.engines.sysdig import filter_error, parse_chisel_output, write_spec
from tor_sets.errors import EngineError, EngineTimeout, EngineUnavailable, RuleError

FIELDS = ("evt.type", "fd.sip", "proc.name")


def test_parse_chisel_output_reads_matches_and_trailer() -> None:
    stdout = (
        '["1506127469", "904933216", "accept", "192.168.0.3", "haproxy"]\n'
        '["1533943856", "118383143", "connect", "2001:db8::3", null]\n'
        '{"end": 2, "vmhwm_kb": 26876}\n'
    )
    matches, vmhwm = parse_chisel_output(stdout, FIELDS, engine="t")
    assert vmhwm == 26876
    assert [m.ts_ns for m in matches] == [1506127469904933216, 1533943856118383143]
    assert matches[0].evt_type == "accept"
    assert dict(matches[1].fields) == {"evt.type": "connect", "fd.sip": "2001:db8::3", "proc.name": "<NA>"}


def test_parse_chisel_output_keeps_escaped_control_characters() -> None:
    stdout = '["1", "2", "write", "a\\tb\\u000a\\"c\\"\\\\", "x"]\n{"end": 1, "vmhwm_kb": -1}\n'
    (match,), vmhwm = parse_chisel_output(stdout, FIELDS, engine="t")
    assert match.fields["fd.sip"] == 'a\tb\n"c"\\'
    assert match.ts_ns == 1_000_000_002
    assert vmhwm == -1


def test_parse_chisel_output_ignores_engine_chatter() -> None:
    stdout = 'some warning from sysdig\n{"end": 0, "vmhwm_kb": 1}\n'
    assert parse_chisel_output(stdout, FIELDS, engine="t") == ((), 1)


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        ('["1", "2", "accept", "x", "y"]\n', "output ended before the end"),
        ('["1", "2", "accept", "x", "y"]\n{"end": 2, "vmhwm_kb": 1}\n', "printed 2 matches but 1 arrived"),
        ('["1", "2", "accept"]\n{"end": 1, "vmhwm_kb": 1}\n', "unexpected chisel output"),
        ('["1", "2", "accept", \n', "unreadable chisel output"),
    ],
)
def test_parse_chisel_output_rejects_cut_or_odd_output(stdout: str, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        parse_chisel_output(stdout, FIELDS, engine="t")


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (  # sysdig 0.29.3
            "invalid filter in chisel /tmp/tor-sets-a/tor_sets_match.lua: filter error at position 43: "
            "unrecognized IPv4 address 1.2.3.4/24\n/tmp/tor-sets-a/tor_sets_match.lua: error in init(): C++ exception",
            "filter error at position 43: unrecognized IPv4 address 1.2.3.4/24",
        ),
        (  # sysdig 0.41.4
            "invalid filter in chisel /tmp/tor-sets-b/tor_sets_match.lua: unrecognized IPv4 address 1.2.3.4/24\n"
            "chisel error\n",
            "unrecognized IPv4 address 1.2.3.4/24",
        ),
        ("can't open file /tmp/x.scap\n", None),
    ],
)
def test_filter_error_extracts_the_engine_message(stderr: str, expected: str | None) -> None:
    assert filter_error(stderr) == expected


def test_write_spec_layout(tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    write_spec(spec, "filter", ("evt.type", "fd.sip"), "evt.type = connect\nand fd.sip = 1.2.3.4")
    assert spec.read_text() == "filter\nevt.type fd.sip\nevt.type = connect\nand fd.sip = 1.2.3.4"


@pytest.mark.parametrize("bad", ["fd.sip fd.cip", "", "evt.type\n"])
def test_write_spec_rejects_field_names_the_chisel_cannot_split(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RuleError, match="invalid field name"):
        write_spec(tmp_path / "spec", "filter", (bad,), "")


def test_chisel_ships_with_the_package() -> None:
    source = sysdig.chisel_source().decode()
    assert "chisel.set_filter(condition)" in source
    assert "evt.rawtime.s" in source and "evt.rawtime.ns" in source


def test_match_is_immutable_and_hashable() -> None:
    fields = {"fd.sip": "1.2.3.4"}
    match = Match(5, "connect", fields)
    fields["fd.sip"] = "changed"
    assert match.fields["fd.sip"] == "1.2.3.4"
    with pytest.raises(TypeError):
        match.fields["fd.sip"] = "x"  # type: ignore[index]
    assert match == Match(5, "connect", {"fd.sip": "1.2.3.4"})
    assert len({match, Match(5, "connect", {"fd.sip": "1.2.3.4"})}) == 1


def test_run_is_a_value() -> None:
    run = Run((), 0.5, 100, "tail")
    with pytest.raises(AttributeError):
        run.wall_s = 1.0  # type: ignore[misc]


def test_run_process_measures_the_child() -> None:
    code = "import sys; b = bytearray(50 * 1024 * 1024); print('out'); print('err', file=sys.stderr); sys.exit(3)"
    done = run_process([sys.executable, "-c", code], engine="t", timeout=60)
    assert done.returncode == 3
    assert done.stdout == "out\n"
    assert done.stderr == "err\n"
    assert done.max_rss_kb > 50 * 1024
    assert done.wall_s > 0


def test_run_process_does_not_charge_the_caller_s_memory_to_the_engine() -> None:
    ballast = bytearray(150 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # make it resident: a direct child's ru_maxrss would now exceed 150 MB
    done = run_process(["true"], engine="t", timeout=60)
    assert done.returncode == 0
    assert 0 < done.max_rss_kb < 30 * 1024
    del ballast


def test_run_process_reports_signals_as_negative_exit_codes() -> None:
    assert run_process(["sh", "-c", "kill -TERM $$"], engine="t", timeout=60).returncode == -15


def test_run_process_kills_on_timeout_and_calls_back() -> None:
    called = []
    start = time.monotonic()
    with pytest.raises(EngineTimeout, match=r"no result within 0\.2 s"):
        run_process(
            ["sh", "-c", "sleep 30; echo never"], engine="t", timeout=0.2, on_timeout=lambda: called.append(True)
        )
    assert called == [True]
    assert time.monotonic() - start < 10


def test_run_process_maps_a_missing_program() -> None:
    with pytest.raises(EngineUnavailable, match="cannot run /nonexistent/sysdig: No such file or directory"):
        run_process(["/nonexistent/sysdig"], engine="t", timeout=5)
