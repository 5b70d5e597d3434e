"""Alert enrichment: which Tor relays stand behind the address a tor-sets rule fired on.

Exports:

* :class:`RelayRecord` and :class:`RelayIndex`: an address → relays lookup built once from a
  :class:`~tor_sets.relays.Snapshot` (a plain dict keyed by the address's canonical text, so a lookup is one
  hash probe, plus one parse when the text is not canonical).
* :class:`Enricher`: one Falco JSON alert line in, the same line out; alerts of tor-sets rules get a ``tor`` object,
  every other line passes byte for byte. :func:`enrich_stream` runs it over a stream, line by line.
* :class:`EnrichServer` and :class:`ServerSettings`: the same over HTTP (Falco's ``http_output`` or falcosidekick's
  webhook post to it), forwarding every alert to another URL and keeping the last enriched ones for
  ``GET /alerts`` (what ``tor-sets selftest --sink http://...`` reads).
* :func:`parse_listen`, :func:`bench`.

Input formats (both one JSON object per alert). Falco with ``json_output: true`` (file, stdout, program and
``http_output`` channels), see https://falco.org/docs/concepts/outputs/formatting/::

    {"hostname":"h","output":"12:00:00.000000001: Warning Outbound connection to a Tor entry relay | ...",
     "output_fields":{"evt.time":1767268800000000001,"fd.cip":"10.0.0.5","fd.sip":"198.51.100.77",...},
     "priority":"Warning","rule":"Outbound Connection to Tor Entry Relay","source":"syscall",
     "tags":["network","tor"],"time":"2026-01-01T12:00:00.000000001Z"}

falcosidekick's webhook output posts its ``FalcoPayload`` (``types/types.go``): the same keys plus ``uuid``, with
``time`` in RFC 3339 and any custom fields merged into ``output_fields``.

What is added (relay-written text such as nicknames stays data: it is only ever JSON-escaped)::

    "tor":{"relays_published":"2026-02-28T01:00:00Z","peers":[{"address":"198.51.100.77","fields":["fd.sip"],
           "canary":false,"relays":[{"fingerprint":"...","nickname":"...","flags":["Guard","Running"],
           "roles":["entry","relay"],"first_seen":"2021-08-22T19:00:00Z","country":"de","as_number":"AS24940"}]}]}
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import io
import ipaddress
import json
import logging
import queue
import random
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Literal

import requests

from tor_sets.errors import SanityError, TorSetsError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RELAY_RULE, OUTBOUND_RULE
from tor_sets.relays import IPAddress, Role, Snapshot
from tor_sets.urls import redact_url

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "ADDRESS_FIELDS",
    "TOR_RULES",
    "BenchResult",
    "EnrichServer",
    "Enricher",
    "LineResult",
    "RelayIndex",
    "RelayRecord",
    "ServerSettings",
    "StreamStats",
    "alert_addresses",
    "bench",
    "canonical_address",
    "enrich_stream",
    "parse_listen",
]

log = logging.getLogger(__name__)

#: names of the rules tor-sets writes; alerts of other rules pass through untouched
TOR_RULES: frozenset[str] = frozenset({OUTBOUND_RULE, OUTBOUND_RELAY_RULE, INBOUND_RULE})

#: ``output_fields`` keys looked up, in this order (server end, client end, then the local/remote view)
ADDRESS_FIELDS: tuple[str, ...] = ("fd.sip", "fd.cip", "fd.rip", "fd.lip")

# Fallback when an alert has no output_fields (json_include_output_fields_property: false): the rules' output
# text carries ``fd_sip=%fd.sip fd_cip=%fd.cip``.
_OUTPUT_ADDRESS = re.compile(r"(?:^|\s)fd_(sip|cip)=([0-9A-Fa-f:.\[\]%]+)(?=\s|$)")

_ROLE_ORDER = (Role.ENTRY, Role.EXIT, Role.RELAY)


def _json_time(value: datetime | None) -> str | None:
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


# ---------------------------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------------------------


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
            "first_seen": _json_time(self.first_seen),
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
                    roles=tuple(r for r in _ROLE_ORDER if r in roles),
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


# ---------------------------------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------------------------------


LineKind = Literal["enriched", "passed", "malformed", "blank"]


@dataclass(frozen=True, slots=True)
class LineResult:
    """What became of one input line.

    Attributes:
        kind: ``enriched`` (a tor-sets alert, ``tor`` added), ``passed`` (any other line that is a JSON object,
            unchanged), ``malformed`` (not a JSON object; skipped) or ``blank`` (skipped silently).
        data: the bytes to write, newline-terminated (empty for skipped lines).
        reason: why a line is malformed.
        doc: the enriched alert (``enriched`` only).
    """

    kind: LineKind
    data: bytes = b""
    reason: str = ""
    doc: Mapping[str, Any] | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Enricher:
    """Adds a ``tor`` object to alerts of tor-sets rules; every other line passes byte for byte.

    Args:
        index: the relay index.
        rules: rule names whose alerts are enriched (default :data:`TOR_RULES`).
        canaries: self-test addresses; a peer at one of them is marked ``"canary": true``.
        output_fields: also write flat ``tor.*`` keys into ``output_fields`` (comma-separated values), which
            survive outputs that only keep the standard keys (falcosidekick drops unknown top-level keys).
    """

    def __init__(
        self,
        index: RelayIndex,
        *,
        rules: Collection[str] = TOR_RULES,
        canaries: Iterable[str | IPAddress] = (),
        output_fields: bool = False,
    ) -> None:
        self.index = index
        self.rules = frozenset(rules)
        self.canaries = frozenset(c for c in (canonical_address(a) for a in canaries) if c is not None)
        self.output_fields = output_fields
        self._published = _json_time(index.relays_published)

    def is_tor_alert(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc`` is an alert of one of :attr:`rules`."""
        rule = doc.get("rule")
        return isinstance(rule, str) and rule in self.rules

    def tor_object(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The ``tor`` object for an alert: each address of :data:`ADDRESS_FIELDS` that is a relay or a canary."""
        peers: dict[str, dict[str, Any]] = {}
        for name, key in alert_addresses(doc).items():
            if key in peers:
                if name not in peers[key]["fields"]:
                    peers[key]["fields"].append(name)
                continue
            records = self.index.table.get(key, ())
            canary = key in self.canaries
            if records or canary:
                peers[key] = {
                    "address": key,
                    "fields": [name],
                    "canary": canary,
                    "relays": [r.to_json() for r in records],
                }
        return {"relays_published": self._published, "peers": list(peers.values())}

    def enrich(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` with ``tor`` set (and ``tor.*`` output fields when asked); ``doc`` itself is not changed."""
        out = dict(doc)
        tor = self.tor_object(doc)
        out["tor"] = tor
        if self.output_fields:
            fields = dict(out["output_fields"]) if isinstance(out.get("output_fields"), Mapping) else {}
            fields.update(_flat_fields(tor))
            out["output_fields"] = fields
        return out

    def enrich_line(self, line: bytes) -> LineResult:
        """Enrich one line of Falco JSON output (never raises on bad input).

        >>> from tor_sets.relays import Relay
        >>> enricher = Enricher(RelayIndex.from_snapshot(Snapshot(datetime(2026, 1, 1), ())))
        >>> enricher.enrich_line(b'{"rule":"Other","output_fields":{}}\\n').kind
        'passed'
        >>> enricher.enrich_line(b'{"rule": oops').kind
        'malformed'
        """
        stripped = line.strip()
        if not stripped:
            return LineResult("blank")
        try:
            doc = json.loads(stripped, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return LineResult("malformed", reason=f"not JSON ({reason})")
        if not isinstance(doc, dict):
            return LineResult("malformed", reason=f"a JSON {type(doc).__name__}, not an object")
        if not self.is_tor_alert(doc):
            return LineResult("passed", line if line.endswith(b"\n") else line + b"\n")
        enriched = self.enrich(doc)
        data = json.dumps(enriched, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
        return LineResult("enriched", data, doc=enriched)


def alert_addresses(doc: Mapping[str, Any]) -> dict[str, str]:
    """The addresses of an alert by field, in :data:`ADDRESS_FIELDS` order and canonical form (see
    :func:`canonical_address`): from ``output_fields``, or, when none is there, from the ``fd_sip=``/``fd_cip=``
    words of the output text of tor-sets rules. Values that are no address (``null``, ``<NA>``) are left out.

    >>> alert_addresses({"output_fields": {"fd.cip": "10.0.0.5", "fd.sip": "198.51.100.77", "fd.lip": "<NA>"}})
    {'fd.sip': '198.51.100.77', 'fd.cip': '10.0.0.5'}
    >>> alert_addresses({"output": "Outbound connection | fd_sip=2001:DB8::77 fd_cip=10.0.0.5 process=curl"})
    {'fd.sip': '2001:db8::77', 'fd.cip': '10.0.0.5'}
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
            for m in _OUTPUT_ADDRESS.finditer(output):
                key = canonical_address(m[2])
                if key is not None:
                    found.setdefault(f"fd.{m[1]}", key)
    return found


def _flat_fields(tor: Mapping[str, Any]) -> dict[str, str]:
    """``tor.*`` output fields: each relay attribute, unique values joined by commas, in order."""

    def join(values: Iterable[object]) -> str:
        seen: dict[str, None] = {}
        for value in values:
            if value is not None and value != "":
                seen.setdefault(str(value), None)
        return ",".join(seen)

    relays = [relay for peer in tor["peers"] for relay in peer["relays"]]
    return {
        "tor.address": join(peer["address"] for peer in tor["peers"]),
        "tor.canary": "true" if any(peer["canary"] for peer in tor["peers"]) else "false",
        "tor.fingerprint": join(r["fingerprint"] for r in relays),
        "tor.nickname": join(r["nickname"] for r in relays),
        "tor.roles": join(role.value for role in _ROLE_ORDER if any(role.value in r["roles"] for r in relays)),
        "tor.country": join(r["country"] for r in relays),
        "tor.as_number": join(r["as_number"] for r in relays),
    }


@dataclass(slots=True)
class StreamStats:
    """Counts of one :func:`enrich_stream` run (or of a server's lifetime)."""

    lines: int = 0
    enriched: int = 0
    passed: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)

    def add(self, kind: LineKind) -> None:
        """Count one line of ``kind``."""
        self.lines += 1
        if kind == "enriched":
            self.enriched += 1
        elif kind == "passed":
            self.passed += 1
        elif kind == "malformed":
            self.malformed += 1

    def to_json(self) -> dict[str, int]:
        """The counts as a JSON object."""
        return {"lines": self.lines, "enriched": self.enriched, "passed": self.passed, "malformed": self.malformed}


#: longest line :func:`enrich_stream` reads; longer lines are reported as malformed and skipped
MAX_LINE = 1024 * 1024


def enrich_stream(
    src: IO[bytes],
    dst: IO[bytes],
    enricher: Enricher,
    *,
    max_line: int = MAX_LINE,
    on_malformed: Callable[[int, str], None] | None = None,
) -> StreamStats:
    """Enrich ``src`` into ``dst`` line by line, flushing after each line written (works on a live pipe).

    Args:
        src: Falco JSON output, one alert per line.
        dst: where the lines go.
        enricher: the enricher.
        max_line: lines longer than this are skipped as malformed without being held in memory.
        on_malformed: called with the 1-based line number and the reason for each malformed line.

    Returns:
        The counts, with the numbers of the malformed lines (the first 1,000).
    """
    stats = StreamStats()
    number = 0
    while True:
        line = src.readline(max_line + 1)
        if not line:
            break
        number += 1
        if len(line) > max_line:
            while line and not line.endswith(b"\n"):
                line = src.readline(max_line + 1)
            result = LineResult("malformed", reason=f"longer than {max_line} bytes")
        else:
            result = enricher.enrich_line(line)
        stats.add(result.kind)
        if result.kind == "malformed":
            if len(stats.malformed_lines) < 1000:
                stats.malformed_lines.append(number)
            if on_malformed is not None:
                on_malformed(number, result.reason)
        if result.data:
            dst.write(result.data)
            dst.flush()
    return stats


# ---------------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------------


def _ascii_number(text: str, max_digits: int = 20) -> int | None:
    """``text`` as a whole number written in ASCII digits (surrounding blanks allowed), else None.

    ``str.isdigit`` also accepts ``²`` (which ``int`` then refuses) and Arabic-Indic or fullwidth digits (which
    ``int`` reads); ``int`` refuses more than 4,300 digits. None of them reaches ``int`` here.

    >>> _ascii_number(" 42"), _ascii_number("²"), _ascii_number("\\u0661"), _ascii_number("-1"), _ascii_number("9" * 21)
    (42, None, None, None, None)
    """
    text = text.strip(" \t")
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:2801``, ``[::1]:2801``, ``localhost:2801``) → (IP literal, port).

    Only IP literals and ``localhost`` are accepted, so that binding never depends on name resolution.

    >>> parse_listen("[::1]:0"), parse_listen("localhost:2801")
    (('::1', 0), ('127.0.0.1', 2801))

    Raises:
        ValueError: not such an address.
    """
    host, sep, port_text = text.strip().rpartition(":")
    port = _ascii_number(port_text, max_digits=5)
    if not sep or port is None or port > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address or localhost as HOST, got {host!r}") from None
    return str(address), port


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How :class:`EnrichServer` listens and forwards.

    Attributes:
        host: IP literal to bind; must be loopback unless ``allow_remote``.
        port: TCP port (0: any free port).
        forward: URL every alert is POSTed to (one alert per request, like Falco's ``http_output``), or None.
        forward_timeout: seconds for the forward's connect and read each.
        max_body: largest request body accepted (larger: 413).
        queue_size: alerts waiting to be forwarded; more are dropped with a warning.
        keep: enriched alerts kept for ``GET /alerts``.
        allow_remote: allow binding a non-loopback address.
        max_connections: connections served at once. When all are taken, a new connection pushes out the one
            that has waited longest for its request (a slow or idle client); when every one is busy answering,
            the new one is closed at once.
        request_timeout: seconds a client has to send a whole request, head and body, counted from when the
            server starts waiting for it (for an idle keep-alive connection, from the end of the last answer);
            slower clients are disconnected. Also the bound on sending each answer.
        log_interval: seconds over which repeated warnings of one kind (malformed lines, a full forward queue,
            forward failures, slow or surplus connections, refused requests) are summarised: the first few of
            each kind are logged, the rest counted in one line when the interval is over.
    """

    host: str = "127.0.0.1"
    port: int = 0
    forward: str | None = None
    forward_timeout: float = 5.0
    max_body: int = 1024 * 1024
    queue_size: int = 1000
    keep: int = 1000
    allow_remote: bool = False
    max_connections: int = 64
    request_timeout: float = 10.0
    log_interval: float = 10.0

    def check(self) -> None:
        """Check the settings before anything is bound.

        Raises:
            SanityError: a non-loopback address without ``allow_remote``.
            TorSetsError: a forward URL that is not HTTP(S) (shown without its credentials), a body limit,
                connection limit, request timeout or log interval that is not positive.
        """
        address = ipaddress.ip_address(self.host)
        if not address.is_loopback and not self.allow_remote:
            raise SanityError(f"refusing to listen on non-loopback address {self.host} (use --allow-remote)")
        if self.forward is not None:
            try:
                url = urllib.parse.urlsplit(self.forward)
                valid = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
            except ValueError:  # a bad port or IPv6 literal
                valid = False
            if not valid:
                shown = redact_url(self.forward)
                raise TorSetsError(f"--forward must be an http:// or https:// URL, got {shown!r}")
        if self.max_body < 1:
            raise TorSetsError("the body size limit must be positive")
        if self.max_connections < 1:
            raise TorSetsError("the connection limit must be positive")
        if not self.request_timeout > 0 or not self.log_interval > 0:
            raise TorSetsError("the request timeout and the log interval must be positive")


#: the endpoint's repeated warnings, by kind: (lines logged per interval, the one summary line of the rest)
_WARNINGS: dict[str, tuple[int, str]] = {
    "malformed": (5, "enrich: %d more malformed line(s) skipped in the last %.1f s"),
    "dropped": (5, "enrich: %d more alert(s) dropped on a full forward queue in the last %.1f s"),
    "forward_failed": (1, "enrich: %d more forward failure(s) in the last %.1f s"),
    "timed_out": (5, "enrich: %d more client(s) dropped at the request deadline in the last %.1f s"),
    "evicted": (5, "enrich: %d more waiting connection(s) closed to make room in the last %.1f s"),
    "refused": (5, "enrich: %d more new connection(s) closed, all busy, in the last %.1f s"),
    "failed": (5, "enrich: %d more failed request(s) in the last %.1f s"),
    "too_large": (5, "enrich: %d more too large bodies refused in the last %.1f s"),
    "write_failed": (5, "enrich: %d more alert(s) not written in the last %.1f s"),
}


class _Throttle:
    """One kind of warning, rate-limited: the first ``burst`` of an interval are logged, the rest only counted,
    and the count is logged in one summary line once the interval is over (by the next warning of the kind or by
    :meth:`flush`, which the server calls several times a second and at its end).

    An interval opens with the first warning after the previous one closed, so a quiet endpoint logs nothing.

    >>> throttle = _Throttle("%d more in the last %.1f s", burst=2, interval=10.0)
    >>> [throttle.warn("line %d", n, now=float(n)) for n in range(5)]  # logs "line 0" and "line 1"
    [True, True, False, False, False]
    >>> throttle.flush(now=9.0), throttle.flush(now=12.0)  # the second logs "3 more in the last 12.0 s"
    (0, 3)
    """

    def __init__(self, summary: str, *, burst: int, interval: float) -> None:
        self.summary = summary
        self.burst = burst
        self.interval = interval
        self._lock = threading.Lock()
        self._opened: float | None = None
        self._logged = 0
        self._held = 0

    def warn(self, message: str, *args: object, now: float | None = None) -> bool:
        """Log ``message % args`` unless this interval's ``burst`` is spent; return whether it was logged."""
        with self._lock:
            now = time.monotonic() if now is None else now
            self._close(now, force=False)
            if self._opened is None:
                self._opened = now
            if self._logged < self.burst:
                self._logged += 1
                log.warning(message, *args)
                return True
            self._held += 1
            return False

    def flush(self, *, now: float | None = None, force: bool = False) -> int:
        """Close the interval if it is over (or ``force``): log the summary; return the count it gave (0: none)."""
        with self._lock:
            return self._close(time.monotonic() if now is None else now, force)

    def _close(self, now: float, force: bool) -> int:
        if self._opened is None or (not force and now - self._opened < self.interval):
            return 0
        held = self._held
        if held:
            log.warning(self.summary, held, now - self._opened)
        self._opened, self._logged, self._held = None, 0, 0
        return held


class _Connections:
    """The connections being served (at most ``limit``) and since when each has waited for its request.

    A connection *waits* from the moment the server starts reading a request on it (its accept, or the end of
    the previous answer on a keep-alive connection) until the request is read whole; it is *busy* while that
    request is answered. When all places are taken, :meth:`admit` makes room by pushing out the connection that
    has waited longest: a client that trickles its request, or sits idle, loses its place to a prompt one.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._waiting_since: dict[socket.socket, float | None] = {}  # None: busy
        self._stopping = False

    def admit(self, conn: socket.socket, now: float) -> tuple[bool, tuple[socket.socket, float] | None]:
        """Take ``conn`` in, waiting since ``now``.

        Returns:
            Whether it was taken (not when every place is busy), and the connection pushed out to make room
            with the seconds it had waited, if any; the caller hangs that one up.
        """
        with self._lock:
            pushed = None
            if len(self._waiting_since) >= self.limit:
                waiting = [(since, c) for c, since in self._waiting_since.items() if since is not None]
                if not waiting:
                    return False, None
                since, oldest = min(waiting, key=lambda item: item[0])
                del self._waiting_since[oldest]
                pushed = (oldest, now - since)
            self._waiting_since[conn] = now
            return True, pushed

    def waiting(self, conn: socket.socket, now: float) -> bool:
        """``conn`` waits for its next request from ``now`` on; False: it was pushed out or the server stops."""
        with self._lock:
            if self._stopping or conn not in self._waiting_since:
                return False
            self._waiting_since[conn] = now
            return True

    def busy(self, conn: socket.socket) -> None:
        """``conn`` has sent its request whole and is being answered."""
        with self._lock:
            if conn in self._waiting_since:
                self._waiting_since[conn] = None

    def remove(self, conn: socket.socket) -> None:
        """``conn`` is closed."""
        with self._lock:
            self._waiting_since.pop(conn, None)

    def stop(self) -> list[socket.socket]:
        """No more requests (see :meth:`waiting`): remove and return every waiting connection."""
        with self._lock:
            self._stopping = True
            waiting = [c for c, since in self._waiting_since.items() if since is not None]
            for conn in waiting:
                del self._waiting_since[conn]
            return waiting


def _hang_up(conn: socket.socket) -> None:
    """End a connection that another thread may be reading: its read returns at once with end of file."""
    with contextlib.suppress(OSError):  # already gone
        conn.shutdown(socket.SHUT_RDWR)


class _RequestReader(io.RawIOBase):
    """A connection's socket as a raw stream whose reads share one deadline per request (see :meth:`start`).

    A per-read timeout lets a client keep a connection for ever by sending a byte before each read times out;
    here every read only gets what is left of the request's time.
    """

    def __init__(self, conn: socket.socket) -> None:
        super().__init__()
        self._conn = conn
        self._deadline = float("inf")
        self.received = 0
        self.expired = False

    def start(self, timeout: float) -> None:
        """A new request: it must arrive whole within ``timeout`` seconds from now."""
        self._deadline = time.monotonic() + timeout
        self.received = 0
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError("the request took longer than its deadline")
            self._conn.settimeout(left)
            count = self._conn.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise
        self.received += count
        return count


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: EnrichServer

    def process_request(self, request: Any, client_address: Any) -> None:
        app = self.app
        admitted, pushed = app._connections.admit(request, time.monotonic())
        if pushed is not None:
            oldest, waited = pushed
            _hang_up(oldest)
            app._count("evicted")
            app._warn(
                "evicted",
                "enrich: all %d connections taken; closed the one that had waited %.2f s for its request",
                app.settings.max_connections,
                waited,
            )
        if not admitted:
            app._count("refused")
            app._warn("refused", "enrich: all connections busy; closing a new one from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            app._connections.remove(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.app._connections.remove(request)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` several times a second: log the summaries of closed intervals."""
        self.app._flush_warnings()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is routine: one debug line, not a traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("enrich: connection from %s ended: %s", client_address[0], error)
            return
        self.app._warn("failed", "enrich: request from %s failed: %r", client_address[0], error)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tor-sets-enrich"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file: replaced by one whose reads share the request's deadline
        self._reader = _RequestReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        app = self.server.app
        if not app._connections.waiting(self.connection, time.monotonic()):
            self.close_connection = True
            return
        self._reader.start(app.settings.request_timeout)
        super().handle_one_request()
        if self._reader.expired:
            self.close_connection = True
            if self._reader.received:  # not an idle keep-alive connection: a slow client
                app._count("timed_out")
                app._warn(
                    "timed_out",
                    "enrich: dropped a client at %s that took longer than %g s to send its request",
                    self.client_address[0],
                    app.settings.request_timeout,
                )

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("enrich: %s %s", self.address_string(), format % args)

    def _busy(self) -> None:
        """The request is read: the connection cannot be pushed out now, and sending the answer is bounded."""
        self.server.app._connections.busy(self.connection)
        self.connection.settimeout(self.server.app.settings.request_timeout)

    def _reply(self, status: int, body: bytes, content_type: str = "application/json", close: bool = False) -> None:
        self._busy()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode() + b"\n", close=True)

    def do_POST(self) -> None:
        app = self.server.app
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._error(411, "a Content-Length is required")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._error(411, "a Content-Length is required")
            return
        length = _ascii_number(length_text)
        if length is None:
            self._error(400, "the Content-Length is not a number")
            return
        if length > app.settings.max_body:
            app._count("too_large")
            app._warn(
                "too_large",
                "enrich: refused a %d-byte body from %s (limit %d)",
                length,
                self.client_address[0],
                app.settings.max_body,
            )
            self._error(413, f"body larger than {app.settings.max_body} bytes")
            return
        try:
            body = self.rfile.read(length)
        except OSError:  # the deadline passed (counted by handle_one_request), or the client is gone
            self.close_connection = True
            return
        self._busy()
        if len(body) != length:
            self._error(400, "body shorter than its Content-Length")
            return
        stats = app.handle_body(body, peer=self.client_address[0])
        status = 400 if stats.malformed and not (stats.enriched or stats.passed) else 200
        self._reply(status, json.dumps(stats.to_json(), sort_keys=True).encode() + b"\n")

    def do_GET(self) -> None:
        self._busy()
        try:
            url = urllib.parse.urlsplit(self.path)
        except ValueError:  # e.g. an unclosed "[" taken for an IPv6 host
            self._error(400, "not a valid path")
            return
        if url.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain")
            return
        if url.path != "/alerts":
            self._error(404, "not found")
            return
        if not ipaddress.ip_address(self.client_address[0].split("%", 1)[0]).is_loopback:
            self._error(403, "recent alerts are only served to loopback clients")
            return
        after = _ascii_number(urllib.parse.parse_qs(url.query).get("after", ["0"])[0])
        if after is None:
            self._error(400, "after must be a whole number")
            return
        self._reply(200, self.server.app.recent_json(after))


class EnrichServer:
    """An HTTP endpoint that enriches posted alerts and forwards them.

    ``POST`` (any path): the body is one alert (Falco's ``http_output``, falcosidekick's webhook; pretty-printed
    JSON is fine) or several, one per line; the answer counts them (``{"enriched":1,"lines":1,...}``; 400 when
    nothing in it was a JSON object or the Content-Length is no number, 411 without Content-Length, 413 over the
    size limit). Each alert is forwarded in a request of its own from a bounded queue by one background thread,
    so a slow or dead receiver never blocks Falco; redirects are not followed; failures are logged
    (rate-limited) and counted, never raised.

    ``GET /alerts?after=N`` (loopback clients only): ``{"next": M, "alerts": [...]}``, the enriched alerts
    numbered above N still kept. ``GET /healthz``: ``ok``.

    Against slow clients (see :class:`ServerSettings`): each request must arrive whole within
    ``request_timeout``; when ``max_connections`` are open, a new one pushes out the one that has waited longest
    for its request. Repeated warnings are summarised per ``log_interval``; a forward URL is only ever shown
    without its credentials.

    Args:
        enricher: the enricher.
        settings: where to listen and forward.
        write: called with every output line (enriched or passed), e.g. to append to a file; calls are
            serialised.
    """

    def __init__(
        self, enricher: Enricher, settings: ServerSettings, *, write: Callable[[bytes], None] | None = None
    ) -> None:
        settings.check()
        self.enricher = enricher
        self.settings = settings
        self._write = write
        self._lock = threading.Lock()
        self._connections = _Connections(settings.max_connections)
        self._warnings = {
            kind: _Throttle(summary, burst=burst, interval=settings.log_interval)
            for kind, (burst, summary) in _WARNINGS.items()
        }
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=max(settings.keep, 1))
        self._seq = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max(settings.queue_size, 1))
        self._server: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> EnrichServer:
        """Bind and start serving (and forwarding) in background threads.

        Raises:
            TorSetsError: the address cannot be bound.
        """
        family = socket.AF_INET6 if ipaddress.ip_address(self.settings.host).version == 6 else socket.AF_INET
        server_class = type("_BoundServer", (_HTTPServer,), {"address_family": family})
        try:
            server = server_class((self.settings.host, self.settings.port), _Handler)
        except OSError as exc:
            raise TorSetsError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from exc
        server.app = self
        self._server = server
        serve = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="tor-sets-enrich-http", daemon=True
        )
        self._threads = [serve]
        if self.settings.forward is not None:
            self._threads.append(
                threading.Thread(target=self._forward_loop, name="tor-sets-enrich-forward", daemon=True)
            )
        for thread in self._threads:
            thread.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the bound endpoint."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop serving (hanging up on clients still sending a request, letting answers in progress finish), then
        give the forwarder up to ``drain_timeout`` seconds to send what is queued; log the pending summaries."""
        if self._server is None:
            return
        self._server.shutdown()
        for conn in self._connections.stop():
            _hang_up(conn)
        self._server.server_close()
        if self.settings.forward is not None:
            deadline = time.monotonic() + drain_timeout
            while True:
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if time.monotonic() > deadline:
                        break
            for thread in self._threads[1:]:
                thread.join(max(deadline - time.monotonic(), 0))
            left = self._queue.qsize()
            if left:
                log.warning("enrich: %d alert(s) not forwarded at shutdown", left)
        self._flush_warnings(force=True)
        self._server = None

    def __enter__(self) -> EnrichServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- work -----------------------------------------------------------------------------------------------

    def handle_body(self, body: bytes, *, peer: str = "") -> StreamStats:
        """Enrich, write, keep and queue every alert of one request body; return its counts."""
        stats = StreamStats()
        stripped = body.strip()
        lines: list[bytes]
        if b"\n" in stripped:
            try:
                doc = json.loads(stripped, parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                lines = stripped.split(b"\n")
            else:  # one pretty-printed alert
                lines = [json.dumps(doc, separators=(",", ":")).encode()] if isinstance(doc, dict) else [stripped]
        else:
            lines = [stripped]
        for number, line in enumerate(lines, 1):
            result = self.enricher.enrich_line(line)
            stats.add(result.kind)
            if result.kind == "malformed":
                self._warn(
                    "malformed", "enrich: request from %s, line %d skipped: %s", peer or "?", number, result.reason
                )
                continue
            if result.kind == "blank":
                continue
            self._deliver(result)
        with self._lock:
            for kind in ("enriched", "passed", "malformed"):
                self._counts[kind] += getattr(stats, kind)
        return stats

    def _deliver(self, result: LineResult) -> None:
        with self._lock:
            if self._write is not None:
                try:
                    self._write(result.data)
                except OSError as exc:
                    self._counts["write_failed"] += 1
                    self._warn("write_failed", "enrich: cannot write an alert: %s", exc.strerror or exc)
            if result.kind == "enriched":
                self._seq += 1
                self._recent.append((self._seq, result.data.rstrip(b"\n")))
        if self.settings.forward is not None:
            try:
                self._queue.put_nowait(result.data.rstrip(b"\r\n"))
            except queue.Full:
                self._count("dropped")
                self._warn("dropped", "enrich: forward queue full (%d); alert dropped", self.settings.queue_size)

    def recent_json(self, after: int = 0) -> bytes:
        """``{"next": N, "alerts": [...]}`` with the kept enriched alerts numbered above ``after``."""
        with self._lock:
            items = [line for seq, line in self._recent if seq > after]
            following = self._seq
        return b'{"next":%d,"alerts":[' % following + b",".join(items) + b"]}\n"

    def stats(self) -> dict[str, int]:
        """Lifetime counts: enriched, passed, malformed, forwarded, forward_failed, dropped, too_large,
        write_failed, and against slow clients: timed_out (past ``request_timeout``), evicted (pushed out for a
        new connection), refused (every connection busy)."""
        with self._lock:
            return dict(self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _warn(self, kind: str, message: str, *args: object) -> None:
        self._warnings[kind].warn(message, *args)

    def _flush_warnings(self, *, force: bool = False) -> None:
        for throttle in self._warnings.values():
            throttle.flush(force=force)

    def _forward_loop(self) -> None:
        session = requests.Session()
        url = self.settings.forward
        assert url is not None
        timeout = (self.settings.forward_timeout, self.settings.forward_timeout)
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                try:
                    response = session.post(
                        url,
                        data=item,
                        headers={"Content-Type": "application/json"},
                        timeout=timeout,
                        allow_redirects=False,  # a 307 would re-POST the alert (and the credentials) elsewhere
                    )
                    response.close()
                except (requests.RequestException, ValueError) as exc:  # urllib3 lets some URL errors through
                    self._forward_failed(f"{type(exc).__name__}: {_root(exc)}")
                    continue
                if 300 <= response.status_code < 400:
                    self._forward_failed(f"HTTP {response.status_code} (redirects are not followed)")
                elif response.status_code >= 400:
                    self._forward_failed(f"HTTP {response.status_code}")
                else:
                    self._count("forwarded")
        finally:
            session.close()

    def _forward_failed(self, why: str) -> None:
        self._count("forward_failed")
        url = self.settings.forward or ""
        self._warn(
            "forward_failed",
            "enrich: forwarding to %s failed (%s); %d failure(s) so far",
            redact_url(url),
            _without_credentials(why, url),
            self.stats().get("forward_failed", 0),
        )


def _root(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc)[:200]


def _without_credentials(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with the userinfo of ``url`` hidden, as written or decoded.

    >>> _without_credentials("Failed to parse: http://u:pa%24s@h:1x/ (pa$s)", "http://u:pa%24s@h:1x/")
    'Failed to parse: http://***@h:1x/ (***)'
    """
    text = text.replace(url, redact_url(url))
    userinfo = url.partition("//")[2].split("/", 1)[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    for secret in (userinfo, urllib.parse.unquote(userinfo), password, urllib.parse.unquote(password)):
        if secret:
            text = text.replace(secret, "***")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Lookup and enrichment speed on one index.

    Attributes:
        relays: running relays indexed.
        addresses: distinct addresses indexed.
        build_s: seconds to build the index.
        lookups: lookups timed (half hits as text, a quarter misses, a quarter ``ipaddress`` objects).
        lookups_per_s: their rate.
        alerts: alert lines enriched.
        alerts_per_s: their rate (parse, look up, add ``tor``, serialise).
    """

    relays: int
    addresses: int
    build_s: float
    lookups: int
    lookups_per_s: float
    alerts: int
    alerts_per_s: float

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        return {
            "relays": self.relays,
            "addresses": self.addresses,
            "build_s": round(self.build_s, 4),
            "lookups": self.lookups,
            "lookups_per_s": round(self.lookups_per_s),
            "alerts": self.alerts,
            "alerts_per_s": round(self.alerts_per_s),
        }


_BENCH_ALERT = (
    '{"hostname":"bench","output":"Outbound connection to a Tor entry relay","output_fields":{"evt.time":1,'
    '"fd.cip":"10.0.0.5","fd.sip":"%s","proc.name":"curl"},"priority":"Warning","rule":"%s","source":"syscall",'
    '"tags":["tor"],"time":"2026-01-01T00:00:00.000000000Z"}\n'
)


def bench(snapshot: Snapshot, *, lookups: int = 400_000, alerts: int = 20_000, seed: int = 1) -> BenchResult:
    """Time :meth:`RelayIndex.from_snapshot`, :meth:`RelayIndex.lookup` and :meth:`Enricher.enrich_line`."""
    start = time.perf_counter()
    index = RelayIndex.from_snapshot(snapshot)
    build_s = time.perf_counter() - start
    rng = random.Random(seed)
    known = sorted(index.table)
    if not known:
        raise TorSetsError("the snapshot has no relay address to look up")
    hits = [rng.choice(known) for _ in range(lookups // 2)]
    misses = [f"203.0.113.{rng.randrange(256)}" for _ in range(lookups // 4)]
    objects = [ipaddress.ip_address(rng.choice(known)) for _ in range(lookups - len(hits) - len(misses))]
    probes: list[str | IPAddress] = [*hits, *misses, *objects]
    rng.shuffle(probes)
    lookup = index.lookup
    start = time.perf_counter()
    for probe in probes:
        lookup(probe)
    lookup_s = time.perf_counter() - start
    enricher = Enricher(index)
    lines = [(_BENCH_ALERT % (rng.choice(known), OUTBOUND_RULE)).encode() for _ in range(alerts)]
    start = time.perf_counter()
    for line in lines:
        enricher.enrich_line(line)
    alerts_s = time.perf_counter() - start
    return BenchResult(
        relays=index.relay_count,
        addresses=len(index),
        build_s=build_s,
        lookups=len(probes),
        lookups_per_s=len(probes) / lookup_s,
        alerts=alerts,
        alerts_per_s=alerts / alerts_s,
    )
