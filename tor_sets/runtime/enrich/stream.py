"""Enriching Falco JSON alerts line by line: alerts of tor-sets rules get a ``tor`` object, every other line passes
byte for byte.

Exports :class:`Enricher` (one line in, one :class:`LineResult` out; never raises on bad input),
:func:`enrich_stream` (the same over a stream, counted in :class:`StreamStats`), :data:`TOR_RULES` and
:data:`MAX_LINE`.

Input formats (both one JSON object per alert). Falco with ``json_output: true`` (file, stdout, program and
``http_output`` channels), see https://falco.org/docs/concepts/outputs/formatting/ and
:mod:`tor_sets.falco.alerts`::

    {"hostname":"h","output":"12:00:00.000000001: Warning Outbound connection to a Tor entry relay | ...",
     "output_fields":{"evt.time":1767268800000000001,"fd.cip":"10.0.0.5","fd.sip":"198.51.100.77",...},
     "priority":"Warning","rule":"Outbound Connection to Tor Entry Relay","source":"syscall",
     "tags":["network","tor"],"time":"2026-01-01T12:00:00.000000001Z"}

falcosidekick's webhook output posts its ``FalcoPayload`` (``types/types.go``): the same keys plus ``uuid``, with
``time`` in RFC 3339 and any custom fields merged into ``output_fields``. A line is read as a plain JSON object,
not through :func:`tor_sets.falco.alerts.parse_alert`: keys that module does not know (``uuid``, a falcosidekick
custom field) must pass unchanged, and an object without ``time`` or ``priority`` is still passed on.

What is added (relay-written text such as nicknames stays data: it is only ever JSON-escaped)::

    "tor":{"relays_published":"2026-02-28T01:00:00Z","peers":[{"address":"198.51.100.77","fields":["fd.sip"],
           "canary":false,"relays":[{"fingerprint":"...","nickname":"...","flags":["Guard","Running"],
           "roles":["entry","relay"],"first_seen":"2021-08-22T19:00:00Z","country":"de","as_number":"AS24940"}]}]}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RELAY_RULE, OUTBOUND_RULE
from tor_sets.relays import IPAddress
from tor_sets.runtime.enrich.index import ROLE_ORDER, RelayIndex, alert_addresses, canonical_address, json_time

__all__ = [
    "MAX_LINE",
    "TOR_RULES",
    "Enricher",
    "LineKind",
    "LineResult",
    "StreamStats",
    "enrich_stream",
    "reject_constant",
]

#: names of the rules tor-sets writes; alerts of other rules pass through untouched
TOR_RULES: frozenset[str] = frozenset({OUTBOUND_RULE, OUTBOUND_RELAY_RULE, INBOUND_RULE})

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


def reject_constant(name: str) -> Any:
    """``json.loads``' ``parse_constant``: ``NaN`` and ``Infinity`` are not JSON (the parse fails on them)."""
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
        self._published = json_time(index.relays_published)

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

        >>> from datetime import datetime
        >>> from tor_sets.relays import Snapshot
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
            doc = json.loads(stripped, parse_constant=reject_constant)
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
        "tor.roles": join(role.value for role in ROLE_ORDER if any(role.value in r["roles"] for r in relays)),
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
