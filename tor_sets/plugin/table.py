"""The lookup table of the tor-sets Falco plugin: relay addresses with their roles, fingerprint and nickname.

Exports :class:`TableEntry`, :class:`Table`, :func:`make_table` (relay sets and relays → table, pure),
:func:`encode` (table → bytes, deterministic), :func:`decode` (bytes → table, every check the C loader makes),
:func:`read_table` (a file → its bytes, refusing what the plugin refuses before reading), :func:`write_table` (atomic
replace, what the plugin's reload expects), :func:`summary`, :func:`role_names`, the role bits :data:`ENTRY`,
:data:`EXIT`, :data:`RELAY` and :data:`MAX_BYTES`, the largest table the plugin reads.

Format, version 1 (little-endian; ``torsets_plugin.c`` reads the same layout and makes the same checks)::

    offset  size  field
         0     8  magic b"TORSETS\\0"
         8     2  u16 version (1)
        10     2  u16 header size (64)
        12     4  u32 flags (0)
        16     4  u32 IPv4 record count
        20     4  u32 IPv6 record count
        24     4  u32 relay record count
        28     4  u32 CRC-32 (zlib.crc32) of the payload: every byte after the header
        32     8  u64 payload size
        40     8  i64 relays_published of the data, Unix seconds (0: unknown)
        48    16  zero
    payload:
        IPv4 records, 12 bytes each, sorted by address, unique:
            u32 address as a number (1.2.3.4 is 0x01020304), u32 roles, u32 relay index
        IPv6 records, 24 bytes each, sorted by address, unique:
            16 address bytes in network order, u32 roles, u32 relay index
        relay records, 64 bytes each, sorted by fingerprint:
            40 ASCII upper-case hex digits, NUL, nickname ([A-Za-z0-9]{0,19}) NUL-padded to 20 bytes, 3 zero bytes

Roles are a bit mask: entry 1, exit 2, relay 4 (any running relay); never 0. The relay index points at the
relay record that explains the address (``0xFFFFFFFF``: none, e.g. a canary address). When several relays share
an address, the one holding most of the address's roles wins, then the lowest fingerprint: the same input
always gives the same bytes. Nicknames are written by relay operators: they are checked against Onionoo's
pattern again here and only ever treated as data.
"""

from __future__ import annotations

import bisect
import ipaddress
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tor_sets.build import write_rules
from tor_sets.errors import SanityError, TorSetsError
from tor_sets.relays import IPAddress, Relay, RelaySets

__all__ = [
    "ENTRY",
    "EXIT",
    "MAGIC",
    "MAX_BYTES",
    "NO_RELAY",
    "RELAY",
    "VERSION",
    "Table",
    "TableEntry",
    "decode",
    "encode",
    "make_table",
    "read_table",
    "role_names",
    "summary",
    "write_table",
]

MAGIC = b"TORSETS\0"
VERSION = 1
HEADER_SIZE = 64
ENTRY = 1
EXIT = 2
RELAY = 4
NO_RELAY = 0xFFFFFFFF
#: the largest table file the plugin reads (``TABLE_MAX_BYTES`` in torsets_plugin.c); real ones are under 1 MiB
MAX_BYTES = 64 * 1024 * 1024

_HEADER = struct.Struct("<8sHHIIIIIQq16s")
_V4 = struct.Struct("<III")
_V6 = struct.Struct("<16sII")
_RELAY = struct.Struct("<40sx20s3x")
_FINGERPRINT = re.compile(r"[0-9A-F]{40}")
_NICKNAME = re.compile(r"[A-Za-z0-9]{0,19}")
_FINGERPRINT_BYTES = re.compile(rb"[0-9A-F]{40}")
_NICKNAME_BYTES = re.compile(rb"[A-Za-z0-9]{0,19}")
assert _HEADER.size == HEADER_SIZE and _V4.size == 12 and _V6.size == 24 and _RELAY.size == 64


