"""Onionoo details documents read and parsed: bytes or a file in, a :class:`~tor_sets.relays.Snapshot` out.

Exports :func:`parse_document`, :func:`read_snapshot`, :func:`bundled_snapshot`, :func:`parse_address`,
:func:`address_problem`, :func:`check_not_future` and the bounds :data:`MAX_BYTES`, :data:`MAX_RELAYS`,
:data:`MAX_CLOCK_SKEW`. Everything inside a relay object is written by whoever runs the relay: this is the only
place raw JSON is handled, and only addresses that :mod:`ipaddress` parsed, that are globally routable, leave it.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.resources
import ipaddress
import json
import logging
import re
import socket
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tor_sets.errors import DocumentError
from tor_sets.relays import IPAddress, Relay, Snapshot, format_age

__all__ = [
    "BUNDLED_SNAPSHOT",
    "MAX_BYTES",
    "MAX_CLOCK_SKEW",
    "MAX_RELAYS",
    "address_problem",
    "bundled_snapshot",
    "check_not_future",
    "parse_address",
    "parse_document",
    "read_snapshot",
]

log = logging.getLogger(__name__)

BUNDLED_SNAPSHOT = "details-derived-guard-exit-2026-02-28.json.gz"
#: cap on a document's size in bytes after every decompression layer (``--max-bytes``); the bundled answer for
#: 9,491 relays is 1.6 MB
MAX_BYTES = 64 * 1024 * 1024
#: most relays a document may list (``--max-relays``): the network has about 10,000; ten times that is not a
#: network but an attack on memory and time (1,000,000 relays took 47 s and 1.5 GB)
MAX_RELAYS = 100_000
#: how far in the future ``relays_published`` may lie (clocks differ a little); data dated further ahead is refused,
#: because once deployed it would make every later genuine document look like a rollback
MAX_CLOCK_SKEW = timedelta(hours=1)
_FINGERPRINT = re.compile(r"[0-9A-F]{40}")
_NICKNAME = re.compile(r"[A-Za-z0-9]{1,19}")
_FLAG = re.compile(r"[A-Za-z0-9]{1,32}")
_COUNTRY = re.compile(r"[a-z]{2}")
_AS = re.compile(r"AS[0-9]{1,10}")
#: "1.2.3.4:9001" or "[2001:db8::1]:443"; the address part is checked by ipaddress afterwards
_OR_ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]|(?P<v4>[0-9.]{7,15})):(?P<port>[0-9]{1,5})")
_MAX_ADDRESSES_PER_RELAY = 64


# ---------------------------------------------------------------------------------------------------- parsing


#: special-purpose ranges (IANA IPv4/IPv6 special-purpose registries, RFC 6890) that never stand for a relay,
#: most specific first; checked as integer intervals so that parsing 15,000 addresses stays fast
_SPECIAL = (
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "reserved"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "not-global"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "private"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "ipv4-mapped"),
    ("::/8", "reserved"),
    ("64:ff9b::/96", "not-global"),
    ("64:ff9b:1::/48", "private"),
    ("100::/8", "reserved"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "reserved"),
    ("2002::/16", "not-global"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "reserved"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "reserved"),
    ("ff00::/8", "multicast"),
    ("200::/7", "reserved"),
    ("400::/6", "reserved"),
    ("800::/5", "reserved"),
    ("1000::/4", "reserved"),
    ("4000::/3", "reserved"),
    ("6000::/3", "reserved"),
    ("8000::/3", "reserved"),
    ("a000::/3", "reserved"),
    ("c000::/3", "reserved"),
    ("e000::/4", "reserved"),
    ("f000::/5", "reserved"),
    ("f800::/6", "reserved"),
    ("fe00::/9", "reserved"),
)
_SPECIAL_NETWORKS = tuple((ipaddress.ip_network(n), reason) for n, reason in _SPECIAL)


def _merged_starts(version: int) -> tuple[list[int], list[int]]:
    spans = sorted(
        (int(n.network_address), int(n.broadcast_address)) for n, _ in _SPECIAL_NETWORKS if n.version == version
    )
    starts: list[int] = []
    ends: list[int] = []
    for start, end in spans:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


_SPECIAL_SPANS = {4: _merged_starts(4), 6: _merged_starts(6)}


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` may not stand for a relay in a rules file, or None when it may.

    Unspecified, loopback, private, multicast, link-local, reserved, documentation, IPv4-mapped and other
    non-global addresses are refused (the first matching range of ``_SPECIAL`` names the reason).

    >>> address_problem(ipaddress.ip_address("185.220.101.1")) is None
    True
    >>> [address_problem(ipaddress.ip_address(a)) for a in ("0.0.0.0", "10.1.2.3", "::1", "2001:db8::1")]
    ['unspecified', 'private', 'loopback', 'documentation']
    """
    starts, ends = _SPECIAL_SPANS[address.version]
    value = int(address)
    i = bisect.bisect_right(starts, value) - 1
    if i < 0 or value > ends[i]:
        return None
    for network, reason in _SPECIAL_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    return "not-global"  # pragma: no cover (the spans are the union of the networks)


