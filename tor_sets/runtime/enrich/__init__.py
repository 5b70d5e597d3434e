"""Alert enrichment: which Tor relays stand behind the address a tor-sets rule fired on.

The modules, in the order an alert meets them:

* :mod:`.index`: :class:`RelayIndex` and :class:`RelayRecord`, an address → relays lookup built once from a
  :class:`~tor_sets.relays.Snapshot`; :func:`canonical_address`, :func:`alert_addresses`.
* :mod:`.stream`: :class:`Enricher`, one Falco JSON alert line in, the same line out (alerts of tor-sets rules get a
  ``tor`` object, every other line passes byte for byte); :func:`enrich_stream` runs it over a stream.
* :mod:`.server`: :class:`EnrichServer` and :class:`ServerSettings`, the same over HTTP (Falco's ``http_output`` or
  falcosidekick's webhook post to it), forwarding every alert to another URL and keeping the last enriched ones for
  ``GET /alerts``; :func:`parse_listen`. :mod:`.limits` bounds its clients and its warnings.
* :mod:`.speed`: :func:`measure_speed` (``tor-sets enrich --bench``).

>>> from datetime import datetime
>>> from ipaddress import ip_address
>>> from tor_sets.relays import Relay, Snapshot
>>> guard = Relay("A" * 40, "g1", (ip_address("198.51.100.1"),), flags=frozenset({"Guard", "Running"}))
>>> enricher = Enricher(RelayIndex.from_snapshot(Snapshot(datetime(2026, 1, 1), (guard,))))
>>> line = b'{"rule":"Outbound Connection to Tor Entry Relay","output_fields":{"fd.sip":"198.51.100.1"}}'
>>> result = enricher.enrich_line(line)
>>> result.kind, [r.nickname for r in enricher.index.lookup("198.51.100.1")]
('enriched', ['g1'])
"""

from __future__ import annotations

from tor_sets.runtime.enrich.index import RelayIndex, RelayRecord, alert_addresses, canonical_address
from tor_sets.runtime.enrich.server import EnrichServer, ServerSettings, parse_listen
from tor_sets.runtime.enrich.speed import EnrichSpeed, measure_speed
from tor_sets.runtime.enrich.stream import TOR_RULES, Enricher, LineResult, StreamStats, enrich_stream

__all__ = [
    "TOR_RULES",
    "EnrichServer",
    "EnrichSpeed",
    "Enricher",
    "LineResult",
    "RelayIndex",
    "RelayRecord",
    "ServerSettings",
    "StreamStats",
    "alert_addresses",
    "canonical_address",
    "enrich_stream",
    "measure_speed",
    "parse_listen",
]
