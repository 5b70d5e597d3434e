"""Onionoo ``details`` documents: fetch them, read them, parse them into a :class:`~tor_sets.relays.Snapshot`.

Exports :func:`parse_document` (bytes or text → Snapshot), :func:`read_snapshot` (a JSON or ``.json.gz`` file),
:func:`bundled_snapshot` (the real snapshot shipped in the package), :class:`FetchSettings`, :func:`fetch`
(HTTP with timeouts, retries, a total deadline, a size cap enforced while streaming and ``If-Modified-Since`` from
a cache folder), :func:`obtain` (live data, else the cached download, else the bundled snapshot) and
:func:`check_not_future`.

Bounds on what a hostile server or file can make tor-sets do: :data:`MAX_BYTES` caps the document after every
decompression layer (HTTP ``Content-Encoding``, then a ``.json.gz`` body or file, inflated in steps that stop at
the cap; gzip inside that is refused), :data:`MAX_RELAYS` caps the relays a document may list (counted while the
JSON is parsed), :data:`MAX_CLOCK_SKEW` bounds how far in the future its date may lie, and
:data:`DEFAULT_DEADLINE` bounds a whole fetch, retries included, however slowly the server trickles.

Protocol: https://metrics.torproject.org/onionoo.html (version 8). Everything inside a relay object is written
by whoever runs the relay, so this module is the only place raw JSON is handled: only addresses that
:mod:`ipaddress` parsed, that are globally routable, leave it.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gzip
import importlib.resources
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import requests
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from tor_sets import __version__
from tor_sets.errors import DocumentError, FetchError, FetchTimeout, StaleDataError
from tor_sets.files import atomic_write, read_regular
from tor_sets.relays import IPAddress, Relay, Snapshot, format_age
from tor_sets.urls import redact_url

if TYPE_CHECKING:  # urllib3 defines its connection protocols for type checkers only
    from urllib3._base_connection import BaseHTTPConnection, BaseHTTPSConnection

__all__ = [
    "BUNDLED_SNAPSHOT",
    "DEFAULT_DEADLINE",
    "DEFAULT_URL",
    "FIELDS",
    "MAX_BYTES",
    "MAX_CLOCK_SKEW",
    "MAX_RELAYS",
    "FetchResult",
    "FetchSettings",
    "Obtained",
    "bundled_snapshot",
    "check_not_future",
    "default_cache_dir",
    "fetch",
    "obtain",
    "parse_address",
    "parse_document",
    "read_snapshot",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "https://onionoo.torproject.org/details"
#: the relay fields tor-sets reads; everything else is left on the server
FIELDS = (
    "fingerprint",
    "nickname",
    "or_addresses",
    "exit_addresses",
    "flags",
    "running",
    "country",
    "as",
    "first_seen",
    "last_seen",
)
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
#: seconds one fetch may take in all, retries included (``--deadline``), on top of the per-read timeout, which a
#: server trickling a byte at a time never trips
DEFAULT_DEADLINE = 300.0

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
    return DocumentError(f"the document inflates past the size cap of {max_bytes} bytes (--max-bytes)")


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
            raise DocumentError(f"the document is larger than the size cap of {max_bytes} bytes (--max-bytes)")
        return data
    inner = _gunzip(data, max_bytes)
    if inner[:2] == _GZIP_MAGIC:
        raise DocumentError("gzip inside gzip: not a details document")
    return inner


def _too_many_relays(max_relays: int) -> DocumentError:
    return DocumentError(f"the document lists more than {max_relays} relays (--max-relays)", field="relays")


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
            "out of memory while parsing the document (a hostile one? lower --max-bytes or --max-relays)"
        ) from exc


def _parse_document(data: bytes | str, source: str, max_bytes: int, max_relays: int) -> Snapshot:
    if isinstance(data, bytes):
        data = _document_bytes(data, max_bytes)
    elif len(data) > max_bytes:
        raise DocumentError(f"the document is larger than the size cap of {max_bytes} bytes (--max-bytes)")
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
        raise DocumentError(f"{path}: the file is larger than the size cap of {max_bytes} bytes (--max-bytes)")
    try:
        return parse_document(data, source=str(path), max_bytes=max_bytes, max_relays=max_relays)
    except DocumentError as exc:
        exc.add_note(f"while reading {path}")
        raise DocumentError(f"{path}: {exc}", field=exc.field) from exc


def bundled_snapshot() -> Snapshot:
    """The real snapshot shipped inside the package (the offline fallback)."""
    resource = importlib.resources.files("tor_sets") / "data" / BUNDLED_SNAPSHOT
    return parse_document(resource.read_bytes(), source=f"bundled:{BUNDLED_SNAPSHOT}")


# ---------------------------------------------------------------------------------------------------- fetching


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tor-sets`` (``~/.cache/tor-sets`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tor-sets"


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """How to fetch the details document.

    Attributes:
        url: the details endpoint; the query (``type=relay&running=true&fields=...``) is added unless the URL
            already has one. A ``user:password@`` in it is sent as HTTP Basic credentials and never written or
            logged (:func:`~tor_sets.urls.redact_url`).
        connect_timeout, read_timeout: seconds; the read timeout bounds every wait for data, so a server that
            stalls fails instead of hanging.
        retries: retries on connection errors, 429 and 5xx, with exponential backoff.
        max_bytes: cap on the document after every decompression layer, enforced while streaming and inflating.
        cache_dir: where the last good download and its ``Last-Modified`` are kept (None: no cache).
        progress: draw a progress bar on stderr (only when stderr is a terminal).
        deadline: seconds the whole fetch may take, retries and their backoff included; when it passes, the
            fetch's connections are shut down, wherever they are (a server trickling a byte at a time never trips
            the read timeout).
        max_relays: most relays the document may list.
    """

    url: str = DEFAULT_URL
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    backoff_factor: float = 1.0
    max_bytes: int = MAX_BYTES
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    progress: bool = True
    deadline: float = DEFAULT_DEADLINE
    max_relays: int = MAX_RELAYS

    @property
    def request_url(self) -> str:
        if "?" in self.url:
            return self.url
        return f"{self.url}?type=relay&running=true&fields={','.join(FIELDS)}"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What a fetch brought: a snapshot, and whether the server said nothing changed (304)."""

    snapshot: Snapshot
    not_modified: bool
    last_modified: str | None


