"""Planning a self-test lab: is the canary safe to use on this machine, and what are the lab's names?

Exports :class:`HostNetwork` (the machine's addresses and routes, read through netlink), :class:`LabPlan` and
:func:`plan_lab`, which refuses a canary outside 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32, anything in
192.0.2.0/24, and any canary whose lab network (its /24, or /64 for IPv6) overlaps an address or a route of the
machine (default routes aside: they cover everything and take no part, since the lab has none).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from tor_sets.errors import SanityError, TorSetsError, UsageError
from tor_sets.relays import IPAddress, IPNetwork

__all__ = [
    "DOCUMENTATION_NETWORKS",
    "FORBIDDEN_NETWORK",
    "HostNetwork",
    "LabPlan",
    "iproute_class",
    "plan_lab",
]

#: where a canary may come from (RFC 5737 TEST-NET-2 and -3, RFC 3849)
DOCUMENTATION_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)
#: refused outright: the network of the machines this project runs on
FORBIDDEN_NETWORK = ipaddress.ip_network("192.0.2.0/24")


@dataclass(frozen=True, slots=True)
class HostNetwork:
    """The machine's own addresses and routes (its initial network namespace).

    Attributes:
        addresses: every interface address, with its prefix (``192.0.2.2/24``).
        routes: every route destination of every table except default routes.
        links: interface names.
    """

    addresses: frozenset[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    routes: frozenset[IPNetwork]
    links: frozenset[str] = frozenset()

    @classmethod
    def read(cls) -> HostNetwork:
        """Read the namespace this process runs in through netlink.

        Raises:
            TorSetsError: netlink cannot be read (pyroute2 missing, no permission).
        """
        iproute = iproute_class()
        addresses = set()
        routes: set[IPNetwork] = set()
        links = set()
        try:
            with iproute() as ipr:
                for msg in ipr.get_addr():
                    value = msg.get_attr("IFA_ADDRESS")
                    if value:
                        addresses.add(ipaddress.ip_interface(f"{value.split('%', 1)[0]}/{msg['prefixlen']}"))
                for msg in ipr.get_routes(family=socket.AF_UNSPEC, table=None):
                    if msg["family"] not in (socket.AF_INET, socket.AF_INET6) or msg["dst_len"] == 0:
                        continue
                    dst = msg.get_attr("RTA_DST")
                    if dst:
                        routes.add(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
                for msg in ipr.get_links():
                    name = msg.get_attr("IFLA_IFNAME")
                    if name:
                        links.add(str(name))
        except OSError as exc:
            raise TorSetsError(f"cannot read the machine's addresses and routes: {exc}") from exc
        return cls(frozenset(addresses), frozenset(routes), frozenset(links))

    def conflicts(self, network: IPNetwork) -> list[str]:
        """What of the machine's network overlaps ``network`` (descriptions; empty when nothing does)."""
        found = [
            f"address {a}"
            for a in sorted(self.addresses, key=str)
            if a.version == network.version and a.network.overlaps(network)
        ]
        found += [
            f"route {r}" for r in sorted(self.routes, key=str) if r.version == network.version and r.overlaps(network)
        ]
        return found


@dataclass(frozen=True, slots=True)
class LabPlan:
    """Names and addresses of one lab.

    Attributes:
        canary: the canary, put in the relay namespace.
        client: the client namespace's address, in the same lab network.
        network: the lab network (the canary's /24, or /64 for IPv6).
        client_ns, relay_ns: namespace names (``tor-sets-lab-TOKEN-client`` / ``-relay``).
        client_if, relay_if: the veth ends (``tslTOKENc`` / ``tslTOKENr``, within 15 characters).
        bystander: a second address of the relay namespace that is no canary: connections with it must stay
            silent.
    """

    canary: IPAddress
    client: IPAddress
    network: IPNetwork
    client_ns: str
    relay_ns: str
    client_if: str
    relay_if: str
    bystander: IPAddress | None = None

    @property
    def family(self) -> int:
        """``AF_INET`` or ``AF_INET6``."""
        return socket.AF_INET if self.canary.version == 4 else socket.AF_INET6


def plan_lab(canary: IPAddress | str, *, host: HostNetwork, token: str | None = None) -> LabPlan:
    """Check that ``canary`` is safe to use on this machine and name the lab.

    Args:
        canary: the canary address.
        host: the machine's network (:meth:`HostNetwork.read`).
        token: the lab's unique part (default: 8 random hex digits).

    Raises:
        SanityError: the canary is no documentation address, lies in 192.0.2.0/24, is the network or broadcast
            address of its lab network, or its lab network overlaps an address or route of the machine.
        UsageError: a token that is not 8 lower-case hex digits.

    >>> plan = plan_lab("198.51.100.77", host=HostNetwork(frozenset(), frozenset()), token="0a1b2c3d")
    >>> str(plan.client), str(plan.network), plan.relay_ns, plan.client_if
    ('198.51.100.1', '198.51.100.0/24', 'tor-sets-lab-0a1b2c3d-relay', 'tsl0a1b2c3dc')
    """
    try:
        address = ipaddress.ip_address(canary) if isinstance(canary, str) else canary
    except ValueError:
        raise SanityError(f"canary {canary!r} is not an IP address") from None
    if address.version == 4 and address in FORBIDDEN_NETWORK:
        raise SanityError(f"canary {address} is in {FORBIDDEN_NETWORK}, which this project never uses")
    if not any(address.version == n.version and address in n for n in DOCUMENTATION_NETWORKS):
        allowed = ", ".join(str(n) for n in DOCUMENTATION_NETWORKS)
        raise SanityError(f"canary {address} is not in a documentation range ({allowed})")
    prefix = 24 if address.version == 4 else 64
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    last = network.broadcast_address if address.version == 4 else None
    if address in (network.network_address, last):
        raise SanityError(f"canary {address} is the network or broadcast address of {network}")
    conflicts = host.conflicts(network)
    if conflicts:
        raise SanityError(
            f"canary {address}: its lab network {network} overlaps this machine's " + ", ".join(conflicts[:5])
        )
    client, bystander = _two_free(network, address)
    token = token or secrets.token_hex(4)
    if not re.fullmatch(r"[0-9a-f]{8}", token):
        raise UsageError(f"token must be 8 lower-case hex digits, got {token!r}")
    return LabPlan(
        canary=address,
        client=client,
        network=network,
        client_ns=f"tor-sets-lab-{token}-client",
        relay_ns=f"tor-sets-lab-{token}-relay",
        client_if=f"tsl{token}c",
        relay_if=f"tsl{token}r",
        bystander=bystander,
    )


def _two_free(network: IPNetwork, canary: IPAddress) -> tuple[IPAddress, IPAddress]:
    """The first two addresses of ``network`` after its network address that are not the canary."""
    found = [network.network_address + n for n in range(1, 4) if network.network_address + n != canary]
    return found[0], found[1]


def iproute_class() -> Any:
    """pyroute2's ``IPRoute`` (netlink), imported when first needed: pyroute2 is an extra.

    Raises:
        TorSetsError: pyroute2 is not installed.
    """
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - pyroute2 is in the selftest extra
        raise TorSetsError("the self-test needs pyroute2: pip install 'tor-sets[selftest]'") from exc
    return IPRoute