def role_names(roles: int) -> str:
    """The plugin's role string for a role mask (what ``tor.server_role`` and friends print).

    >>> [role_names(m) for m in (0, ENTRY | RELAY, EXIT | RELAY, ENTRY | EXIT | RELAY, RELAY)]
    ['none', 'entry', 'exit', 'entry,exit', 'relay']
    """
    named = [name for bit, name in ((ENTRY, "entry"), (EXIT, "exit")) if roles & bit]
    if named:
        return ",".join(named)
    return "relay" if roles else "none"


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One address of the table.

    Attributes:
        address: the relay address.
        roles: bit mask of :data:`ENTRY`, :data:`EXIT`, :data:`RELAY` (never 0).
        fingerprint: the relay that explains the address, or ``""`` (e.g. a canary).
        nickname: that relay's nickname, or ``""``.
    """

    address: IPAddress
    roles: int
    fingerprint: str = ""
    nickname: str = ""


@dataclass(frozen=True, slots=True)
class Table:
    """What a table file holds.

    Attributes:
        entries: sorted by family, then address.
        published: ``relays_published`` of the data in Unix seconds (0: unknown).
    """

    entries: tuple[TableEntry, ...]
    published: int = 0

    def get(self, address: IPAddress) -> TableEntry | None:
        """The entry of ``address`` (IPv4-mapped IPv6 addresses are looked up as IPv4, as the plugin does)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        key = (address.version, int(address))
        i = bisect.bisect_left(self.entries, key, key=lambda e: (e.address.version, int(e.address)))
        if i < len(self.entries) and self.entries[i].address == address:
            return self.entries[i]
        return None

    def counts(self) -> dict[str, int]:
        """``{"ipv4": n, "ipv6": n, "relays": n}``."""
        return {
            "ipv4": sum(1 for e in self.entries if e.address.version == 4),
            "ipv6": sum(1 for e in self.entries if e.address.version == 6),
            "relays": len({e.fingerprint for e in self.entries if e.fingerprint}),
        }


def _published_seconds(published: datetime | None) -> int:
    if published is None:
        return 0
    aware = published if published.tzinfo is not None else published.replace(tzinfo=UTC)
    return max(0, int(aware.timestamp()))


def make_table(sets: RelaySets, relays: Iterable[Relay] = (), *, published: datetime | None = None) -> Table:
    """The table for ``sets``, naming for each address the relay of ``relays`` that explains it.

    Roles come from ``sets`` only (so exclusions, canaries and the authority/BadExit choices of the build
    apply); ``relays`` only name them.

    Args:
        sets: the classified addresses.
        relays: relays of the snapshot the sets came from.
        published: ``relays_published`` of that snapshot (naive datetimes are UTC).

    Raises:
        SanityError: a relay's fingerprint or nickname is not what Onionoo allows, or the sets are empty.

    >>> from ipaddress import ip_address
    >>> guard = Relay("A" * 40, "guard1", or_addresses=(ip_address("198.51.100.1"),), flags=frozenset({"Guard"}))
    >>> sets = RelaySets(entry=frozenset(guard.or_addresses), relay=frozenset(guard.or_addresses))
    >>> entry = make_table(sets, [guard]).entries[0]
    >>> entry.address, entry.roles, entry.fingerprint[:4], entry.nickname
    (IPv4Address('198.51.100.1'), 5, 'AAAA', 'guard1')
    """
    roles: dict[IPAddress, int] = {}
    for bit, addresses in ((ENTRY, sets.entry), (EXIT, sets.exit), (RELAY, sets.relay)):
        for address in addresses:
            roles[address] = roles.get(address, 0) | bit
    if not roles:
        raise SanityError("no relay address at all: refusing to write an empty plugin table")
    owners: dict[IPAddress, tuple[tuple[int, str], Relay]] = {}
    for relay in relays:
        _check_relay(relay)
        explains = (ENTRY if relay.is_entry or "Authority" in relay.flags else 0) | (EXIT if relay.is_exit else 0)
        for address in {*relay.or_addresses, *relay.exit_addresses}:
            if address not in roles:
                continue
            rank = (-bin(explains & roles[address]).count("1"), relay.fingerprint)
            best = owners.get(address)
            if best is None or rank < best[0]:
                owners[address] = (rank, relay)
    entries = []
    for address in sorted(roles, key=lambda a: (a.version, int(a))):
        owner = owners.get(address)
        if owner is None:
            entries.append(TableEntry(address, roles[address]))
        else:
            entries.append(TableEntry(address, roles[address], owner[1].fingerprint, owner[1].nickname))
    return Table(tuple(entries), _published_seconds(published))


