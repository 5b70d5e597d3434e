"""Compaction of address sets into what a Falco engine evaluates fast.

Exports :func:`collapse` (exact CIDR collapse per family), :class:`Compacted` and :func:`split` (single addresses
for hash-set lookups, true networks for ``fd.snet``/``fd.cnet`` lists, small networks expanded back into
addresses), :func:`check_width` (refuse networks wider than a limit) and :func:`aggregate_lossy` (opt-in: cover
nearby addresses with one prefix while the addresses it adds stay under a budget).

Why split: current libsinsp keeps the values of an ``in`` list on an address field (``fd.sip``) in a hash set, but
scans the values of a network field (``fd.snet``) one by one for every event. So a network is worth its list entry
only when it replaces many addresses; below the threshold its addresses go back into the hash set.

Example: 185.220.101.0 .. 185.220.101.63 collapse into one ``/26``; with ``expand_below=8`` it stays a network,
while 198.51.100.4/31 (two addresses) is written as two addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from tor_sets.errors import SanityError
from tor_sets.relays import IPAddress, IPNetwork

__all__ = [
    "DEFAULT_EXPAND_BELOW",
    "Compacted",
    "aggregate_lossy",
    "check_width",
    "collapse",
    "split",
]

#: networks with fewer addresses than this are written as addresses (set from docs/benchmarks.md)
DEFAULT_EXPAND_BELOW = 64


def _blocks(values: list[int], bits: int) -> list[tuple[int, int]]:
    """Cover sorted, unique integers exactly with aligned power-of-two blocks: ``(start, prefixlen)`` pairs.

    Runs of consecutive values are cut into the largest aligned blocks, left to right, which is what
    ``ipaddress.collapse_addresses`` returns, in linear time.

    >>> _blocks([0, 1, 2, 3, 5, 6, 7], 32)
    [(0, 30), (5, 32), (6, 31)]
    """
    out: list[tuple[int, int]] = []
    i = 0
    n = len(values)
    while i < n:
        start = values[i]
        j = i
        while j + 1 < n and values[j + 1] == values[j] + 1:
            j += 1
        end = values[j]
        while start <= end:
            size = start & -start if start else 1 << bits
            while size > end - start + 1:
                size >>= 1
            out.append((start, bits - size.bit_length() + 1))
            start += size
        i = j + 1
    return out


def _by_family(addresses: Iterable[IPAddress]) -> tuple[list[int], list[int]]:
    v4: set[int] = set()
    v6: set[int] = set()
    for address in addresses:
        (v4 if address.version == 4 else v6).add(int(address))
    return sorted(v4), sorted(v6)


def collapse(addresses: Iterable[IPAddress]) -> list[IPNetwork]:
    """Collapse addresses into the fewest networks covering exactly them, IPv4 first, each family sorted.

    >>> [str(n) for n in collapse(map(ipaddress.ip_address, ["10.0.0.1", "10.0.0.0", "2001:db8::1", "10.0.0.3"]))]
    ['10.0.0.0/31', '10.0.0.3/32', '2001:db8::1/128']
    """
    v4, v6 = _by_family(addresses)
    return [
        *(ipaddress.IPv4Network((start, prefix)) for start, prefix in _blocks(v4, 32)),
        *(ipaddress.IPv6Network((start, prefix)) for start, prefix in _blocks(v6, 128)),
    ]


@dataclass(frozen=True, slots=True)
class Compacted:
    """One address set, as single addresses and multi-address networks (each sorted, IPv4 before IPv6)."""

    addresses: tuple[IPAddress, ...]
    networks: tuple[IPNetwork, ...]

    def covers(self) -> frozenset[IPAddress]:
        """Every address this compaction matches (for checks; expands the networks)."""
        out: set[IPAddress] = set(self.addresses)
        for network in self.networks:
            out.update(network)
        return frozenset(out)

    def family(self, version: int) -> Compacted:
        return Compacted(
            tuple(a for a in self.addresses if a.version == version),
            tuple(n for n in self.networks if n.version == version),
        )


def _sort_key(item: IPAddress | IPNetwork) -> tuple[int, int, int]:
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return item.version, int(item.network_address), item.prefixlen
    return item.version, int(item), 0


def split(addresses: Iterable[IPAddress], *, expand_below: int = DEFAULT_EXPAND_BELOW) -> Compacted:
    """Collapse exactly, then write every network smaller than ``expand_below`` addresses as its addresses.

    ``expand_below=2`` keeps every true network; a very large value puts everything in addresses.

    >>> c = split(map(ipaddress.ip_address, ["198.51.100.0", "198.51.100.1", "198.51.100.9"]), expand_below=4)
    >>> [str(a) for a in c.addresses], c.networks
    (['198.51.100.0', '198.51.100.1', '198.51.100.9'], ())
    >>> [str(n) for n in split(c.addresses, expand_below=2).networks]
    ['198.51.100.0/31']
    """
    singles: list[IPAddress] = []
    networks: list[IPNetwork] = []
    v4, v6 = _by_family(addresses)
    families: tuple[tuple[list[int], int, type[IPAddress], type[IPNetwork]], ...] = (
        (v4, 32, ipaddress.IPv4Address, ipaddress.IPv4Network),
        (v6, 128, ipaddress.IPv6Address, ipaddress.IPv6Network),
    )
    for values, bits, address_type, network_type in families:
        for start, prefix in _blocks(values, bits):
            size = 1 << (bits - prefix)
            if size < expand_below:
                singles.extend(address_type(v) for v in range(start, start + size))
            else:
                networks.append(network_type((start, prefix)))
    return Compacted(tuple(singles), tuple(networks))


def check_width(networks: Iterable[IPNetwork], *, min_prefix_v4: int = 16, min_prefix_v6: int = 32) -> None:
    """Refuse networks wider than ``/min_prefix_v4`` (IPv4) or ``/min_prefix_v6`` (IPv6).

    Relay addresses never form such blocks; one that does comes from a hostile or broken document and would make
    the rules alert on a whole provider.

    Raises:
        SanityError: naming the first network that is too wide.
    """
    for network in networks:
        limit = min_prefix_v4 if network.version == 4 else min_prefix_v6
        if network.prefixlen < limit:
            raise SanityError(
                f"network {network} is wider than /{limit}; refusing (use --max-width to allow wider networks)"
            )


def aggregate_lossy(
    addresses: Iterable[IPAddress], *, budget: int, min_prefix_v4: int = 24, min_prefix_v6: int = 120
) -> tuple[Compacted, int]:
    """Cover nearby addresses with shorter prefixes while the addresses added stay within ``budget``.

    Greedy: start from the exact collapse; repeatedly take the supernet (no wider than the ``min_prefix``
    limits) that merges the most existing entries for the fewest added addresses, while the total of added
    addresses stays ``<= budget``. Lossy by design: the added addresses are false positives, returned as the
    second value. Never used by default.

    >>> ips = map(ipaddress.ip_address, ["198.51.100.1", "198.51.100.2", "198.51.100.5", "198.51.100.7"])
    >>> c, added = aggregate_lossy(ips, budget=4, min_prefix_v4=29)
    >>> [str(n) for n in c.networks], added
    (['198.51.100.0/29'], 4)
    """
    current: dict[IPNetwork, None] = {n: None for n in collapse(addresses)}
    added = 0
    while True:
        best: tuple[float, IPNetwork, list[IPNetwork], int] | None = None
        candidates: dict[IPNetwork, list[IPNetwork]] = {}
        for network in current:
            limit = min_prefix_v4 if network.version == 4 else min_prefix_v6
            for prefix in range(network.prefixlen - 1, limit - 1, -1):
                candidates.setdefault(network.supernet(new_prefix=prefix), []).append(network)
        for supernet, members in candidates.items():
            if len(members) < 2:
                continue
            covered = sum(m.num_addresses for m in members)
            cost = supernet.num_addresses - covered
            if added + cost > budget:
                continue
            gain = len(members) - 1
            score = cost / gain
            if best is None or (score, -gain, _sort_key(supernet)) < (best[0], -(len(best[2]) - 1), _sort_key(best[1])):
                best = (score, supernet, members, cost)
        if best is None:
            break
        _, supernet, members, cost = best
        for member in members:
            del current[member]
        current[supernet] = None
        added += cost
    singles = sorted((n[0] for n in current if n.num_addresses == 1), key=_sort_key)
    networks = sorted((n for n in current if n.num_addresses > 1), key=_sort_key)
    return Compacted(tuple(singles), tuple(networks)), added
