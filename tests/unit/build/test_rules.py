"""Falco rules from relay sets: exact coverage, determinism, profiles, options, atomic writes."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import stat
from dataclasses import replace

import pytest
import yaml

from tests.conftest import DATA
from tor_sets.build import BuildOptions, build, write_rules
from tor_sets.errors import SanityError
from tor_sets.falco import render_2022
from tor_sets.falco.generate import DEFAULT_TAGS, INBOUND_RULE, OUTBOUND_RULE, TUNING_MACRO, RulesOptions
from tor_sets.relays import Relay, Role, Snapshot, classify

#: every rule ends with the users' tuning hook, after the address lookup and the result checks
UNTUNED = f" and not {TUNING_MACRO}"
#: falcosecurity/rules' stable and incubating files (tests/data/PROVENANCE.md)
UPSTREAM = (DATA / "rules" / "falco_rules.yaml", DATA / "rules" / "falco-incubating_rules.yaml")


def load(text):
    items = yaml.safe_load(text)
    lists = {i["list"]: i["items"] for i in items if "list" in i}
    macros = {i["macro"]: i["condition"] for i in items if "macro" in i}
    rules = {i["rule"]: i for i in items if "rule" in i}
    return items, lists, macros, rules


def matched_by(condition, lists, macros, field):
    """The addresses a condition's `field in (...)` and network clauses cover, resolving macros and lists."""
    for name, body in macros.items():
        condition = re.sub(rf"\b{name}\b", f"({body})", condition)
    covered = set()
    net_field = field.replace("ip", "net")
    for fld, names in re.findall(r"(fd\.\w+) in \(([^)]*)\)", condition):
        if fld not in (field, net_field):
            continue
        for name in (n.strip() for n in names.split(",")):
            for value in lists[name]:
                if fld == field:
                    assert "/" not in value, f"{value} in an address list"
                    covered.add(ipaddress.ip_address(value))
                else:
                    covered.update(ipaddress.ip_network(value))
    return covered


def test_bundled_rules_hold_exactly_entry_for_outbound_and_exit_for_inbound(bundled):
    built = build(bundled)
    sets = classify(bundled)
    _, lists, macros, rules = load(built.text)
    outbound = rules[OUTBOUND_RULE]["condition"]
    inbound = rules[INBOUND_RULE]["condition"]
    assert matched_by(outbound, lists, macros, "fd.sip") == set(sets.entry)
    assert matched_by(inbound, lists, macros, "fd.cip") == set(sets.exit)
    # the outbound rule never looks at the client end, the inbound rule never at the server end
    assert not matched_by(outbound, lists, macros, "fd.cip") and not matched_by(inbound, lists, macros, "fd.sip")
    assert inbound == "evt.type in (accept, accept4) and tor_exit_relay_client and evt.rawres >= 0" + UNTUNED
    assert outbound == (
        "evt.type = connect and tor_entry_relay_server and (evt.rawres >= 0 or evt.res = EINPROGRESS)" + UNTUNED
    )
    assert "evt.dir" not in built.text
    # every address is written once
    values = [v for items in lists.values() for v in items]
    assert len(values) == len(set(values))


def test_output_is_deterministic_whatever_the_relay_order(bundled):
    shuffled = list(bundled.relays)
    random.Random(7).shuffle(shuffled)
    assert build(bundled).text == build(replace(bundled, relays=tuple(shuffled))).text


def test_bundled_size_beats_the_2022_tool(bundled):
    # the 2022 tool's four files for this snapshot and coverage (210,968 bytes; docs/benchmarks.md has the figures)
    theirs = sum(len(text.encode()) for text in render_2022(classify(bundled)).values())
    assert len(build(bundled).text.encode()) <= 0.6 * theirs


def snapshot(*relays: Relay) -> Snapshot:
    from datetime import datetime

    return Snapshot(relays_published=datetime(2026, 2, 28, 1), relays=relays, source="test")


