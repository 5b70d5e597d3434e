"""The relay model and classification into address sets.

Exports :class:`Relay` and :class:`Snapshot` (what a parsed Onionoo details document holds, with only validated
addresses), :class:`Role`, :class:`RelaySets`, :func:`classify`, and :func:`format_age` (how old data is, in
words, the one format of every message that tells an age).

Roles follow how Tor clients use relays (https://metrics.torproject.org/onionoo.html#details):

- ``entry``: relays with the ``Guard`` flag, the first hop of a client's circuits; optionally also the directory
  ``Authority`` relays, which every client contacts at bootstrap.
- ``exit``: relays with the ``Exit`` flag (``BadExit`` ones left out unless asked); their addresses are the OR
  addresses plus ``exit_addresses`` (traffic may leave from an address that is no OR address).
- ``relay``: every running relay (OR and exit addresses), a superset of the other two.

One IP can host several relays: sets deduplicate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "IPAddress",
    "IPNetwork",
    "Relay",
    "RelaySets",
    "Role",
    "Snapshot",
    "classify",
    "format_age",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Role(StrEnum):
    """What a relay address is to a Tor client."""

    ENTRY = "entry"
    EXIT = "exit"
    RELAY = "relay"


@dataclass(frozen=True, slots=True)
class Relay:
    """One relay of a details document; every field is validated, relay-written text is kept as data only."""

    fingerprint: str
    nickname: str = ""
    or_addresses: tuple[IPAddress, ...] = ()
    exit_addresses: tuple[IPAddress, ...] = ()
    flags: frozenset[str] = frozenset()
    running: bool = True
    country: str | None = None
    as_number: str | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    @property
    def is_entry(self) -> bool:
        return "Guard" in self.flags

    @property
    def is_exit(self) -> bool:
        return "Exit" in self.flags


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A parsed details document.

    Attributes:
        relays_published: when Onionoo last saw a consensus for this data (UTC, naive).
        relays: running relays with their validated addresses.
        version: the document's protocol version (``8.x``).
        source: where it came from (a URL, a path, ``bundled:NAME``).
        dropped: count of rejected entries by reason (``private``, ``bad-address``, ``not-running`` ...).
    """

    relays_published: datetime
    relays: tuple[Relay, ...]
    version: str = "8.0"
    source: str = ""
    dropped: Mapping[str, int] = field(default_factory=dict)

    def dropped_summary(self) -> str:
        """One line such as ``dropped 3 entries: 2 private, 1 bad-address`` (empty when nothing was dropped)."""
        total = sum(self.dropped.values())
        if not total:
            return ""
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()))
        return f"dropped {total} entries: {parts}"


@dataclass(frozen=True, slots=True)
class RelaySets:
    """Deduplicated addresses per role, each split by family on demand."""

    entry: frozenset[IPAddress] = frozenset()
    exit: frozenset[IPAddress] = frozenset()
    relay: frozenset[IPAddress] = frozenset()

    def role(self, role: Role) -> frozenset[IPAddress]:
        """The addresses of one role."""
        return {Role.ENTRY: self.entry, Role.EXIT: self.exit, Role.RELAY: self.relay}[role]

    def family(self, role: Role, version: int) -> frozenset[IPAddress]:
        """The addresses of one role and IP version (4 or 6)."""
        return frozenset(a for a in self.role(role) if a.version == version)

    def without(self, networks: Iterable[IPNetwork]) -> RelaySets:
        """These sets minus every address inside ``networks`` (the user's own ranges)."""
        nets = tuple(networks)
        if not nets:
            return self

        def keep(addresses: frozenset[IPAddress]) -> frozenset[IPAddress]:
            return frozenset(a for a in addresses if not any(a.version == n.version and a in n for n in nets))

        return RelaySets(entry=keep(self.entry), exit=keep(self.exit), relay=keep(self.relay))

    def with_extra(self, addresses: Iterable[IPAddress], roles: Iterable[Role]) -> RelaySets:
        """These sets plus ``addresses`` added to each of ``roles`` (canary addresses)."""
        extra = frozenset(addresses)
        wanted = set(roles)
        return RelaySets(
            entry=self.entry | extra if Role.ENTRY in wanted else self.entry,
            exit=self.exit | extra if Role.EXIT in wanted else self.exit,
            relay=self.relay | extra if Role.RELAY in wanted else self.relay,
        )

    def counts(self) -> dict[str, int]:
        """``{"entry_ipv4": n, "entry_ipv6": n, ...}`` for reports."""
        out = {}
        for role in Role:
            addresses = self.role(role)
            v4 = sum(1 for a in addresses if a.version == 4)
            out[f"{role.value}_ipv4"] = v4
            out[f"{role.value}_ipv6"] = len(addresses) - v4
        return out


def _entry_relays(relays: Iterable[Relay], include_authorities: bool) -> Iterator[Relay]:
    for relay in relays:
        if relay.is_entry or (include_authorities and "Authority" in relay.flags):
            yield relay


def classify(
    snapshot: Snapshot | Iterable[Relay],
    *,
    include_authorities: bool = True,
    include_bad_exits: bool = False,
) -> RelaySets:
    """Sort the running relays' addresses into entry, exit and all-relay sets.

    Args:
        snapshot: a snapshot, or its relays.
        include_authorities: count ``Authority`` relays as entry relays (clients contact them at bootstrap).
        include_bad_exits: keep ``Exit`` relays that also carry ``BadExit``.

    >>> from ipaddress import ip_address
    >>> guard = Relay("A" * 40, or_addresses=(ip_address("198.51.100.1"),), flags=frozenset({"Guard"}))
    >>> exit_ = Relay("B" * 40, or_addresses=(ip_address("198.51.100.2"),), flags=frozenset({"Exit"}),
    ...               exit_addresses=(ip_address("198.51.100.3"),))
    >>> sets = classify([guard, exit_])
    >>> sorted(str(a) for a in sets.entry), sorted(str(a) for a in sets.exit), len(sets.relay)
    (['198.51.100.1'], ['198.51.100.2', '198.51.100.3'], 3)
    """
    relays = [r for r in (snapshot.relays if isinstance(snapshot, Snapshot) else snapshot) if r.running]
    entry = frozenset(a for r in _entry_relays(relays, include_authorities) for a in r.or_addresses)
    exit_ = frozenset(
        a
        for r in relays
        if r.is_exit and (include_bad_exits or "BadExit" not in r.flags)
        for a in (*r.or_addresses, *r.exit_addresses)
    )
    relay = frozenset(a for r in relays for a in (*r.or_addresses, *r.exit_addresses))
    return RelaySets(entry=entry, exit=exit_, relay=relay)


def format_age(delta: timedelta) -> str:
    """An age or a period in words: ``42 s``, ``42 min``, ``5.5 h`` or ``12 days``; negative means in the future.

    >>> format_age(timedelta(seconds=42)), format_age(timedelta(minutes=42)), format_age(timedelta(hours=5.5))
    ('42 s', '42 min', '5.5 h')
    >>> format_age(timedelta(days=12)), format_age(timedelta(days=-12))
    ('12 days', '-12 days')
    """
    seconds = delta.total_seconds()
    if seconds < 0:
        return "-" + format_age(-delta)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
