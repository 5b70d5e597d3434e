"""Compaction: exact (no address lost, none added), split for hash-set lookups, lossy only when asked."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tor_sets.compact import aggregate_lossy, check_width, collapse, split
from tor_sets.errors import SanityError

ip = ipaddress.ip_address

v4 = st.integers(0xC6336400, 0xC63364FF).map(ipaddress.IPv4Address)  # 198.51.100.0/24: dense, so blocks form
v4_wide = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 511).map(lambda i: ipaddress.IPv6Address(0x20010DB8 << 96 | i))
addresses = st.lists(st.one_of(v4, v4_wide, v6), max_size=300)


def expand(networks):
    return {a for n in networks for a in n}


@settings(max_examples=300, deadline=None)
@given(addresses)
def test_collapse_is_exact_and_matches_ipaddress(values):
    networks = collapse(values)
    assert expand(networks) == set(values)
    reference = [
        *ipaddress.collapse_addresses(ipaddress.ip_network(a) for a in values if a.version == 4),
        *ipaddress.collapse_addresses(ipaddress.ip_network(a) for a in values if a.version == 6),
    ]
    assert networks == reference


@settings(max_examples=300, deadline=None)
@given(addresses, st.sampled_from([2, 4, 16, 64, 1 << 20]))
def test_split_covers_exactly_the_input(values, expand_below):
    compacted = split(values, expand_below=expand_below)
    assert compacted.covers() == set(values)
    assert all(n.num_addresses >= expand_below for n in compacted.networks)
    assert len(set(compacted.addresses)) == len(compacted.addresses)
    assert not any(a in n for a in compacted.addresses for n in compacted.networks if a.version == n.version)


@settings(max_examples=100, deadline=None)
@given(st.lists(v4, max_size=120), st.integers(0, 64))
def test_lossy_aggregation_only_adds_within_budget(values, budget):
    compacted, added = aggregate_lossy(values, budget=budget, min_prefix_v4=24)
    covered = compacted.covers()
    assert set(values) <= covered
    assert len(covered) - len(set(values)) == added <= budget


@pytest.mark.parametrize(
    "given_, expected",
    [
        (["198.51.100.0", "198.51.100.1"], ["198.51.100.0/31"]),  # neighbours merge
        (["198.51.100.1", "198.51.100.2"], ["198.51.100.1/32", "198.51.100.2/32"]),  # unaligned: no merge
        (["198.51.100.7", "198.51.100.7"], ["198.51.100.7/32"]),  # duplicates
        ([f"198.51.100.{i}" for i in range(64)], ["198.51.100.0/26"]),
        ([f"198.51.100.{i}" for i in range(1, 8)], ["198.51.100.1/32", "198.51.100.2/31", "198.51.100.4/30"]),
        (["2001:db8::1", "198.51.100.9", "2001:db8::"], ["198.51.100.9/32", "2001:db8::/127"]),  # families apart
        (["203.0.113.255", "203.0.114.0"], ["203.0.113.255/32", "203.0.114.0/32"]),  # across a boundary
        ([], []),
    ],
)
def test_collapse_regression_table(given_, expected):
    assert [str(n) for n in collapse(map(ip, given_))] == expected


def test_split_threshold_moves_small_networks_into_addresses():
    values = [ip(f"198.51.100.{i}") for i in range(16)] + [ip("203.0.113.0"), ip("203.0.113.1")]
    assert [str(n) for n in split(values, expand_below=2).networks] == ["198.51.100.0/28", "203.0.113.0/31"]
    kept = split(values, expand_below=16)
    assert [str(n) for n in kept.networks] == ["198.51.100.0/28"]
    assert [str(a) for a in kept.addresses] == ["203.0.113.0", "203.0.113.1"]
    assert split(values, expand_below=17).networks == ()


def test_check_width_refuses_wide_networks():
    check_width([ipaddress.ip_network("198.51.0.0/16"), ipaddress.ip_network("2001:db8::/32")])
    with pytest.raises(SanityError, match="198.50.0.0/15 is wider than /16"):
        check_width([ipaddress.ip_network("198.50.0.0/15")])
    with pytest.raises(SanityError, match="wider than /32"):
        check_width([ipaddress.ip_network("2001:db8::/31")])
    check_width([ipaddress.ip_network("198.50.0.0/15")], min_prefix_v4=8)