def _fast_address(text: str) -> IPAddress | None:
    """``ipaddress`` parsing of canonical text through its packed form (5x faster than parsing the text).

    The result is kept only when it prints back as exactly ``text``; anything else (leading zeros, upper case,
    uncompressed IPv6, garbage) returns None and goes through :func:`ipaddress.ip_address` itself, so the accepted
    set is exactly ``ipaddress``'s.
    """
    family, cls = (socket.AF_INET6, ipaddress.IPv6Address) if ":" in text else (socket.AF_INET, ipaddress.IPv4Address)
    try:
        packed = socket.inet_pton(family, text)
    except OSError:
        return None
    return cls(packed) if socket.inet_ntop(family, packed) == text else None


def parse_address(text: object, *, with_port: bool) -> tuple[IPAddress | None, str | None]:
    """Parse one address of a relay object.

    Returns ``(address, None)`` or ``(None, reason)``; never raises on hostile input.

    >>> parse_address("[2A01:4F8::1]:443", with_port=True)
    (IPv6Address('2a01:4f8::1'), None)
    >>> parse_address("0.0.0.0:1", with_port=True)
    (None, 'unspecified')
    >>> parse_address("1.2.3.4:99999", with_port=True)
    (None, 'bad-address')
    """
    if not isinstance(text, str) or len(text) > 64:
        return None, "bad-address"
    if with_port:
        match = _OR_ADDRESS.fullmatch(text)
        if match is None or not 0 < int(match["port"]) < 65536:
            return None, "bad-address"
        text = match["v6"] or match["v4"]
    address = _fast_address(text)
    if address is None:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return None, "bad-address"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None, "bad-address"
    problem = address_problem(address)
    return (None, problem) if problem else (address, None)


def _parse_time(value: object) -> datetime | None:
    # "2021-09-30 14:00:00" (UTC)
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _addresses(values: object, *, with_port: bool, dropped: Counter[str]) -> tuple[IPAddress, ...]:
    # or_addresses: ["1.2.3.4:9001", "[2001:db8::1]:443"]; exit_addresses: ["1.2.3.4"]
    if values is None:
        return ()
    if not isinstance(values, list):
        dropped["bad-address-list"] += 1
        return ()
    if len(values) > _MAX_ADDRESSES_PER_RELAY:
        dropped["too-many-addresses"] += len(values) - _MAX_ADDRESSES_PER_RELAY
        values = values[:_MAX_ADDRESSES_PER_RELAY]
    found: dict[IPAddress, None] = {}
    for value in values:
        address, problem = parse_address(value, with_port=with_port)
        if address is None:
            dropped[problem or "bad-address"] += 1
        else:
            found[address] = None
    return tuple(found)


