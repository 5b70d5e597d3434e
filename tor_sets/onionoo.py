"""Onionoo ``details`` documents: fetch them, read them, parse them into a :class:`~tor_sets.relays.Snapshot`.

Exports :func:`parse_document` (bytes or text → Snapshot), :func:`read_snapshot` (a JSON or ``.json.gz`` file),
:func:`bundled_snapshot` (the real snapshot shipped in the package), :class:`FetchSettings`, :func:`fetch`
(HTTP with timeouts, retries, a size cap enforced while streaming and ``If-Modified-Since`` from a cache folder)
and :func:`obtain` (live data, else the cached download, else the bundled snapshot).

Protocol: https://metrics.torproject.org/onionoo.html (version 8). Everything inside a relay object is written
by whoever runs the relay, so this module is the only place raw JSON is handled: only addresses that
:mod:`ipaddress` parsed, that are globally routable, leave it.
"""

from __future__ import annotations

import bisect
import gzip
import importlib.resources
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any

import requests
import urllib3
from urllib3.util.retry import Retry

from tor_sets import __version__
from tor_sets.errors import DocumentError, FetchError, FetchTimeout, StaleDataError
from tor_sets.files import atomic_write, read_regular
from tor_sets.relays import IPAddress, Relay, Snapshot

__all__ = [
    "BUNDLED_SNAPSHOT",
    "DEFAULT_URL",
    "FIELDS",
    "FetchResult",
    "FetchSettings",
    "Obtained",
    "bundled_snapshot",
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


def _load_json(data: bytes | str) -> Any:
    if isinstance(data, bytes) and data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DocumentError(f"corrupt gzip data: {exc}") from exc
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise DocumentError("JSON nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        head = data[:40].decode("utf-8", "replace") if isinstance(data, bytes) else data[:40]
        head = head.strip().splitlines()[0][:40] if head.strip() else "(empty)"
        raise DocumentError(f"not a JSON document ({exc.__class__.__name__}; starts with {head!r})") from exc


def parse_document(data: bytes | str, *, source: str = "") -> Snapshot:
    """Parse an Onionoo details document (JSON text or bytes, gzip allowed) into a snapshot.

    Strict on what makes the document unusable (not JSON, wrong major version, no ``relays`` list, no
    ``relays_published``), forgiving on relays: bad relays and bad addresses are dropped and counted in
    :attr:`Snapshot.dropped`, unknown fields are ignored.

    Raises:
        DocumentError: the document cannot be used at all.
    """
    doc = _load_json(data)
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
    dropped: Counter[str] = Counter()
    relays = tuple(r for r in (_parse_relay(obj, dropped) for obj in relays_raw) if r is not None)
    return Snapshot(relays_published=published, relays=relays, version=version, source=source, dropped=dict(dropped))


def read_snapshot(path: Path | str) -> Snapshot:
    """Read a details document from a JSON or gzip-compressed JSON file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return parse_document(data, source=str(path))
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
            already has one.
        connect_timeout, read_timeout: seconds; the read timeout bounds every wait for data, so a server that
            stalls fails instead of hanging.
        retries: retries on connection errors, 429 and 5xx, with exponential backoff.
        max_bytes: cap on the decompressed body, enforced while streaming.
        cache_dir: where the last good download and its ``Last-Modified`` are kept (None: no cache).
        progress: draw a progress bar on stderr (only when stderr is a terminal).
    """

    url: str = DEFAULT_URL
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    backoff_factor: float = 1.0
    max_bytes: int = 64 * 1024 * 1024
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    progress: bool = True

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


def _store_cache(cache_dir: Path, body: bytes, url: str, last_modified: str | None) -> None:
    data_path, meta_path = _cache_paths(cache_dir)
    try:
        atomic_write(data_path, gzip.compress(body, compresslevel=6, mtime=0))
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
    except FileNotFoundError:
        return None
    except (OSError, DocumentError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.warning("ignoring unreadable cached download %s: %s", data_path, reason)
        return None
    return snapshot


def _session(settings: FetchSettings) -> requests.Session:
    retry = Retry(
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
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
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


def _read_body(response: requests.Response, settings: FetchSettings) -> bytes:
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    show = _progress_printer(settings.progress, total)
    chunks: list[bytes] = []
    size = 0
    wire = 0
    for chunk in response.raw.stream(65536, decode_content=True):
        size += len(chunk)
        if size > settings.max_bytes:
            raise FetchError(
                f"response from {settings.url} exceeds the size cap of {settings.max_bytes} bytes",
                url=settings.url,
            )
        chunks.append(chunk)
        wire = response.raw.tell()
        show(wire)
    if settings.progress and sys.stderr.isatty():
        sys.stderr.write("\n")
    return b"".join(chunks)


def fetch(settings: FetchSettings | None = None) -> FetchResult:
    """Fetch the details document, conditionally when a cached copy of the same URL exists.

    On 304 the cached copy is returned with ``not_modified=True``; on 200 the body is parsed, then cached.

    Raises:
        FetchTimeout: the server stalled past the timeout.
        FetchError: connection failure, HTTP error status, oversize body.
        DocumentError: the body is not a usable details document (the cache is left as it was).
    """
    settings = settings or FetchSettings()
    url = settings.request_url
    headers: dict[str, str] = {}
    cache_dir = settings.cache_dir
    if cache_dir is not None:
        meta = _read_cache_meta(cache_dir)
        if (
            meta.get("url") == url
            and isinstance(meta.get("last_modified"), str)
            and _cache_paths(cache_dir)[0].exists()
        ):
            headers["If-Modified-Since"] = meta["last_modified"]
    _resolve(url)
    try:
        with _session(settings) as session:
            response = session.get(
                url,
                headers=headers,
                timeout=(settings.connect_timeout, settings.read_timeout),
                stream=True,
            )
            with response:
                if response.status_code == 304 and cache_dir is not None and headers:
                    cached = cached_snapshot(cache_dir)  # parsed only now: a 304 is the common case
                    if cached is not None:
                        # same data as a live answer: same source, so the rules header (and file) stay the same
                        return FetchResult(replace(cached, source=settings.url), True, headers["If-Modified-Since"])
                    raise FetchError(f"HTTP 304 from {url} but the cached copy is unreadable", url=url)
                if response.status_code != 200:
                    reason = (response.reason or "").strip()[:60]
                    raise FetchError(f"HTTP {response.status_code} {reason} from {url}".strip(), url=url)
                body = _read_body(response, settings)
                last_modified = response.headers.get("Last-Modified")
    except requests.exceptions.Timeout as exc:
        raise FetchTimeout(f"timed out fetching {url}", url=url) from exc
    except requests.exceptions.RetryError as exc:
        raise FetchError(f"gave up fetching {url} after {settings.retries} retries", url=url) from exc
    except requests.exceptions.ConnectionError as exc:
        if isinstance(exc.__context__, requests.exceptions.ReadTimeout) or "timed out" in str(exc):
            raise FetchTimeout(f"timed out fetching {url}", url=url) from exc
        raise FetchError(f"cannot connect to {url}: {_root_cause(exc)}", url=url) from exc
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"fetching {url} failed: {_root_cause(exc)}", url=url) from exc
    except urllib3.exceptions.TimeoutError as exc:  # raised while streaming the body
        raise FetchTimeout(f"timed out fetching {url} (the server stalled in the middle of the body)", url=url) from exc
    except urllib3.exceptions.HTTPError as exc:  # connection broken while streaming the body
        # e.g. ('Connection broken: IncompleteRead(20000 bytes read, 378959 more expected)', IncompleteRead(...))
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else _root_cause(exc)
        raise FetchError(f"fetching {url} failed while reading the body: {reason[:200]}", url=url) from exc
    snapshot = parse_document(body, source=settings.url)
    if cache_dir is not None:
        _store_cache(cache_dir, body, url, last_modified)
    return FetchResult(snapshot, False, last_modified)


def _resolve(url: str) -> None:
    """Fail at once, without retries, when the host name does not resolve (a DNS answer is not a time-out)."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise FetchError(f"not an HTTP URL: {url}", url=url)
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}", url=url) from exc


def _root_cause(exc: BaseException) -> str:
    seen: BaseException = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    text = str(seen) or seen.__class__.__name__
    # urllib3 messages carry object reprs; keep the readable tail
    text = re.sub(r"<[^>]*>: ", "", text)
    return text.splitlines()[0][:160]


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

    With ``input_path`` the file is read and nothing else is tried. Otherwise the live directory is fetched;
    when that fails (and ``fallback`` is allowed) the last cached download is used, then the bundled snapshot,
    with a warning naming the data's date.

    Raises:
        FetchError, DocumentError: fetching failed and no fallback was allowed.
        StaleDataError: the data obtained is older than ``max_age``.
    """
    if input_path is not None:
        result = Obtained(read_snapshot(input_path), "file")
    else:
        settings = settings or FetchSettings()
        result = _obtain_live_or_fallback(settings, offline=offline, fallback=fallback)
    if max_age is not None and age(result.snapshot) > max_age:
        raise StaleDataError(
            f"relay data from {result.snapshot.relays_published:%Y-%m-%d %H:%M} UTC ({result.origin}) is "
            f"older than the allowed {_format_age(max_age)}"
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
        f"{snapshot.relays_published:%Y-%m-%d %H:%M} UTC, {_format_age(age(snapshot))} old"
    )
    return Obtained(snapshot, origin, warning)


def _format_age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.0f} days"
