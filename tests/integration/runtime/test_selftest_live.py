"""Real Falco on this host's kernel (modern eBPF probe), watching real connections between test namespaces.

Needs root and the Falco of ``tor-sets engines install falco``; under ``make test`` nothing here may skip. Every
address is a documentation address inside namespaces the test creates (198.51.100.0/24), nothing is added to the
machine's own namespace, and the lab has no default route.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.falco import falco_or_skip
from tor_sets.onionoo import bundled_snapshot
from tor_sets.runtime.selftest import run_live

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "tor_sets"]


@pytest.fixture(scope="module")
def live_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("live capture needs root")
    falco_or_skip("falco-local")


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("tor-sets-lab-")}


def falco_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "falco" in cmdline:
            found.append(int(entry.name))
    return found


def tracefs_mounts() -> int:
    return sum(" tracefs " in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.mark.usefixtures("live_ready")
def test_live_alerts_silence_and_enrichment(tmp_path: Path) -> None:
    before = (namespaces(), tracefs_mounts())
    report = run_live(bundled_snapshot(), timeout=30, workdir=tmp_path)
    (phase,) = report.phases
    cases = {c.name.split(" ")[0]: c for c in phase.cases}
    assert set(cases) == {"outbound", "inbound", "refused", "bystander-outbound", "bystander-inbound"}
    assert cases["outbound"].alerted and cases["outbound"].rule == "Outbound Connection to Tor Entry Relay"
    assert cases["inbound"].alerted and cases["inbound"].rule == "Inbound Connection from Tor Exit Relay"
    assert cases["outbound"].enriched and cases["inbound"].enriched  # through http_output and enrich's endpoint
    assert all(c.latency_s is not None and c.latency_s < 30 for c in (cases["outbound"], cases["inbound"]))
    for silent in ("refused", "bystander-outbound", "bystander-inbound"):
        assert not cases[silent].alerted, cases[silent]
    assert report.ok, report.to_json()
    # the alerts name the connection truthfully: client -> server as the kernel saw it, not <unknown> or swapped
    alerts = [json.loads(line) for line in (tmp_path / "lists/events.json").read_text().splitlines()]
    tor = [a for a in alerts if "Tor" in a["rule"]]
    assert {a["rule"] for a in tor} == {cases["outbound"].rule, cases["inbound"].rule}
    outbound = next(a for a in tor if a["rule"] == cases["outbound"].rule)
    assert f"connection={cases['outbound'].connection.replace(' -> ', '->')} " in outbound["output"]
    assert "<unknown>" not in outbound["output"] and "container_id" not in outbound["output"]
    assert not falco_processes(str(tmp_path))
    assert (namespaces(), tracefs_mounts()) == before


def test_live_refuses_without_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tor_sets.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["selftest", "--live"]) == 3
    err = capsys.readouterr().err
    assert err == (
        "tor-sets: error: the live self-test needs root: it starts Falco's eBPF probe and creates network namespaces\n"
    )


@pytest.mark.usefixtures("live_ready")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_kill_mid_run_leaves_no_falco_namespace_or_mount(tmp_path: Path, sig: signal.Signals) -> None:
    before = (namespaces(), tracefs_mounts())
    keep = tmp_path / "keep"
    err = b""
    proc = subprocess.Popen(
        [*CLI, "selftest", "--live", "--keep", str(keep)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 90
        while not (namespaces() - before[0]):  # kill while the lab exists and Falco watches it
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the lab never appeared"
            time.sleep(0.002)
        assert falco_processes(str(keep))
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), err.decode()[-3000:]
    deadline = time.monotonic() + 30  # after SIGKILL, the parent-death signal and the lab's watcher clean up
    while (falco_processes(str(keep)) or namespaces() != before[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not falco_processes(str(keep))
    assert namespaces() == before[0]
    assert tracefs_mounts() == before[1]


@pytest.mark.usefixtures("live_ready")
def test_live_plugin_with_a_table_swap(tmp_path: Path) -> None:
    """Real Falco accepts the plugin live (it declares event schema 4.x) and follows a table replaced mid-run."""
    report = run_live(bundled_snapshot(), plugin=True, timeout=30, workdir=tmp_path)
    _, plugin = report.phases
    cases = {c.name: c for c in plugin.cases}
    assert not cases["outbound before-swap"].alerted  # the table did not hold the canary yet
    assert cases["outbound"].alerted and cases["inbound"].alerted  # after the swap, without a rules reload
    assert cases["outbound"].enriched and cases["inbound"].enriched
    assert any("table replaced while Falco ran" in note for note in plugin.notes)
    assert report.ok, report.to_json()
    log = (tmp_path / "plugin/falco.log").read_text()
    assert "Loaded plugin 'torsets@" in log and "required event schema version" not in log
    alerts = [json.loads(line) for line in (tmp_path / "plugin/events.json").read_text().splitlines()]
    outbound = next(a for a in alerts if a["rule"] == cases["outbound"].rule)
    assert "tor_fingerprint=" + "CA" * 20 in outbound["output"]