def _parse_relay(obj: object, dropped: Counter[str]) -> Relay | None:
    if not isinstance(obj, dict):
        dropped["bad-relay"] += 1
        return None
    fingerprint = obj.get("fingerprint")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint.upper()):
        dropped["bad-fingerprint"] += 1
        return None
    running = obj.get("running", True)
    if running is not True:
        dropped["not-running"] += 1
        return None
    nickname = obj.get("nickname")
    flags = obj.get("flags")
    country = obj.get("country")
    as_number = obj.get("as")
    return Relay(
        fingerprint=fingerprint.upper(),
        nickname=nickname if isinstance(nickname, str) and _NICKNAME.fullmatch(nickname) else "",
        or_addresses=_addresses(obj.get("or_addresses"), with_port=True, dropped=dropped),
        exit_addresses=_addresses(obj.get("exit_addresses"), with_port=False, dropped=dropped),
        flags=frozenset(f for f in flags if isinstance(f, str) and _FLAG.fullmatch(f))
        if isinstance(flags, list)
        else frozenset(),
        running=True,
        country=country if isinstance(country, str) and _COUNTRY.fullmatch(country) else None,
        as_number=as_number if isinstance(as_number, str) and _AS.fullmatch(as_number) else None,
        first_seen=_parse_time(obj.get("first_seen")),
        last_seen=_parse_time(obj.get("last_seen")),
    )


_GZIP_MAGIC = b"\x1f\x8b"
#: bytes inflated per step: the cap is checked after each
_INFLATE_STEP = 1 << 20


def _cap_error(max_bytes: int) -> DocumentError:
    return DocumentError(f"the document inflates past the size cap of {max_bytes} bytes (max_bytes)")


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Inflate one gzip layer (every member, as ``gzip -c a b`` writes them), stopping once past ``max_bytes``.

    Raises:
        DocumentError: the output passes ``max_bytes``, or the gzip data is corrupt or truncated.
    """
    out: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest:
            if rest[:2] != _GZIP_MAGIC:
                raise DocumentError("corrupt gzip data: trailing garbage after the last gzip member")
            inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer, CRC and size checked
            pending = rest
            while not inflate.eof:
                chunk = inflate.decompress(pending, _INFLATE_STEP)
                pending = inflate.unconsumed_tail
                if not chunk and not pending:
                    raise DocumentError(
                        "corrupt gzip data: Compressed file ended before the end-of-stream marker was reached"
                    )
                size += len(chunk)
                if size > max_bytes:
                    raise _cap_error(max_bytes)
                out.append(chunk)
            rest = inflate.unused_data
    except zlib.error as exc:
        raise DocumentError(f"corrupt gzip data: {exc}") from exc
    return b"".join(out)


def _document_bytes(data: bytes, max_bytes: int) -> bytes:
    """The JSON text of a document: ``data`` itself, or its one gzip layer (a ``.json.gz``), within ``max_bytes``.

    Raises:
        DocumentError: larger than ``max_bytes`` (before or after inflating), corrupt gzip, or gzip inside gzip.
    """
    if data[:2] != _GZIP_MAGIC:
        if len(data) > max_bytes:
            raise DocumentError(f"the document is larger than the size cap of {max_bytes} bytes (max_bytes)")
        return data
    inner = _gunzip(data, max_bytes)
    if inner[:2] == _GZIP_MAGIC:
        raise DocumentError("gzip inside gzip: not a details document")
    return inner


def _too_many_relays(max_relays: int) -> DocumentError:
    return DocumentError(f"the document lists more than {max_relays} relays (max_relays)", field="relays")


def _load_json(data: bytes | str, max_relays: int) -> Any:
    relays = 0

    def count_relays(obj: dict[str, Any]) -> dict[str, Any]:
        # json calls this for each object it has parsed: a relay is one with a fingerprint; stop at the ceiling
        nonlocal relays
        if "fingerprint" in obj:
            relays += 1
            if relays > max_relays:
                raise _too_many_relays(max_relays)
        return obj

    try:
        return json.loads(data, object_hook=count_relays)
    except RecursionError as exc:
        raise DocumentError("JSON nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        head = data[:40].decode("utf-8", "replace") if isinstance(data, bytes) else data[:40]
        head = head.strip().splitlines()[0][:40] if head.strip() else "(empty)"
        raise DocumentError(f"not a JSON document ({exc.__class__.__name__}; starts with {head!r})") from exc


def parse_document(
    data: bytes | str, *, source: str = "", max_bytes: int = MAX_BYTES, max_relays: int = MAX_RELAYS
) -> Snapshot:
    """Parse an Onionoo details document (JSON text or bytes, one gzip layer allowed) into a snapshot.

    Strict on what makes the document unusable (not JSON, wrong major version, no ``relays`` list, no
    ``relays_published``, larger than ``max_bytes`` once inflated, more than ``max_relays`` relays), forgiving on
    relays: bad relays and bad addresses are dropped and counted in :attr:`Snapshot.dropped`, unknown fields are
    ignored.

    Raises:
        DocumentError: the document cannot be used at all (running out of memory on it included).
    """
    with _memory_is_a_document_error():
        return _parse_document(data, source, max_bytes, max_relays)


@contextlib.contextmanager
def _memory_is_a_document_error() -> Iterator[None]:
    try:
        yield
    except MemoryError as exc:  # the caps bound the input, not what json makes of it: 21 MB of "[]," take 450 MB
        raise DocumentError(
            "out of memory while parsing the document (a hostile one? lower max_bytes or max_relays)"
        ) from exc


def _parse_document(data: bytes | str, source: str, max_bytes: int, max_relays: int) -> Snapshot:
    if isinstance(data, bytes):
        data = _document_bytes(data, max_bytes)
    elif len(data) > max_bytes:
        raise DocumentError(f"the document is larger than the size cap of {max_bytes} bytes (max_bytes)")
    doc = _load_json(data, max_relays)
    if not isinstance(doc, dict):
        raise DocumentError("not an Onionoo details document (top level is not an object)")
    version = doc.get("version")
    if not isinstance(version, str) or version.split(".", 1)[0] != "8":
        raise DocumentError(
            f"unsupported Onionoo protocol version {str(version)[:20]!r} (major version 8 required)",
            field="version",
        )
    published = _parse_time(doc.get("relays_published"))
    if published is None:
        raise DocumentError("missing or malformed relays_published", field="relays_published")
    relays_raw = doc.get("relays")
    if not isinstance(relays_raw, list):
        raise DocumentError("missing relays list", field="relays")
    if len(relays_raw) > max_relays:  # entries that are not relay objects count too
        raise _too_many_relays(max_relays)
    dropped: Counter[str] = Counter()
    relays = tuple(r for r in (_parse_relay(obj, dropped) for obj in relays_raw) if r is not None)
    return Snapshot(relays_published=published, relays=relays, version=version, source=source, dropped=dict(dropped))


def read_snapshot(path: Path | str, *, max_bytes: int = MAX_BYTES, max_relays: int = MAX_RELAYS) -> Snapshot:
    """Read a details document from a JSON or gzip-compressed JSON file.

    At most ``max_bytes`` are read from the file, and at most ``max_bytes`` come out of inflating it.

    Raises:
        DocumentError: the file cannot be read, is too large, or is not a usable document.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise DocumentError(f"{path}: the file is larger than the size cap of {max_bytes} bytes (max_bytes)")
    try:
        return parse_document(data, source=str(path), max_bytes=max_bytes, max_relays=max_relays)
    except DocumentError as exc:
        exc.add_note(f"while reading {path}")
        raise DocumentError(f"{path}: {exc}", field=exc.field) from exc