def _cache_paths(cache_dir: Path) -> tuple[Path, Path]:
    return cache_dir / "details.json.gz", cache_dir / "details.meta.json"


def _read_cache_meta(cache_dir: Path) -> dict[str, Any]:
    _, meta_path = _cache_paths(cache_dir)
    try:
        meta = json.loads(read_regular(meta_path))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _cached_last_modified(cache_dir: Path | None, url: str) -> str | None:
    """The ``Last-Modified`` of the cached download of ``url`` (redacted), when there is one to send back."""
    if cache_dir is None:
        return None
    meta = _read_cache_meta(cache_dir)
    since = meta.get("last_modified")
    if meta.get("url") == url and isinstance(since, str) and _cache_paths(cache_dir)[0].exists():
        return since
    return None


def _store_cache(cache_dir: Path, document: bytes, url: str, last_modified: str | None) -> None:
    """Keep ``document`` (the JSON text, whatever encodings it came in) and where it came from (``url`` redacted)."""
    data_path, meta_path = _cache_paths(cache_dir)
    try:
        atomic_write(data_path, gzip.compress(document, compresslevel=6, mtime=0))
        meta = {"url": url, "last_modified": last_modified, "fetched_at": formatdate(usegmt=True)}
        atomic_write(meta_path, json.dumps(meta, sort_keys=True).encode())
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        log.warning("could not update the download cache in %s: %s%s", cache_dir, where, exc.strerror or exc)


