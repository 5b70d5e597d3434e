"""Agreement with real Falco, and life next to the upstream ruleset.

Agreement: for the labelled scenario and for every real capture in tests/data/captures, tor-sets' own loader and
expander (on sid's sysdig, ``sysdig-modern``) must match exactly the events real Falco 0.44.1 matches, rule by rule;
a disagreement fails and names the events. For the real captures, rules are built around the addresses each capture
holds, every one declared an entry and an exit relay, so that there is something to agree on.

Coexistence: the scenario replayed with falcosecurity/rules (the default ruleset of Falco 0.44.1, plus its
incubating and sandbox files) loaded before the Tor rules, under ``rule_matching: first`` (Falco's default) and
``all``. The figures are those docs/verify.md shows.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tarfile
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, REPO
from tests.support.engines import engine_or_skip
from tests.support.falco import container_double
from tor_sets.build import build
from tor_sets.engines import Engine
from tor_sets.engines.paths import FALCO_SOURCE_ENV
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.falco.legacy2022 import render_2022
from tor_sets.falco.load import load_rules
from tor_sets.relays import Relay, Snapshot, classify
from tor_sets.verify import disagreements, make_scenario, verify, write_scenario

pytestmark = pytest.mark.integration

CAPTURES = DATA / "captures"
#: the default ruleset Falco 0.44.1 ships, from the pinned sources (where `make test` builds Falco from)
UPSTREAM_RULES = (
    Path(os.environ.get(FALCO_SOURCE_ENV) or REPO.parent / "shared" / "upstream") / "falco-rules-705c3db.tar.gz"
)
ANY_CONNECTION = "evt.type in (connect, accept, accept4) and fd.sip exists"


@pytest.fixture(scope="module")
def falco() -> Engine:
    return engine_or_skip("falco-local")


@pytest.fixture(scope="module")
def expander() -> Engine:
    return engine_or_skip("sysdig-modern")


def agree(falco: Engine, expander: Engine, capture: Path, rules: list[Path], describe=None) -> int:
    """Replay on both; fail naming every disagreement; return how many (rule, event) matches were compared."""
    ours, theirs = falco.replay(capture, rules), expander.replay(capture, rules)
    found = disagreements(ours, theirs, describe)
    assert not found, "\n".join(found[:50])
    assert set(ours.hits) == set(theirs.hits) and ours.hits  # the same enabled rules, and some
    return sum(len(matches) for matches in ours.hits.values())


def test_the_scenario_gets_the_same_verdict_event_by_event(falco, expander, bundled, tmp_path) -> None:
    rules = tmp_path / "tor_rules.yaml"
    rules.write_text(build(bundled).text)
    scenario = make_scenario(classify(bundled), lists=load_rules(rules).lists)
    capture = tmp_path / "scenario.scap"
    write_scenario(scenario, capture)
    by_ts = scenario.by_ts()
    compared = agree(falco, expander, capture, [rules], lambda ts: by_ts[ts].describe() if ts in by_ts else str(ts))
    assert compared == scenario.counts()["positive"] > 1000


def test_the_2022_files_get_the_same_verdict_event_by_event(falco, expander, bundled, tmp_path) -> None:
    paths = []
    for name, text in sorted(render_2022(classify(bundled)).items()):
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    scenario = make_scenario(classify(bundled), lists=load_rules(*paths).lists)
    capture = tmp_path / "scenario.scap"
    write_scenario(scenario, capture)
    assert agree(falco, expander, capture, paths) > 500


def capture_addresses(engine: Engine, capture: Path) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    run = engine.filter(capture, ANY_CONNECTION, ("fd.cip", "fd.sip"))
    found = {m.fields[f] for m in run.matches for f in ("fd.cip", "fd.sip") if m.fields[f] != "<NA>"}
    return sorted((ipaddress.ip_address(a) for a in found), key=lambda a: (a.version, int(a)))


#: every real capture, and how many (rule, event) matches both engines must agree on
REAL_CAPTURES = [
    ("falco_connect_localhost.scap", 1),
    ("falco_ping_sendto.scap", 0),  # raw ICMP sendmsg: no connect or accept at all
    ("inspect_502Error.scap", 123),
    ("libs_curl_google.scap", 2),
    ("libs_curl_google_comments.scap", 2),
    ("libs_single_ipv6_conn.scap", 2),
    ("libs_test_ipv6_client.scap", 2),
]


def test_every_real_capture_is_in_the_table() -> None:
    listed = {p.name for p in CAPTURES.glob("*.scap")}
    assert listed == {name for name, _ in REAL_CAPTURES}


@pytest.mark.parametrize(("capture", "matches"), REAL_CAPTURES)
def test_every_real_capture_gets_the_same_verdict(falco, expander, tmp_path, capture, matches) -> None:
    path = CAPTURES / capture
    addresses = capture_addresses(falco, path)
    relays = [
        Relay(f"{i:040X}", f"r{i}", (address,), flags=frozenset({"Guard", "Exit"}))
        for i, address in enumerate(addresses)
    ]
    # a relay of each role far from any capture, so that both rules exist whatever the capture holds
    relays += [
        Relay("E" * 40, "entry", (ipaddress.ip_address("203.0.113.10"),), flags=frozenset({"Guard"})),
        Relay("F" * 40, "exit", (ipaddress.ip_address("203.0.113.20"),), flags=frozenset({"Exit"})),
    ]
    rules = tmp_path / "tor_rules.yaml"
    rules.write_text(build(Snapshot(datetime(2026, 2, 28, 1), tuple(relays), source="test")).text)
    assert agree(falco, expander, path, [rules]) == matches


def upstream_files(folder: Path) -> list[Path]:
    with tarfile.open(UPSTREAM_RULES) as archive:
        archive.extractall(folder, filter="data")
    rules = next(folder.glob("falco-rules-*/rules"))
    return [rules / "falco_rules.yaml", rules / "falco-incubating_rules.yaml", rules / "falco-sandbox_rules.yaml"]


def shown(markdown: str, case: str) -> tuple[int, int]:
    """Outbound and inbound Tor alerts docs/verify.md shows for a coexistence case."""
    row = re.search(rf"^\| {re.escape(case)} \| (\d+) of (\d+) \| (\d+) of (\d+) \|", markdown, re.M)
    assert row, f"docs/verify.md has no coexistence row for {case!r}"
    return int(row[1]), int(row[3])


def test_coexistence_with_the_upstream_ruleset(falco, bundled, tmp_path) -> None:
    double = container_double(tmp_path)  # TEST SCAFFOLDING: upstream's files require the container plugin
    upstream = upstream_files(tmp_path)
    rules = tmp_path / "tor_rules.yaml"
    rules.write_text(build(bundled).text)
    disabled = [r.name for r in load_rules(*upstream).rules.values() if not r.enabled]
    enable_all = tmp_path / "enable_all.yaml"
    enable_all.write_text(yaml.safe_dump([{"rule": name, "enabled": True} for name in disabled], sort_keys=False))
    scenario = make_scenario(classify(bundled), lists=load_rules(rules).lists)
    docs = (REPO / "docs" / "verify.md").read_text()
    results = {}
    for case, before, matching in (
        ("upstream defaults, first", upstream, "first"),
        ("upstream defaults, all", upstream, "all"),
        ("every upstream rule enabled, first", [*upstream, enable_all], "first"),
        ("every upstream rule enabled, all", [*upstream, enable_all], "all"),
    ):
        verdict = verify([rules], scenario, falco, plugins=[double], before=before, rule_matching=matching)
        by_rule = {r.rule: r for r in verdict.rules}
        results[case] = (by_rule[OUTBOUND_RULE].fired, by_rule[INBOUND_RULE].fired)
        assert shown(docs, case) == results[case], case
        if "enabled, first" in case:  # the one case that loses alerts, and the rule that takes them is named
            missed = by_rule[INBOUND_RULE].missed
            assert missed and all("(taken by rule 'Unexpected inbound connection source')" in m for m in missed)
    expected = (by_rule[OUTBOUND_RULE].expected, by_rule[INBOUND_RULE].expected)
    assert results["upstream defaults, first"] == results["upstream defaults, all"] == expected
    assert results["every upstream rule enabled, all"] == expected
    assert results["every upstream rule enabled, first"][1] < expected[1]