def bundled_snapshot() -> Snapshot:
    """The real snapshot shipped inside the package (the offline fallback)."""
    resource = importlib.resources.files("tor_sets") / "data" / BUNDLED_SNAPSHOT
    return parse_document(resource.read_bytes(), source=f"bundled:{BUNDLED_SNAPSHOT}")


def check_not_future(snapshot: Snapshot, now: datetime | None = None) -> None:
    """Refuse data dated more than :data:`MAX_CLOCK_SKEW` after ``now`` (naive UTC; default: this host's clock).

    Raises:
        DocumentError: ``relays_published`` lies further in the future.

    >>> check_not_future(Snapshot(datetime(2026, 3, 1, 0, 59), ()), now=datetime(2026, 3, 1))
    >>> check_not_future(Snapshot(datetime(2099, 1, 1), ()), now=datetime(2026, 3, 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tor_sets.errors.DocumentError: relays_published 2099-01-01 00:00 UTC lies 26604 days in the future (more than ...
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    ahead = snapshot.relays_published - now
    if ahead > MAX_CLOCK_SKEW:
        raise DocumentError(
            f"relays_published {snapshot.relays_published:%Y-%m-%d %H:%M} UTC lies {format_age(ahead)} in the "
            f"future (more than the allowed clock skew of {MAX_CLOCK_SKEW.total_seconds() / 3600:g} h); refusing "
            "the data (is this host's clock right?)",
            field="relays_published",
        )