def _check_relay(relay: Relay) -> None:
    if not _FINGERPRINT.fullmatch(relay.fingerprint):
        raise SanityError(f"relay fingerprint {relay.fingerprint[:48]!r} is not 40 upper-case hex digits")
    if not _NICKNAME.fullmatch(relay.nickname):
        raise SanityError(f"relay {relay.fingerprint}: nickname {relay.nickname[:24]!r} is not [A-Za-z0-9]{{0,19}}")


def encode(table: Table) -> bytes:
    """The bytes of a table file (deterministic: the same table gives the same bytes).

    Raises:
        SanityError: an entry has no role, a role outside the mask, or a bad fingerprint or nickname.
    """
    relays = sorted({(e.fingerprint, e.nickname) for e in table.entries if e.fingerprint})
    index: dict[str, int] = {}
    for i, (fingerprint, nickname) in enumerate(relays):
        if fingerprint in index:
            raise SanityError(f"relay {fingerprint} appears with two nicknames")
        _check_relay(Relay(fingerprint, nickname))
        index[fingerprint] = i
    if len({e.address for e in table.entries}) != len(table.entries):
        raise SanityError("an address appears twice in the table")
    v4: list[bytes] = []
    v6: list[bytes] = []
    for entry in sorted(table.entries, key=lambda e: (e.address.version, int(e.address))):
        if not 0 < entry.roles <= ENTRY | EXIT | RELAY:
            raise SanityError(f"{entry.address}: bad role mask {entry.roles}")
        relay = index[entry.fingerprint] if entry.fingerprint else NO_RELAY
        if entry.address.version == 4:
            v4.append(_V4.pack(int(entry.address), entry.roles, relay))
        else:
            v6.append(_V6.pack(entry.address.packed, entry.roles, relay))
    records = [_RELAY.pack(f.encode("ascii"), n.encode("ascii")) for f, n in relays]
    payload = b"".join((*v4, *v6, *records))
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        HEADER_SIZE,
        0,
        len(v4),
        len(v6),
        len(records),
        zlib.crc32(payload),
        len(payload),
        table.published,
        bytes(16),
    )
    return header + payload