def cached_snapshot(cache_dir: Path) -> Snapshot | None:
    """The last good download kept in ``cache_dir``, or None when there is none (or it is unreadable)."""
    data_path, _ = _cache_paths(cache_dir)
    try:
        snapshot = parse_document(read_regular(data_path), source=f"cache:{data_path}")
        check_not_future(snapshot)
    except FileNotFoundError:
        return None
    except (OSError, DocumentError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.warning("ignoring unreadable cached download %s: %s", data_path, reason)
        return None
    return snapshot


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


# ---------------------------------------------------------------------------------------------------- the deadline


class _DeadlinePassed(Exception):
    """Raised inside urllib3 (opening a connection, a retry's backoff) once the fetch's deadline has passed."""


class _Deadline:
    """The total deadline of one fetch: when it passes, every connection the fetch opened is shut down.

    A per-read timeout never fires against a server that sends a byte just often enough. A watchdog thread that
    shuts the sockets down ends any read at once, wherever it is (status line, headers or body); a connection
    opened or a retry backoff begun after the deadline raises :class:`_DeadlinePassed`. Used as a context manager
    around one fetch; the session's pools report each connection through :meth:`track`.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passed = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[object] = []
        self._watchdog = threading.Thread(target=self._watch, name="tor-sets-fetch-deadline", daemon=True)

    def __enter__(self) -> _Deadline:
        self._watchdog.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._done.set()
        self._watchdog.join()

    def track(self, connection: object) -> None:
        """Watch ``connection`` (opened, not yet connected); refuse it once the deadline has passed."""
        if self.passed.is_set():
            raise _DeadlinePassed
        with self._lock:
            self._connections.append(connection)

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.passed.set()
        while True:  # and again every 0.1 s: a connection may have been connecting at the deadline
            with self._lock:
                sockets = [getattr(c, "sock", None) for c in self._connections]
            for sock in sockets:
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
            if self._done.wait(0.1):
                return


class _Retry(Retry):
    """urllib3's retries, whose backoff ends (raising :class:`_DeadlinePassed`) when the fetch's deadline passes."""

    deadline: _Deadline

    def new(self, **kw: Any) -> Self:
        retry = super().new(**kw)
        retry.deadline = self.deadline
        return retry

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        if self.deadline.passed.wait(self.get_backoff_time()):
            raise _DeadlinePassed


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    """A pool that reports each connection it opens to the fetch's deadline."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> BaseHTTPConnection:
        connection = super()._new_conn()
        self.deadline.track(connection)
        return connection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    """A pool that reports each connection it opens to the fetch's deadline."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> BaseHTTPSConnection:
        connection = super()._new_conn()
        self.deadline.track(connection)
        return connection


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with pools that report their connections to the fetch's deadline."""

    def __init__(self, deadline: _Deadline, **kwargs: Any) -> None:
        self._deadline = deadline  # before super().__init__, which builds the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": cast(
                type[HTTPConnectionPool], functools.partial(_WatchedHTTPConnectionPool, deadline=self._deadline)
            ),
            "https": cast(
                type[HTTPConnectionPool], functools.partial(_WatchedHTTPSConnectionPool, deadline=self._deadline)
            ),
        }


# ---------------------------------------------------------------------------------------------------- one GET