def r(fp: str, *addresses: str, flags: tuple[str, ...] = ("Guard",), exits: tuple[str, ...] = ()) -> Relay:
    return Relay(
        fp * 40,
        or_addresses=tuple(map(ipaddress.ip_address, addresses)),
        flags=frozenset(flags),
        exit_addresses=tuple(map(ipaddress.ip_address, exits)),
    )


SMALL = snapshot(
    r("A", "185.220.101.1", "2a01:4f8::1"),
    r("B", "185.220.102.8", flags=("Guard", "Exit"), exits=("185.220.102.9",)),
    *[r(c, f"185.220.100.{i}", flags=("Exit",)) for i, c in enumerate("0123456789ABCDEF")],
    r("C", "185.220.103.5", flags=("Exit", "BadExit")),
    r("D", "185.220.104.5", flags=("Authority",)),
)


SIXTEEN = BuildOptions(rules=RulesOptions(expand_below=16))


def test_small_snapshot_layout():
    text = build(SMALL, SIXTEEN).text
    _, lists, macros, _ = load(text)
    assert lists["tor_entry_only_ipv4_addresses"] == ["185.220.101.1", "185.220.104.5"]
    assert lists["tor_entry_only_ipv6_addresses"] == ["2a01:4f8::1"]
    assert lists["tor_entry_and_exit_ipv4_addresses"] == ["185.220.102.8"]
    assert lists["tor_exit_only_ipv4_addresses"] == ["185.220.102.9"]
    assert lists["tor_exit_only_ipv4_networks"] == ["185.220.100.0/28"]
    assert lists["tor_exit_only_ipv6_addresses"] == []  # empty lists are [] (Falco rejects null)
    assert "items: []" in text and "185.220.103.5" not in text  # BadExit left out
    assert "fd.cnet in (tor_exit_only_ipv4_networks)" in macros["tor_exit_relay_client"]


def test_options_change_what_is_written():
    no_auth = build(SMALL, BuildOptions(include_authorities=False)).text
    assert "185.220.104.5" not in no_auth
    assert "185.220.103.5" in build(SMALL, BuildOptions(include_bad_exits=True)).text
    excluded = build(SMALL, BuildOptions(exclude=(ipaddress.ip_network("185.220.100.0/29"),))).text
    exit_only = load(excluded)[1]["tor_exit_only_ipv4_addresses"]
    assert [a for a in exit_only if a.startswith("185.220.100.")] == [f"185.220.100.{i}" for i in range(8, 16)]
    v4_only = build(SMALL, BuildOptions(rules=RulesOptions(families=frozenset({4})))).text
    assert not [n for n in load(v4_only)[1] if "ipv6" in n] and "2a01" not in v4_only
    outbound = build(
        SMALL, BuildOptions(rules=RulesOptions(rules=frozenset({"outbound"}), roles=frozenset({Role.ENTRY})))
    ).text
    _, lists, _, rules = load(outbound)
    assert list(rules) == [OUTBOUND_RULE] and "tor_entry_ipv4_addresses" in lists
    quiet = build(SMALL, BuildOptions(rules=RulesOptions(priority="notice", tags=("a", "b")))).text
    assert all(rule["priority"] == "NOTICE" and rule["tags"] == ["a", "b"] for rule in load(quiet)[3].values())
    expanded = build(SMALL, BuildOptions(rules=RulesOptions(expand_below=17))).text
    assert "/28" not in expanded and "185.220.100.15" in expanded


