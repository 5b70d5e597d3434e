"""Verification on real engines: the project's rules pass; broken rules fail and name what they miss.

Real Falco (``falco-local``: the runtime root run directly; ``falco``: its container image) is the proof; sid's
sysdig (``sysdig-modern``, tor-sets' own loader and expander) is the second opinion, and Debian 12's sysdig the 2022
engine. Under ``make test`` none of them may skip.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import DATA
from tests.support.engines import engine_or_skip
from tests.support.falco import container_double
from tests.support.scap_reader import connections
from tor_sets.build import BuildOptions, build
from tor_sets.cli import main
from tor_sets.engines import ENGINES
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE, RulesOptions
from tor_sets.falco.legacy2022 import render_2022
from tor_sets.falco.load import load_rules
from tor_sets.falco.model import CURRENT_FALCO
from tor_sets.relays import Relay, Role, Snapshot, classify
from tor_sets.verify import make_scenario, verify

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["falco-local", "sysdig-modern"])
def judge_engine(request):
    """Real Falco, and tor-sets' own expander on sid's sysdig as the second opinion."""
    return engine_or_skip(request.param)


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    """TEST SCAFFOLDING: the container-plugin double, for rules that name container fields."""
    return container_double(tmp_path_factory.mktemp("plugins"))


@pytest.fixture(scope="module")
def legacy():
    return engine_or_skip("sysdig-legacy")


@pytest.fixture(scope="module")
def good_rules(bundled, tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "tor_rules.yaml"
    path.write_text(build(bundled).text)
    return path


def run_verify(rules_path: Path, sets, engine, *, plugins=(), **kw):
    rules = load_rules(rules_path)
    scenario = make_scenario(sets, lists=rules.lists, **kw)
    return verify([rules_path], scenario, engine, plugins=plugins), scenario


@pytest.mark.parametrize(
    "engine_name, profile, needs_container",
    [
        ("falco-local", CURRENT_FALCO, False),  # the default rules, no container plugin
        ("falco-local", CURRENT_FALCO, True),  # ... and with it (Falco appends its fields)
        ("falco", CURRENT_FALCO, False),  # the container image
        ("falco-local", "0.37", True),  # outputs name container fields: the plugin (double) must be loaded
        ("falco-local", "legacy", True),
        ("sysdig-modern", CURRENT_FALCO, False),
        ("sysdig-legacy", "legacy", False),
    ],
)
def test_project_rules_pass_on_real_engines(bundled, tmp_path, double, engine_name, profile, needs_container):
    engine = engine_or_skip(engine_name)
    path = tmp_path / "tor_rules.yaml"
    path.write_text(build(bundled, BuildOptions(rules=RulesOptions(falco_version=profile))).text)
    plugins = (double,) if needs_container else ()
    verdict, scenario = run_verify(path, classify(bundled), engine, plugins=plugins)
    assert len(scenario.connections) >= 1000
    kinds = {lab.connection.kind for lab in scenario.connections if lab.expected}
    results = {lab.connection.result for lab in scenario.connections if lab.connection.kind == "connect"}
    assert kinds == {"connect", "accept", "accept4"} and {0, -115, -111} <= results
    assert {lab.connection.server.version for lab in scenario.connections if lab.expected} == {4, 6}
    assert verdict.ok, [r.to_json() for r in verdict.rules]
    by_rule = {r.rule: r for r in verdict.rules}
    assert by_rule[OUTBOUND_RULE].fired == by_rule[OUTBOUND_RULE].expected > 400
    assert by_rule[INBOUND_RULE].fired == by_rule[INBOUND_RULE].expected > 400


def broken(good: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = good.read_text()
    assert old in text
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_rules_without_accept4_fail_and_name_the_misses(judge_engine, good_rules, bundled, tmp_path):
    path = broken(good_rules, tmp_path, "evt.type in (accept, accept4)", "evt.type = accept")
    verdict, _ = run_verify(path, classify(bundled), judge_engine)
    inbound = {r.rule: r for r in verdict.rules}[INBOUND_RULE]
    assert not verdict.ok and inbound.missed and not inbound.false_alarms
    assert all(m.startswith("accept4 from ") for m in inbound.missed)


def test_a_dropped_list_fails(judge_engine, good_rules, bundled, tmp_path):
    text = good_rules.read_text()
    start = text.index("- list: tor_exit_only_ipv6_addresses")
    end = text.index("\n\n", start)
    path = tmp_path / "dropped.yaml"
    path.write_text(text[:start] + "- list: tor_exit_only_ipv6_addresses\n  items: []" + text[end:])
    verdict, _ = run_verify(path, classify(bundled), judge_engine)
    inbound = {r.rule: r for r in verdict.rules}[INBOUND_RULE]
    assert not verdict.ok and inbound.missed
    assert all(ipaddress.ip_address(m.split()[2]).version == 6 for m in inbound.missed)


def test_a_wrong_field_fails(judge_engine, good_rules, bundled, tmp_path):
    path = broken(good_rules, tmp_path, "(fd.sip in (tor_entry_only", "(fd.cip in (tor_entry_only")
    verdict, _ = run_verify(path, classify(bundled), judge_engine)
    outbound = {r.rule: r for r in verdict.rules}[OUTBOUND_RULE]
    assert not verdict.ok and len(outbound.missed) > 100
    assert all(m.startswith("connect to ") for m in outbound.missed)


@pytest.mark.parametrize("engine_name", ["falco-local", "sysdig-modern"])
def test_the_2022_tools_rules_miss_accept4_on_the_current_engine(engine_name, bundled, tmp_path, capsys):
    engine_or_skip(engine_name)
    files = render_2022(classify(bundled))
    paths = []
    for name, text in sorted(files.items()):
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    code = main(["verify", "--engine", engine_name, "--json", *[a for p in paths for a in ("--rules", p)]])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    rules = {r["rule"]: r for v in doc["verdicts"] for r in v["rules"]}
    ingress = [r for name, r in rules.items() if "ingress" in name]
    egress = [r for name, r in rules.items() if "egress" in name]
    assert len(ingress) == 2 and len(egress) == 2
    assert all(r["missed"] and all(m.startswith("accept4 from") for m in r["missed_examples"]) for r in ingress)
    # failed connects carry no socket tuple on either engine, so fd.rip never matches them
    assert not any(r["missed"] or r["false_alarms"] for r in egress)


def test_real_third_party_capture_alerts(judge_engine, tmp_path):
    # libs_curl_google.scap: curl connects to 2607:f8b0:4004:802::2004 port 80 (EINPROGRESS), after a UDP DNS
    # query to 2001:4860:4860::8888; declare that web server an entry relay and expect exactly one alert on it.
    server = ipaddress.ip_address("2607:f8b0:4004:802::2004")
    snapshot = Snapshot(
        datetime(2026, 2, 28, 1),
        (
            Relay("A" * 40, or_addresses=(server,), flags=frozenset({"Guard"})),
            Relay("B" * 40, or_addresses=(ipaddress.ip_address("185.220.101.1"),), flags=frozenset({"Exit"})),
        ),
        source="test",
    )
    path = tmp_path / "tor_rules.yaml"
    path.write_text(build(snapshot).text)
    capture = DATA / "captures" / "libs_curl_google.scap"
    replay = judge_engine.replay(capture, [path])
    assert [(m.evt_type, m.fields["fd.sip"], m.fields["proc.name"]) for m in replay.hits[OUTBOUND_RULE]] == [
        ("connect", str(server), "curl")
    ]
    assert replay.hits[INBOUND_RULE] == ()


def test_real_capture_accept4_inbound(judge_engine, tmp_path):
    # inspect_502Error.scap: haproxy accepts with accept4 from 192.168.0.1 (37 times); a private address can
    # never come from Onionoo, so the relay is made directly to exercise the rule on real accept4 events
    client = ipaddress.ip_address("192.168.0.1")
    snapshot = Snapshot(
        datetime(2026, 2, 28, 1),
        (
            Relay("A" * 40, or_addresses=(ipaddress.ip_address("185.220.101.1"),), flags=frozenset({"Guard"})),
            Relay("B" * 40, or_addresses=(client,), flags=frozenset({"Exit"})),
        ),
        source="test",
    )
    path = tmp_path / "tor_rules.yaml"
    path.write_text(build(snapshot).text)
    capture = DATA / "captures" / "inspect_502Error.scap"
    matches = judge_engine.replay(capture, [path]).hits[INBOUND_RULE]
    assert len(matches) == 37
    assert {(m.evt_type, m.fields["fd.cip"]) for m in matches} == {("accept4", "192.168.0.1")}


def test_verify_cli_passes_and_reports(capsys):
    for name in ENGINES:  # every engine must be here: a missing one is a counted skip, not a wrong set below
        engine_or_skip(name)
    code = main(["verify", "--engine", "all", "--json", "--size", "1000"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"], out
    engines = {v["engine"] for v in out["verdicts"]}
    assert {"falco-local", "falco", "sysdig-modern", "sysdig-modern-docker", "sysdig-legacy"} == engines
    assert all(v["connections"] >= 1000 for v in out["verdicts"])


def test_excluded_ranges_do_not_alert(judge_engine, bundled, tmp_path):
    sets = classify(bundled)
    some = sorted(sets.family(Role.ENTRY, 4), key=int)[10]
    exclude = (ipaddress.ip_network(f"{some}/24", strict=False),)
    path = tmp_path / "tor_rules.yaml"
    path.write_text(build(bundled, BuildOptions(exclude=exclude)).text)
    verdict, scenario = run_verify(path, sets, judge_engine, exclude=exclude)
    assert any("inside excluded range" in lab.label for lab in scenario.connections)
    assert verdict.ok


def test_keep_keeps_the_rules_and_the_capture(tmp_path, capsys):
    """``verify --keep DIR`` (issue 14.6): the rules built and, per engine, the capture replayed stay in DIR."""
    engine_or_skip("falco-local")
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "tor_rules.yaml").write_text("- list: left_by_an_earlier_run\n  items: []\n")  # replaced, not replayed
    assert main(["verify", "--engine", "falco-local", "--size", "50", "--keep", str(keep)]) == 0
    capsys.readouterr()
    (tmp_path / "a-file").write_text("x")
    assert main(["verify", "--engine", "falco-local", "--size", "50", "--keep", str(tmp_path / "a-file")]) == 3
    assert capsys.readouterr().err.strip().endswith("it is a regular file, not a folder")
    capture = keep / "falco-local" / "scenario.scap"
    assert (keep / "tor_rules.yaml").read_text().startswith("# Tor relay rules for Falco")
    assert capture.stat().st_size > 0
    assert len(list(connections(capture))) >= 50  # the labelled connections, readable from the kept file


def test_all_names_each_skipped_engine_once(tmp_path, monkeypatch, capsys):
    """``verify --engine all`` with the engines really unavailable (empty cache, no docker client on PATH) but the
    host's sysdig (issue 14.8): one line per skipped engine, its name once, no Python in it."""
    engine_or_skip("sysdig-legacy")
    root = tmp_path / "no-root"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TOR_SETS_ENGINE_ROOT", str(root))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert main(["verify", "--engine", "all", "--size", "20", "--json"]) == 0
    captured = capsys.readouterr()
    assert [v["engine"] for v in json.loads(captured.out)["verdicts"]] == ["sysdig-legacy"]
    skipped = [line for line in captured.err.splitlines() if line.startswith("tor-sets: skipped ")]
    assert skipped == [
        "tor-sets: skipped falco-local: Falco is not installed; run `tor-sets engines install falco` as root",
        "tor-sets: skipped falco: the docker client is missing; run `tor-sets engines install docker` as root",
        f"tor-sets: skipped sysdig-modern: no engine root at {root}; run `tor-sets engines install modern` as root",
        "tor-sets: skipped sysdig-modern-docker: the docker client is missing; run `tor-sets engines install docker` "
        "as root",
    ]