def decode(data: bytes) -> Table:
    """Read a table file, making every check the plugin makes before it uses a table.

    Raises:
        TorSetsError: the bytes are not a valid table of this version.
    """
    if len(data) < HEADER_SIZE:
        raise TorSetsError(f"not a tor-sets table: {len(data)} bytes is shorter than the header")
    if len(data) > MAX_BYTES:
        raise TorSetsError(f"not a tor-sets table: {len(data)} bytes, more than the {MAX_BYTES}-byte limit")
    magic, version, header_size, flags, n4, n6, nrelays, crc, size, published, reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TorSetsError("not a tor-sets table (bad magic)")
    if version != VERSION or header_size != HEADER_SIZE or flags or any(reserved):
        raise TorSetsError(f"unsupported table version {version}; this tor-sets reads version {VERSION}")
    needed = n4 * _V4.size + n6 * _V6.size + nrelays * _RELAY.size
    if size != needed or size != len(data) - HEADER_SIZE:
        raise TorSetsError(f"table size mismatch: {len(data) - HEADER_SIZE} payload bytes, header says {size}")
    payload = memoryview(data)[HEADER_SIZE:]
    if zlib.crc32(payload) != crc:
        raise TorSetsError("table checksum mismatch: truncated or corrupt")
    if published < 0:
        raise TorSetsError("table has a negative publication time")
    relays_at = n4 * _V4.size + n6 * _V6.size
    relays: list[tuple[str, str]] = []
    for i in range(nrelays):
        record = bytes(payload[relays_at + i * _RELAY.size : relays_at + (i + 1) * _RELAY.size])
        fingerprint, nickname = record[:40], record[41:61].rstrip(b"\0")
        if (
            record[40]
            or any(record[61:])
            or not (_FINGERPRINT_BYTES.fullmatch(fingerprint) and _NICKNAME_BYTES.fullmatch(nickname))
        ):
            raise TorSetsError(f"table relay record {i} is not a fingerprint and nickname")
        relays.append((fingerprint.decode("ascii"), nickname.decode("ascii")))
    entries: list[TableEntry] = []
    previous: int | None = None
    for i in range(n4):
        value, roles, relay = _V4.unpack_from(payload, i * _V4.size)
        if previous is not None and value <= previous:
            raise TorSetsError(f"table IPv4 record {i} is out of order or repeated")
        previous = value
        entries.append(_entry(ipaddress.IPv4Address(value), roles, relay, relays, f"IPv4 record {i}"))
    previous = None
    for i in range(n6):
        raw, roles, relay = _V6.unpack_from(payload, n4 * _V4.size + i * _V6.size)
        value = int.from_bytes(raw, "big")
        if previous is not None and value <= previous:
            raise TorSetsError(f"table IPv6 record {i} is out of order or repeated")
        previous = value
        entries.append(_entry(ipaddress.IPv6Address(value), roles, relay, relays, f"IPv6 record {i}"))
    return Table(tuple(entries), published)


def _entry(address: IPAddress, roles: int, relay: int, relays: list[tuple[str, str]], what: str) -> TableEntry:
    if not 0 < roles <= ENTRY | EXIT | RELAY or (relay != NO_RELAY and relay >= len(relays)):
        raise TorSetsError(f"table {what} has bad roles or relay index")
    fingerprint, nickname = relays[relay] if relay != NO_RELAY else ("", "")
    return TableEntry(address, roles, fingerprint, nickname)


def summary(table: Table) -> Mapping[str, object]:
    """A JSON-ready summary of a table (counts, roles, publication time)."""
    counts = table.counts()
    by_role = {name: sum(1 for e in table.entries if e.roles & bit) for name, bit in (("entry", ENTRY), ("exit", EXIT))}
    published = datetime.fromtimestamp(table.published, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if table.published else None
    return {"addresses": counts["ipv4"] + counts["ipv6"], **counts, **by_role, "relays_published": published}


def read_table(path: Path | str) -> bytes:
    """The bytes of the table file at ``path``, refusing before reading what the plugin refuses before reading.

    Like the plugin: only a regular file (symbolic links followed) of at most :data:`MAX_BYTES`, opened without
    blocking, so that a FIFO or a huge sparse file at the path neither hangs nor bloats the reader.

    Raises:
        TorSetsError: the file is missing, not a regular file, too big or unreadable.
    """
    path = Path(path)
    try:
        _check_table_file(path, path.stat())
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            _check_table_file(path, os.fstat(handle.fileno()))  # the file opened, should the path have changed
            return handle.read(MAX_BYTES + 1)  # a file grown since: decode refuses it
    except OSError as exc:
        raise TorSetsError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _check_table_file(path: Path, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise TorSetsError(f"{path} is not a regular file")
    if status.st_size > MAX_BYTES:
        raise TorSetsError(f"{path} has {status.st_size} bytes, more than the {MAX_BYTES}-byte limit of a table")


def write_table(path: Path | str, data: bytes, *, mode: int = 0o644) -> bool:
    """Replace ``path`` with ``data`` atomically; return False (touching nothing) when it already holds them.

    The bytes go to a temporary file in the same folder, are fsynced and renamed over ``path``: a plugin
    checking the file sees the old table or the new one (a new inode), never a half-written one.

    Raises:
        TorSetsError: the folder cannot be written.
    """
    return write_rules(path, data, mode=mode)