def test_profiles():
    current = build(SMALL).text  # Falco 0.41 and later: container fields come from the plugin, which appends them
    assert "required_engine_version: 0.50.0" in current and "%container." not in current
    before_plugin = build(SMALL, BuildOptions(rules=RulesOptions(falco_version="0.37"))).text
    assert "required_engine_version: 0.31.0" in before_plugin
    assert "container_id=%container.id container_name=%container.name" in before_plugin
    assert "required_engine_version: '26'" in build(SMALL, BuildOptions(rules=RulesOptions(falco_version="0.36"))).text
    v6net = snapshot(*[r(c, f"2a01:4f8::{i:x}") for i, c in enumerate("0123456789ABCDEF")])
    entry_only = RulesOptions(rules=frozenset({"outbound"}), roles=frozenset({Role.ENTRY}), expand_below=16)
    modern = load(build(v6net, BuildOptions(rules=entry_only)).text)[1]
    assert modern["tor_entry_ipv6_networks"] == ["2a01:4f8::/124"]
    legacy_text = build(v6net, BuildOptions(rules=replace(entry_only, falco_version="legacy"))).text
    legacy = load(legacy_text)[1]
    assert "required_engine_version" not in legacy_text
    assert "tor_entry_ipv6_networks" not in legacy and len(legacy["tor_entry_ipv6_addresses"]) == 16


def test_2022_list_names_keep_users_exceptions_working():
    _, lists, macros, _ = load(build(SMALL, BuildOptions(rules=RulesOptions(list_names="2022"))).text)
    assert {"tor_ipv4_entry_nodes", "tor_ipv4_exit_nodes", "tor_ipv6_entry_nodes", "tor_ipv6_exit_nodes"} <= set(lists)
    assert "185.220.102.8" in lists["tor_ipv4_entry_nodes"] and "185.220.102.8" in lists["tor_ipv4_exit_nodes"]
    assert "tor_ipv4_entry_nodes" in macros["tor_entry_relay_server"]


def test_refuses_rules_that_cannot_fire():
    with pytest.raises(SanityError, match="no exit relay address"):
        build(snapshot(r("A", "185.220.101.1")))
    with pytest.raises(SanityError, match="185.220.1.0/24 is wider than /25"):
        build(
            snapshot(*[r("A", f"185.220.1.{j}") for j in range(256)]),
            BuildOptions(
                rules=RulesOptions(rules=frozenset({"outbound"}), roles=frozenset({Role.ENTRY}), min_prefix_v4=25)
            ),
        )


def test_header_names_provenance(bundled):
    head = build(bundled).text.split("\n- ")[0]
    assert "relays_published: 2026-02-28 01:00:00 UTC" in head and "tor-sets 0.1.0" in head
    assert "entry_ipv4 4177" in head


def test_write_rules_is_atomic_and_skips_unchanged(tmp_path):
    path = tmp_path / "rules.d" / "tor_rules.yaml"
    assert write_rules(path, "a: 1\n") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    assert write_rules(path, "a: 1\n") is False
    assert path.stat().st_mtime_ns == before - 10**9
    assert write_rules(path, "a: 2\n") is True and path.read_text() == "a: 2\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["tor_rules.yaml"]


def upstream_items():
    return [item for path in UPSTREAM for item in yaml.safe_load(path.read_text())]


_MITRE_ID = re.compile(r"T\d{4}(\.\d{3})?|TA\d{4}")
_COMPLIANCE = re.compile(r"PCI_DSS_|NIST_")


def tag_shape(tags):
    """Where each kind of tag stands, as falcosecurity/rules writes them: maturity first, then workloads, areas and
    topics, then the MITRE tactics, one MITRE identifier (technique, or tactic number when there is none) and
    compliance identifiers last; None when the list does not follow that order."""

    def kind(position, tag):
        if position == 0 and tag.startswith("maturity_"):
            return "maturity"
        if tag.startswith("mitre_"):
            return "tactic"
        if _MITRE_ID.fullmatch(tag):
            return "id"
        return "compliance" if _COMPLIANCE.match(tag) else "topic"

    kinds = [kind(i, t) for i, t in enumerate(tags)]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    expected = ["maturity", "topic", "tactic", "id", "compliance"]
    if collapsed != [k for k in expected if k in collapsed] or kinds.count("id") != 1 or "maturity" not in kinds:
        return None
    return collapsed


