"""The relay index: which Tor relays stand behind an address, looked up once per alert.

Exports :class:`RelayRecord` and :class:`RelayIndex` (an address → relays lookup built once from a
:class:`~tor_sets.relays.Snapshot`: a plain dict keyed by the address's canonical text, so a lookup is one hash
probe, plus one parse when the text is not canonical), :func:`canonical_address` (that text), :data:`ADDRESS_FIELDS`
and :func:`alert_addresses` (the addresses a Falco JSON alert names, by field).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tor_sets.relays import IPAddress, Role, Snapshot

__all__ = [
    "ADDRESS_FIELDS",
    "ROLE_ORDER",
    "RelayIndex",
    "RelayRecord",
    "alert_addresses",
    "canonical_address",
    "json_time",
]

#: ``output_fields`` keys looked up, in this order (server end, client end, then the local/remote view)
ADDRESS_FIELDS: tuple[str, ...] = ("fd.sip", "fd.cip", "fd.rip", "fd.lip")

# Fallback when an alert has no output_fields (json_include_output_fields_property: false): the rules' output
# text carries ``connection=%fd.cip:%fd.cport->%fd.sip:%fd.sport`` (the port is the last colon-group, so IPv6
# parses too), and that of earlier versions ``fd_sip=%fd.sip fd_cip=%fd.cip``.
_OUTPUT_CONNECTION = re.compile(r"(?:^|\s)connection=(\S+?):(?:\d+|<NA>)->(\S+?):(?:\d+|<NA>)(?=\s|$)")
_OUTPUT_ADDRESS = re.compile(r"(?:^|\s)fd_(sip|cip)=([0-9A-Fa-f:.\[\]%]+)(?=\s|$)")

ROLE_ORDER = (Role.ENTRY, Role.EXIT, Role.RELAY)


def json_time(value: datetime | None) -> str | None:
    """A naive UTC datetime as RFC 3339 text (``2026-02-28T01:00:00Z``)."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _address_text(address: IPAddress) -> str:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped if mapped is not None else address)