def _session(settings: FetchSettings, deadline: _Deadline) -> requests.Session:
    retry = _Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=settings.backoff_factor,
        backoff_max=30,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=False,
        raise_on_status=False,
    )
    retry.deadline = deadline
    session = requests.Session()
    adapter = _Adapter(deadline, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update(
        {"Accept-Encoding": "gzip", "Accept": "application/json", "User-Agent": f"tor-sets/{__version__}"}
    )
    return session


def _progress_printer(enabled: bool, total: int | None) -> Callable[[int], None]:
    if not (enabled and sys.stderr.isatty()):
        return lambda _n: None
    state = {"last": 0.0}

    def show(done: int) -> None:
        now = time.monotonic()
        if now - state["last"] < 0.1:
            return
        state["last"] = now
        if total:
            width = 30
            filled = min(width, done * width // total)
            sys.stderr.write(f"\rdownloading [{'#' * filled}{'.' * (width - filled)}] {done / 1e6:6.1f} MB")
        else:
            sys.stderr.write(f"\rdownloading {done / 1e6:6.1f} MB")
        sys.stderr.flush()

    return show


def _read_body(response: requests.Response, settings: FetchSettings, url: str) -> bytes:
    """The body with its HTTP ``Content-Encoding`` decoded, in steps, failing once past ``settings.max_bytes``."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    show = _progress_printer(settings.progress, total)
    chunks: list[bytes] = []
    size = 0
    wire = 0
    try:
        for chunk in response.raw.stream(65536, decode_content=True):
            size += len(chunk)
            if size > settings.max_bytes:
                raise FetchError(f"response from {url} exceeds the size cap of {settings.max_bytes} bytes", url=url)
            chunks.append(chunk)
            wire = response.raw.tell()
            show(wire)
        body = b"".join(chunks)
    except MemoryError as exc:
        raise FetchError(f"out of memory while downloading from {url}", url=url) from exc
    if settings.progress and sys.stderr.isatty():
        sys.stderr.write("\n")
    return body


def _get(settings: FetchSettings, deadline: _Deadline, since: str | None) -> tuple[bytes | None, str | None]:
    """One GET, ``If-Modified-Since: since`` when given: the body (None for a 304 to it) and its ``Last-Modified``.

    Raises:
        FetchError: an HTTP error status, an oversize body; requests' and urllib3's own errors pass through.
    """
    url = settings.request_url
    shown = redact_url(url)
    headers = {"If-Modified-Since": since} if since else {}
    with _session(settings, deadline) as session:
        response = session.get(
            url, headers=headers, timeout=(settings.connect_timeout, settings.read_timeout), stream=True
        )
        with response:
            if response.status_code == 304 and since:
                return None, None
            if response.status_code != 200:
                reason = (response.reason or "").strip()[:60]
                raise FetchError(f"HTTP {response.status_code} {reason} from {shown}".strip(), url=shown)
            return _read_body(response, settings, redact_url(settings.url)), response.headers.get("Last-Modified")


def fetch(settings: FetchSettings | None = None) -> FetchResult:
    """Fetch the details document, conditionally when a cached copy of the same URL exists.

    On 304 the cached copy is returned with ``not_modified=True`` (when that copy is unreadable, the document is
    fetched again without condition); on 200 the body is decoded (one gzip layer, as a static ``.json.gz`` mirror
    serves it), parsed, then cached as the document itself.

    Raises:
        FetchTimeout: the server stalled past the read timeout, or the whole fetch passed its deadline.
        FetchError: connection failure, HTTP error status, oversize body.
        DocumentError: the body is not a usable details document: it inflates past the size cap, lists too many
            relays or is dated in the future, for example (the cache is left as it was).
    """
    settings = settings or FetchSettings()
    shown = redact_url(settings.request_url)
    source = redact_url(settings.url)
    cache_dir = settings.cache_dir
    since = _cached_last_modified(cache_dir, shown)
    _resolve(settings.request_url)
    with _Deadline(settings.deadline) as deadline:
        body, last_modified = _get_in_time(settings, deadline, since)
        if body is None:
            assert cache_dir is not None  # a 304 answers our If-Modified-Since, sent only with a cache
            cached = cached_snapshot(cache_dir)  # parsed only now: a 304 is the common case
            if cached is not None:
                # same data as a live answer: same source, so the rules header (and file) stay the same
                return FetchResult(replace(cached, source=source), True, since)
            log.warning("HTTP 304 from %s but the cached copy is unreadable; fetching the whole document", shown)
            body, last_modified = _get_in_time(settings, deadline, None)
    assert body is not None  # without If-Modified-Since, a 304 is an HTTP error like any other
    with _memory_is_a_document_error():
        document = _document_bytes(body, settings.max_bytes)
    snapshot = parse_document(document, source=source, max_bytes=settings.max_bytes, max_relays=settings.max_relays)
    check_not_future(snapshot)
    if cache_dir is not None:
        _store_cache(cache_dir, document, shown, last_modified)
    return FetchResult(snapshot, False, last_modified)


def _get_in_time(settings: FetchSettings, deadline: _Deadline, since: str | None) -> tuple[bytes | None, str | None]:
    """:func:`_get`, with requests' and urllib3's errors translated, and the deadline's cut as a FetchTimeout."""
    shown = redact_url(settings.request_url)
    try:
        answer = _get(settings, deadline, since)
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, _DeadlinePassed) as exc:
        if deadline.passed.is_set():
            raise _deadline_error(settings, shown) from exc
        raise _fetch_error(exc, shown, settings.retries) from exc
    if deadline.passed.is_set():  # a body without a length that the watchdog cut short looks complete
        raise _deadline_error(settings, shown)
    return answer


def _deadline_error(settings: FetchSettings, url: str) -> FetchTimeout:
    return FetchTimeout(
        f"gave up fetching {url}: no complete answer within the deadline of {settings.deadline:g} s (--deadline)",
        url=url,
    )


def _fetch_error(exc: Exception, url: str, retries: int) -> FetchError:
    """What requests or urllib3 raised while fetching ``url`` (redacted), as one FetchError (or FetchTimeout)."""
    if isinstance(exc, requests.exceptions.Timeout):
        return FetchTimeout(f"timed out fetching {url}", url=url)
    if isinstance(exc, requests.exceptions.RetryError):
        return FetchError(f"gave up fetching {url} after {retries} retries", url=url)
    if isinstance(exc, requests.exceptions.ConnectionError):
        if isinstance(exc.__context__, requests.exceptions.ReadTimeout) or "timed out" in str(exc):
            return FetchTimeout(f"timed out fetching {url}", url=url)
        return FetchError(f"cannot connect to {url}: {_root_cause(exc)}", url=url)
    if isinstance(exc, requests.exceptions.RequestException):
        return FetchError(f"fetching {url} failed: {_root_cause(exc)}", url=url)
    if isinstance(exc, urllib3.exceptions.TimeoutError):  # raised while streaming the body
        return FetchTimeout(f"timed out fetching {url} (the server stalled in the middle of the body)", url=url)
    # the connection broke while streaming the body, e.g.
    # ('Connection broken: IncompleteRead(20000 bytes read, 378959 more expected)', IncompleteRead(...))
    reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else _root_cause(exc)
    return FetchError(f"fetching {url} failed while reading the body: {redact_url(reason)[:200]}", url=url)


def _resolve(url: str) -> None:
    """Fail at once, without retries, when the host name does not resolve (a DNS answer is not a time-out)."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        host = None
    if not host:
        shown = f": {redact_url(url)}" if "://" in url else " (it must start with http:// or https://)"
        raise FetchError(f"not an HTTP URL{shown}", url=redact_url(url))
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(
            f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}", url=redact_url(url)
        ) from exc


def _root_cause(exc: BaseException) -> str:
    seen: BaseException = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    text = str(seen) or seen.__class__.__name__
    # urllib3 messages carry object reprs; keep the readable tail
    text = re.sub(r"<[^>]*>: ", "", text)
    return redact_url(text.splitlines()[0][:160])


# ---------------------------------------------------------------------------------------------------- fallback


@dataclass(frozen=True, slots=True)
class Obtained:
    """A snapshot and how it was obtained: ``file``, ``live``, ``not-modified``, ``cache`` or ``bundled``."""

    snapshot: Snapshot
    origin: str
    warning: str | None = None


def age(snapshot: Snapshot, now: datetime | None = None) -> timedelta:
    """How old the snapshot's data is."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    return now - snapshot.relays_published


def obtain(
    *,
    input_path: Path | None = None,
    settings: FetchSettings | None = None,
    offline: bool = False,
    fallback: bool = True,
    max_age: timedelta | None = None,
) -> Obtained:
    """Get the best relay data available.

    With ``input_path`` the file is read (within the settings' ``max_bytes`` and ``max_relays``) and nothing else
    is tried. Otherwise the live directory is fetched;
    when that fails (and ``fallback`` is allowed) the last cached download is used, then the bundled snapshot,
    with a warning naming the data's date.

    Raises:
        FetchError, DocumentError: fetching failed and no fallback was allowed, or the input file is unusable
            (dated in the future included).
        StaleDataError: the data obtained is older than ``max_age``.
    """
    settings = settings or FetchSettings()
    if input_path is not None:
        snapshot = read_snapshot(input_path, max_bytes=settings.max_bytes, max_relays=settings.max_relays)
        check_not_future(snapshot)
        result = Obtained(snapshot, "file")
    else:
        result = _obtain_live_or_fallback(settings, offline=offline, fallback=fallback)
    if max_age is not None and age(result.snapshot) > max_age:
        raise StaleDataError(
            f"relay data from {result.snapshot.relays_published:%Y-%m-%d %H:%M} UTC ({result.origin}) is "
            f"older than the allowed {format_age(max_age)}"
        )
    return result


def _obtain_live_or_fallback(settings: FetchSettings, *, offline: bool, fallback: bool) -> Obtained:
    failure = "offline mode"
    if not offline:
        try:
            fetched = fetch(settings)
        except (FetchError, DocumentError) as exc:
            if not fallback:
                raise
            failure = str(exc)
        else:
            return Obtained(fetched.snapshot, "not-modified" if fetched.not_modified else "live")
    cached = cached_snapshot(settings.cache_dir) if settings.cache_dir is not None else None
    snapshot, origin = (cached, "cache") if cached is not None else (bundled_snapshot(), "bundled")
    warning = (
        f"live relay data unavailable ({failure}); using the {origin} snapshot of "
        f"{snapshot.relays_published:%Y-%m-%d %H:%M} UTC, {format_age(age(snapshot))} old"
    )
    return Obtained(snapshot, origin, warning)
