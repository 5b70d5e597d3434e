"""Labelled connections for verification: what each rule must alert on, and what it must leave alone.

Exports :class:`Expectation`, :class:`Labelled`, :class:`Scenario` and :func:`make_scenario` (pure: relay sets and
the lists of a rules file in, labelled connections out), and :func:`write_scenario` (the capture file).

Truth comes from the relay sets, not from the rules file under test: a list the file lost, a wrong field, a missing
``accept4`` all show up as missed connections. Each connection is labelled by the timestamp of its exit event,
because event numbers differ between engines (the current reader drops some enter events).

Positives: addresses sampled from every watched set and from every list of the file (and for each network its first,
last and a middle address); outbound ``connect`` with result 0 and EINPROGRESS, inbound ``accept`` and ``accept4``,
IPv4 and IPv6. Negatives: public non-Tor addresses, the addresses just outside each network, the user's excluded
ranges, failed connects (ECONNREFUSED), loopback, outbound to exit-only relays and inbound from entry-only relays.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from tor_sets.onionoo import address_problem
from tor_sets.relays import IPAddress, IPNetwork, RelaySets, Role
from tor_sets.verify.capture import Connection, ConnectionKind, Interface, Process, write_capture

__all__ = [
    "Expectation",
    "Labelled",
    "Scenario",
    "make_scenario",
    "write_scenario",
]

#: 2026-02-28 01:00:00 UTC, the bundled snapshot's date, as the first event time
START_NS = 1_772_240_400 * 1_000_000_000
GAP_NS = 1_000
EINPROGRESS = -115
ECONNREFUSED = -111

HOST_V4 = ipaddress.IPv4Address("10.20.0.5")
HOST_V6 = ipaddress.IPv6Address("fd00:20::5")
PROCESSES = (
    Process(pid=4101, comm="curl", exe="/usr/bin/curl", args=("-s", "https://example.org/")),
    Process(pid=4102, comm="tor", exe="/usr/bin/tor", args=("-f", "/etc/tor/torrc")),
    Process(pid=4103, comm="nginx", exe="/usr/sbin/nginx", args=("-g", "daemon off;")),
    Process(pid=4104, comm="python3", exe="/usr/bin/python3", args=("-m", "http.server")),
)
INTERFACES = (
    Interface("eth0", HOST_V4, 24),
    Interface("eth0", HOST_V6, 64),
    Interface("lo", ipaddress.ip_address("127.0.0.1"), 8),
)


class Expectation(StrEnum):
    """Which kind of rule must alert on a connection."""

    OUTBOUND = "outbound"  # a connection to a watched entry (or any) relay
    INBOUND = "inbound"  # a connection from an exit relay


@dataclass(frozen=True, slots=True)
class Labelled:
    """A connection, the rule kinds that must alert on it (none for a negative), and why."""

    connection: Connection
    expected: frozenset[Expectation]
    label: str

    def describe(self) -> str:
        c = self.connection
        if c.kind == "connect":
            return f"connect to {c.server} (res {c.result}) by pid {c.pid}: {self.label}"
        return f"{c.kind} from {c.client} on port {c.server_port}: {self.label}"


@dataclass(frozen=True, slots=True)
class Scenario:
    connections: tuple[Labelled, ...]
    processes: tuple[Process, ...] = PROCESSES
    interfaces: tuple[Interface, ...] = INTERFACES

    def by_ts(self) -> dict[int, Labelled]:
        return {lab.connection.ts_ns: lab for lab in self.connections}

    def expected(self, kind: Expectation) -> frozenset[int]:
        return frozenset(lab.connection.ts_ns for lab in self.connections if kind in lab.expected)

    def counts(self) -> dict[str, int]:
        positives = sum(1 for lab in self.connections if lab.expected)
        return {
            "connections": len(self.connections),
            "positive": positives,
            "negative": len(self.connections) - positives,
        }


def _host(address: IPAddress) -> IPAddress:
    return HOST_V4 if address.version == 4 else HOST_V6


def _network_points(network: IPNetwork) -> list[IPAddress]:
    first = network.network_address
    last = network.broadcast_address
    middle = network[network.num_addresses // 2]
    return list(dict.fromkeys([first, middle, last]))


def _outside(network: IPNetwork) -> list[IPAddress]:
    out: list[IPAddress] = []
    below = int(network.network_address) - 1
    above = int(network.broadcast_address) + 1
    for value in (below, above):
        if 0 <= value < (1 << network.max_prefixlen):
            out.append(ipaddress.ip_address(value) if network.version == 4 else ipaddress.IPv6Address(value))
    return out


def _parse_items(lists: Mapping[str, Sequence[str]]) -> tuple[list[tuple[str, IPAddress]], list[tuple[str, IPNetwork]]]:
    addresses: list[tuple[str, IPAddress]] = []
    networks: list[tuple[str, IPNetwork]] = []
    for name, items in lists.items():
        for item in items:
            text = item.strip().strip("'\"")
            try:
                if "/" in text:
                    networks.append((name, ipaddress.ip_network(text, strict=False)))
                else:
                    addresses.append((name, ipaddress.ip_address(text)))
            except ValueError:
                continue  # not an address list (process names, ports ...)
    return addresses, networks


def _public_non_tor(rng: random.Random, tor: frozenset[IPAddress], version: int) -> IPAddress:
    while True:
        if version == 4:
            candidate: IPAddress = ipaddress.IPv4Address(rng.getrandbits(32))
        else:
            candidate = ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(125))  # 2000::/3, global unicast
        if address_problem(candidate) is None and candidate not in tor:
            return candidate


def make_scenario(
    sets: RelaySets,
    *,
    lists: Mapping[str, Sequence[str]] | None = None,
    outbound_role: Role = Role.ENTRY,
    exclude: Iterable[IPNetwork] = (),
    size: int = 1200,
    seed: int = 1,
) -> Scenario:
    """Build labelled connections.

    Args:
        sets: the truth: relay addresses per role (before exclusions).
        lists: the lists of the rules file under test (name → items); positives and near misses are drawn from
            every one of them.
        outbound_role: what the outbound rule watches (entry, or every relay).
        exclude: the user's own ranges: relays inside them must not alert.
        size: about how many connections to make (at least that many when the sets allow).
        seed: for reproducible sampling.
    """
    rng = random.Random(seed)
    exclude = tuple(exclude)

    def excluded(address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in exclude)

    outbound_set = frozenset(a for a in sets.role(outbound_role) if not excluded(a))
    inbound_set = frozenset(a for a in sets.exit if not excluded(a))
    tor = sets.entry | sets.exit | sets.relay
    connections: list[tuple[ConnectionKind, IPAddress, int, str]] = []  # kind, peer, result, label

    def outbound(peer: IPAddress, label: str, result: int | None = None) -> None:
        res = result if result is not None else rng.choice((0, EINPROGRESS))
        connections.append(("connect", peer, res, label))

    def inbound(peer: IPAddress, label: str) -> None:
        connections.append((rng.choice(("accept", "accept4")), peer, 0, label))

    def both_ways(peer: IPAddress, label: str) -> None:
        outbound(peer, label)
        inbound(peer, label)

    # positives (and their mirror image) sampled from the truth sets, every family present
    share = max(1, size // 8)
    for role, name in ((outbound_role, "outbound set"), (Role.EXIT, "exit set")):
        for version in (4, 6):
            pool = sorted(sets.family(role, version), key=int)
            for peer in rng.sample(pool, min(share, len(pool))):
                both_ways(peer, f"sampled from the {name} (IPv{version})")
    # every list of the file: some addresses, and each network's first/middle/last plus the addresses just outside
    if lists:
        addresses, networks = _parse_items(lists)
        by_list: dict[str, list[IPAddress]] = {}
        for list_name, address in addresses:
            by_list.setdefault(list_name, []).append(address)
        for list_name, values in sorted(by_list.items()):
            for peer in rng.sample(values, min(max(3, share // 8), len(values))):
                both_ways(peer, f"item of list {list_name}")
        for list_name, network in networks:
            for peer in _network_points(network):
                both_ways(peer, f"in network {network} of list {list_name}")
            for peer in _outside(network):
                if peer not in tor and address_problem(peer) is None:
                    both_ways(peer, f"just outside network {network} of list {list_name}")
    # negatives
    for version in (4, 6):
        for _ in range(max(4, size // 10)):
            both_ways(_public_non_tor(rng, tor, version), f"public non-Tor IPv{version} address")
        entry_pool = sorted(sets.family(outbound_role, version), key=int)
        for peer in rng.sample(entry_pool, min(max(4, size // 40), len(entry_pool))):
            outbound(peer, f"failed connect to a relay (IPv{version})", result=ECONNREFUSED)
        exit_only = sorted(sets.family(Role.EXIT, version) - sets.role(outbound_role), key=int)
        for peer in rng.sample(exit_only, min(max(4, size // 40), len(exit_only))):
            outbound(peer, f"exit-only relay (IPv{version}), outbound")
        entry_only = sorted(sets.family(Role.ENTRY, version) - sets.exit, key=int)
        for peer in rng.sample(entry_only, min(max(4, size // 40), len(entry_only))):
            inbound(peer, f"entry-only relay (IPv{version}), inbound")
    for network in exclude:
        inside = sorted((a for a in tor if a.version == network.version and a in network), key=int)
        for peer in inside[:8] or _network_points(network):
            both_ways(peer, f"inside excluded range {network}")
    for peer in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")):
        connections.append(("connect", peer, 0, "loopback"))
        connections.append(("accept4", peer, 0, "loopback"))

    def roles(peer: IPAddress) -> str:
        names = [r.value for r in (Role.ENTRY, Role.EXIT) if peer in sets.role(r)]
        if not names and peer in sets.relay:
            names = ["relay"]
        return "+".join(names) + " relay" if names else "not a relay"

    labelled = []
    for i, (kind, peer, result, label) in enumerate(connections):
        label = f"{roles(peer)}; {label}"
        ts = START_NS + (i + 1) * GAP_NS
        if kind == "connect":
            expected = (
                frozenset({Expectation.OUTBOUND})
                if peer in outbound_set and result in (0, EINPROGRESS)
                else frozenset()
            )
            client, server = (peer, peer) if peer.is_loopback else (_host(peer), peer)
            conn = Connection(
                "connect", client, 40000 + i % 20000, server, 443 if i % 2 else 9001, ts, PROCESSES[i % 2].pid, result
            )
        else:
            expected = frozenset({Expectation.INBOUND}) if peer in inbound_set else frozenset()
            server = peer if peer.is_loopback else _host(peer)
            conn = Connection(
                kind,
                peer,
                30000 + i % 30000,
                server,
                443 if i % 2 else 80,
                ts,
                PROCESSES[2 + i % 2].pid,
            )
        labelled.append(Labelled(conn, expected, label))
    return Scenario(tuple(labelled))


def write_scenario(scenario: Scenario, path: Path, *, compress: bool = False) -> int:
    """Write the scenario's capture file; returns the number of events."""
    return write_capture(
        path,
        (lab.connection for lab in scenario.connections),
        processes=scenario.processes,
        interfaces=scenario.interfaces,
        hostname="tor-sets-verify",
        compress=compress,
    )
