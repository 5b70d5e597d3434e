"""The scenario maker (tor_sets.verify.scenarios): labelled connections whose truth is the relay sets.

Positives and negatives per role, both families and every connection kind, every list of the file under test
sampled, exclusions, the outbound rule's role, and the same scenario for the same seed. Pure: no engine, no file
but the capture of the last tests.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.scap_reader import connections
from tor_sets.build import BuildOptions, build
from tor_sets.falco.load import load_rules
from tor_sets.relays import RelaySets, Role, Snapshot, classify
from tor_sets.verify import Expectation, Scenario, make_scenario, write_scenario
from tor_sets.verify.scenarios import EINPROGRESS, GAP_NS, START_NS

ECONNREFUSED = -111


@pytest.fixture(scope="module")
def sets(bundled: Snapshot) -> RelaySets:
    return classify(bundled)


@pytest.fixture(scope="module")
def lists(bundled: Snapshot) -> dict[str, tuple[str, ...]]:
    return dict(load_rules(build(bundled).text).lists)


@pytest.fixture(scope="module")
def scenario(sets: RelaySets, lists: dict[str, tuple[str, ...]]) -> Scenario:
    return make_scenario(sets, lists=lists)


def peer(lab: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    c = lab.connection  # type: ignore[attr-defined]
    return c.server if c.kind == "connect" else c.client


def test_the_same_seed_gives_the_same_scenario(sets: RelaySets, lists: dict[str, tuple[str, ...]]) -> None:
    assert make_scenario(sets, lists=lists, seed=5) == make_scenario(sets, lists=lists, seed=5)
    assert make_scenario(sets, lists=lists, seed=5) != make_scenario(sets, lists=lists, seed=6)


def test_each_outbound_positive_is_a_live_connect_to_a_watched_relay(scenario: Scenario, sets: RelaySets) -> None:
    positives = [lab for lab in scenario.connections if Expectation.OUTBOUND in lab.expected]
    assert len(positives) > 400
    for lab in positives:
        assert lab.connection.kind == "connect" and lab.connection.result in (0, EINPROGRESS), lab.describe()
        assert lab.connection.server in sets.entry, lab.describe()


def test_each_inbound_positive_is_an_accept_from_an_exit_relay(scenario: Scenario, sets: RelaySets) -> None:
    positives = [lab for lab in scenario.connections if Expectation.INBOUND in lab.expected]
    assert len(positives) > 400
    for lab in positives:
        assert lab.connection.kind in ("accept", "accept4") and lab.connection.client in sets.exit, lab.describe()


def test_each_negative_is_no_tor_connection_of_its_kind(scenario: Scenario, sets: RelaySets) -> None:
    negatives = [lab for lab in scenario.connections if not lab.expected]
    assert len(negatives) > 300
    for lab in negatives:
        c = lab.connection
        if c.kind == "connect":
            assert c.server not in sets.entry or c.result == ECONNREFUSED or c.server.is_loopback, lab.describe()
        else:
            assert c.client not in sets.exit or c.client.is_loopback, lab.describe()


@pytest.mark.parametrize(
    "label",
    [
        "public non-Tor IPv4 address",
        "public non-Tor IPv6 address",
        "failed connect to a relay (IPv4)",
        "failed connect to a relay (IPv6)",
        "exit-only relay (IPv4), outbound",
        "exit-only relay (IPv6), outbound",
        "entry-only relay (IPv4), inbound",
        "entry-only relay (IPv6), inbound",
        "loopback",
    ],
)
def test_every_sort_of_negative_is_there(scenario: Scenario, label: str) -> None:
    found = [lab for lab in scenario.connections if label in lab.label]
    assert found and not any(lab.expected for lab in found)


@pytest.mark.parametrize("kind", ["connect", "accept", "accept4"])
@pytest.mark.parametrize("version", [4, 6])
def test_positives_cover_every_kind_and_family(scenario: Scenario, kind: str, version: int) -> None:
    assert any(
        lab.expected and lab.connection.kind == kind and peer(lab).version == version for lab in scenario.connections
    )


def test_connects_succeed_are_pending_or_are_refused(scenario: Scenario) -> None:
    results = {lab.connection.result for lab in scenario.connections if lab.connection.kind == "connect"}
    assert results == {0, EINPROGRESS, ECONNREFUSED}


def test_every_list_of_the_file_is_sampled(scenario: Scenario, lists: dict[str, tuple[str, ...]]) -> None:
    labels = {lab.label.split("; ", 1)[1] for lab in scenario.connections}
    address_lists = {name for name, items in lists.items() if items and "/" not in items[0]}
    assert address_lists and all(f"item of list {name}" in labels for name in address_lists)
    networks = [(name, ipaddress.ip_network(item)) for name, items in lists.items() for item in items if "/" in item]
    assert networks
    for name, network in networks:
        inside = {
            peer(lab) for lab in scenario.connections if lab.label.endswith(f"in network {network} of list {name}")
        }
        assert inside == {network.network_address, network[network.num_addresses // 2], network.broadcast_address}


def test_each_network_of_a_list_is_tried_at_its_ends_and_just_outside(sets: RelaySets) -> None:
    """Truth stays with the relay sets: a network of the file that holds no relay gives negatives only."""
    network = ipaddress.ip_network("9.9.9.0/28")
    assert not any(a.version == 4 and a in network for a in sets.relay)
    scenario = make_scenario(sets, lists={"mine": ["9.9.9.0/28"]})
    tried: dict[str, set[ipaddress.IPv4Address | ipaddress.IPv6Address]] = defaultdict(set)
    for lab in scenario.connections:
        tried[lab.label.split("; ", 1)[1]].add(peer(lab))
        if "9.9.9.0/28" in lab.label:
            assert not lab.expected, lab.describe()
    inside = ipaddress.ip_address("9.9.9.0"), ipaddress.ip_address("9.9.9.8"), ipaddress.ip_address("9.9.9.15")
    assert tried["in network 9.9.9.0/28 of list mine"] == set(inside)
    outside = {ipaddress.ip_address("9.9.8.255"), ipaddress.ip_address("9.9.9.16")}
    assert tried["just outside network 9.9.9.0/28 of list mine"] == outside


def test_excluded_ranges_hold_negatives_only(sets: RelaySets) -> None:
    some = sorted(sets.family(Role.ENTRY, 4), key=int)[10]
    excluded = ipaddress.ip_network(f"{some}/24", strict=False)
    scenario = make_scenario(sets, exclude=[excluded])
    inside = [lab for lab in scenario.connections if peer(lab).version == 4 and peer(lab) in excluded]
    assert any("inside excluded range" in lab.label for lab in inside)
    assert not any(lab.expected for lab in inside)
    assert some in {peer(lab) for lab in inside}  # the relay itself is tried, and must stay silent


def test_an_outbound_rule_on_every_relay_expects_relays_of_no_role(sets: RelaySets) -> None:
    scenario = make_scenario(sets, outbound_role=Role.RELAY, size=4000)
    neither = sets.relay - sets.entry - sets.exit
    watched = [lab for lab in scenario.connections if Expectation.OUTBOUND in lab.expected]
    assert any(lab.connection.server in neither for lab in watched)
    assert all(lab.connection.server in sets.relay for lab in watched)


def test_timestamps_label_the_connections(scenario: Scenario) -> None:
    stamps = [lab.connection.ts_ns for lab in scenario.connections]
    assert stamps == [START_NS + (i + 1) * GAP_NS for i in range(len(stamps))]
    assert set(scenario.by_ts()) == set(stamps)
    counts = scenario.counts()
    assert counts["connections"] == len(stamps) == counts["positive"] + counts["negative"]
    assert scenario.expected(Expectation.OUTBOUND) | scenario.expected(Expectation.INBOUND) == {
        lab.connection.ts_ns for lab in scenario.connections if lab.expected
    }


@pytest.mark.parametrize("size", [200, 1200, 3000])
def test_size_is_a_floor_when_the_sets_allow(sets: RelaySets, size: int) -> None:
    assert len(make_scenario(sets, size=size).connections) >= size


def test_the_capture_holds_every_connection_at_its_time(sets: RelaySets, tmp_path: Path) -> None:
    scenario = make_scenario(sets, size=200)
    path = tmp_path / "scenario.scap"
    events = write_scenario(scenario, path)
    connects = sum(lab.connection.kind == "connect" for lab in scenario.connections)
    assert events == 6 * connects + 4 * (len(scenario.connections) - connects)
    read = [(r.ts_ns, r.kind, r.client, r.server) for r in connections(path)]
    assert read == [(c.ts_ns, c.kind, c.client, c.server) for c in (lab.connection for lab in scenario.connections)]


def test_the_scenario_follows_the_rules_options(bundled: Snapshot) -> None:
    """Lists of a build with exclusions: sampled items never come from the excluded range."""
    excluded = ipaddress.ip_network("185.220.0.0/16")
    built = build(bundled, BuildOptions(exclude=(excluded,)))
    scenario = make_scenario(built.sets, lists=load_rules(built.text).lists, exclude=[excluded])
    listed = [lab for lab in scenario.connections if "item of list" in lab.label]
    assert listed and not any(peer(lab).version == 4 and peer(lab) in excluded for lab in listed)