def canonical_address(value: str | IPAddress) -> str | None:
    """The text under which :class:`RelayIndex` files an address, or None when ``value`` is no address.

    Brackets, a zone (``%eth0``) and the IPv4-mapped IPv6 form are undone; IPv6 is compressed and lower case.

    >>> canonical_address("[2001:DB8:0::1]"), canonical_address("::ffff:198.51.100.7"), canonical_address("x")
    ('2001:db8::1', '198.51.100.7', None)
    """
    if not isinstance(value, str):
        return _address_text(value)
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        return _address_text(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """What the directory says about one relay behind one address.

    Attributes:
        fingerprint: the relay's fingerprint (40 hex digits).
        nickname: its nickname (relay-written; validated by the parser, kept as data).
        flags: its flags, sorted.
        roles: what this address is to a Tor client, as :func:`~tor_sets.relays.classify` decides: ``entry``
            (an OR address of a Guard or directory authority), ``exit`` (an OR or exit address of an Exit relay
            that is not a BadExit), ``relay`` (any address of a running relay).
        first_seen: when the directory first saw the relay (UTC), if known.
        country: two-letter country code, if known.
        as_number: ``AS...``, if known.
    """

    fingerprint: str
    nickname: str
    flags: tuple[str, ...]
    roles: tuple[Role, ...]
    first_seen: datetime | None = None
    country: str | None = None
    as_number: str | None = None

    def to_json(self) -> dict[str, object]:
        """The record as JSON-ready values (times as RFC 3339 text)."""
        return {
            "fingerprint": self.fingerprint,
            "nickname": self.nickname,
            "flags": list(self.flags),
            "roles": [role.value for role in self.roles],
            "first_seen": json_time(self.first_seen),
            "country": self.country,
            "as_number": self.as_number,
        }


@dataclass(frozen=True, slots=True)
class RelayIndex:
    """Address → relays, for one snapshot.

    Attributes:
        table: canonical address text → the relays at that address (read-only by convention; a plain dict for
            speed).
        relays_published: the snapshot's ``relays_published`` (UTC).
        relay_count: running relays indexed.
        source: where the snapshot came from.
    """

    table: Mapping[str, tuple[RelayRecord, ...]]
    relays_published: datetime
    relay_count: int
    source: str = ""

    @classmethod
    def from_snapshot(
        cls, snapshot: Snapshot, *, include_authorities: bool = True, include_bad_exits: bool = False
    ) -> RelayIndex:
        """Index every address of every running relay of ``snapshot``.

        Args:
            snapshot: the relay data.
            include_authorities: count directory authorities as entry relays (as ``classify`` does by default).
            include_bad_exits: count BadExit relays as exits.

        >>> from ipaddress import ip_address
        >>> from tor_sets.relays import Relay
        >>> guard = Relay("A" * 40, "g1", (ip_address("198.51.100.1"),), flags=frozenset({"Guard", "Running"}))
        >>> index = RelayIndex.from_snapshot(Snapshot(datetime(2026, 1, 1), (guard,)))
        >>> [(r.nickname, [role.value for role in r.roles]) for r in index.lookup("198.51.100.1")]
        [('g1', ['entry', 'relay'])]
        >>> index.lookup("198.51.100.2"), index.lookup("not an address")
        ((), ())
        """
        table: dict[str, list[RelayRecord]] = {}
        count = 0
        for relay in snapshot.relays:
            if not relay.running:
                continue
            count += 1
            entry = relay.is_entry or (include_authorities and "Authority" in relay.flags)
            exit_ = relay.is_exit and (include_bad_exits or "BadExit" not in relay.flags)
            flags = tuple(sorted(relay.flags))
            roles_of: dict[str, set[Role]] = {}
            for address in relay.or_addresses:
                roles = roles_of.setdefault(_address_text(address), {Role.RELAY})
                if entry:
                    roles.add(Role.ENTRY)
                if exit_:
                    roles.add(Role.EXIT)
            for address in relay.exit_addresses:
                roles = roles_of.setdefault(_address_text(address), {Role.RELAY})
                if exit_:
                    roles.add(Role.EXIT)
            for text, roles in roles_of.items():
                record = RelayRecord(
                    fingerprint=relay.fingerprint,
                    nickname=relay.nickname,
                    flags=flags,
                    roles=tuple(r for r in ROLE_ORDER if r in roles),
                    first_seen=relay.first_seen,
                    country=relay.country,
                    as_number=relay.as_number,
                )
                table.setdefault(text, []).append(record)
        frozen = {text: tuple(sorted(records, key=lambda r: r.fingerprint)) for text, records in table.items()}
        return cls(frozen, snapshot.relays_published, count, snapshot.source)

    def lookup(self, address: str | IPAddress) -> tuple[RelayRecord, ...]:
        """The relays at ``address`` (text in any usual form, or an ``ipaddress`` object); empty when none.

        Never raises: text that is no address finds nothing.
        """
        if isinstance(address, str):
            hit = self.table.get(address)
            if hit is not None:
                return hit
        key = canonical_address(address)
        if key is None:
            return ()
        return self.table.get(key, ())

    def __len__(self) -> int:
        return len(self.table)


def alert_addresses(doc: Mapping[str, Any]) -> dict[str, str]:
    """The addresses of an alert by field, in :data:`ADDRESS_FIELDS` order and canonical form (see
    :func:`canonical_address`): from ``output_fields``, or, when none is there, from the output text of tor-sets
    rules (``connection=CIP:CPORT->SIP:SPORT``, or the ``fd_sip=``/``fd_cip=`` words of earlier versions). Values
    that are no address (``null``, ``<NA>``) are left out.

    >>> alert_addresses({"output_fields": {"fd.cip": "10.0.0.5", "fd.sip": "198.51.100.77", "fd.lip": "<NA>"}})
    {'fd.sip': '198.51.100.77', 'fd.cip': '10.0.0.5'}
    >>> alert_addresses({"output": "Outbound connection | fd_sip=2001:DB8::77 fd_cip=10.0.0.5 process=curl"})
    {'fd.sip': '2001:db8::77', 'fd.cip': '10.0.0.5'}
    >>> alert_addresses({"output": "Outbound ... | connection=2001:db8::5:40112->2001:db8::77:443 fd_proto=tcp"})
    {'fd.sip': '2001:db8::77', 'fd.cip': '2001:db8::5'}
    """
    found: dict[str, str] = {}
    fields = doc.get("output_fields")
    if isinstance(fields, Mapping):
        for name in ADDRESS_FIELDS:
            value = fields.get(name)
            if isinstance(value, str) and value:
                key = canonical_address(value)
                if key is not None:
                    found[name] = key
    if not found:
        output = doc.get("output")
        if isinstance(output, str):
            connection = _OUTPUT_CONNECTION.search(output)
            if connection is not None:
                for name, text in (("fd.sip", connection[2]), ("fd.cip", connection[1])):
                    key = canonical_address(text)
                    if key is not None:
                        found[name] = key
            for m in _OUTPUT_ADDRESS.finditer(output):
                key = canonical_address(m[2])
                if key is not None:
                    found.setdefault(f"fd.{m[1]}", key)
    return found