def test_tags_follow_falcosecurity_rules_order():
    upstream = [item["tags"] for item in upstream_items() if "rule" in item and "tags" in item]
    assert len(upstream) == 56
    # the convention holds for every upstream rule (so it is theirs, not ours) ...
    assert [t for t in upstream if tag_shape(t) is None] == []
    assert all(t.index("host") < t.index("container") for t in upstream if {"host", "container"} <= set(t))
    assert not [t for t in upstream if any(x.startswith("TA") for x in t) and any(x.startswith("T1") for x in t)]
    # ... and ours follow it: incubating, both workloads, the area, the topic, tactic and technique
    assert tag_shape(DEFAULT_TAGS) == ["maturity", "topic", "tactic", "id"]
    assert DEFAULT_TAGS == (
        "maturity_incubating", "host", "container", "network", "tor", "mitre_command_and_control", "T1090.003"
    )  # fmt: skip
    _, _, _, rules = load(build(SMALL).text)
    assert all(rule["tags"] == list(DEFAULT_TAGS) for rule in rules.values())


@pytest.mark.parametrize(
    "options",
    [
        RulesOptions(),
        RulesOptions(rules=frozenset({"outbound"}), roles=frozenset({Role.RELAY})),
        RulesOptions(rules=frozenset({"inbound"}), roles=frozenset({Role.EXIT})),
        RulesOptions(list_names="2022"),
        RulesOptions(falco_version="0.37"),
        RulesOptions(falco_version="legacy"),
    ],
    ids=["default", "relay", "inbound", "2022", "0.37", "legacy"],
)
def test_rules_exclude_the_tuning_macro_last(options):
    items, _, macros, rules = load(build(SMALL, BuildOptions(rules=options)).text)
    # upstream's own placeholder, defined exactly as falco_rules.yaml and falco-incubating_rules.yaml define it
    theirs = {i["condition"] for i in upstream_items() if i.get("macro") == "never_true"}
    assert theirs == {macros["never_true"]} == {"(evt.num=0)"}
    assert macros[TUNING_MACRO] == "(never_true)"
    names = [i.get("macro") or i.get("rule") for i in items if "macro" in i or "rule" in i]
    # a macro sees only the macros before it; the rules come after both
    assert names.index("never_true") < names.index(TUNING_MACRO) < min(names.index(r) for r in rules)
    for rule in rules.values():
        # evt.type, then the relay lookup, then the result check, then the users' tuning
        condition = rule["condition"]
        assert condition.endswith(UNTUNED) and condition.count(TUNING_MACRO) == 1
        assert condition.startswith("evt.type ") and condition.index("tor_") < condition.index("evt.rawres")


@pytest.mark.parametrize(
    "options",
    [
        RulesOptions(expand_below=16),
        RulesOptions(rules=frozenset({"outbound"})),
        RulesOptions(rules=frozenset({"inbound"})),
        RulesOptions(roles=frozenset({Role.ENTRY, Role.EXIT, Role.RELAY})),
        RulesOptions(list_names="2022"),
        RulesOptions(list_names="2022", rules=frozenset({"outbound"})),
        RulesOptions(networks_only=True),
    ],
    ids=["default", "outbound", "inbound", "relay", "2022", "2022-outbound", "networks-only"],
)
def test_every_list_written_is_read_by_a_macro(options):
    # Falco warns about a list nothing reads (LOAD_UNUSED_LIST), and the file is larger for nothing
    _, lists, macros, _ = load(build(SMALL, BuildOptions(rules=options)).text)
    read = {name for condition in macros.values() for name in re.findall(r"\btor_\w+", condition)}
    assert set(lists) <= read, sorted(set(lists) - read)
    assert {n for n in read if n in lists or n.endswith(("_addresses", "_networks", "_nodes"))} <= set(lists)
