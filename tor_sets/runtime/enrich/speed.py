"""How fast enrichment runs on a snapshot: ``tor-sets enrich --bench``.

Exports :func:`measure_speed` and :class:`EnrichSpeed`.
"""

from __future__ import annotations

import ipaddress
import json
import random
import time
from dataclasses import dataclass

from tor_sets.errors import TorSetsError
from tor_sets.falco.alerts import alert_json
from tor_sets.falco.generate import OUTBOUND_RULE, generate
from tor_sets.relays import IPAddress, RelaySets, Snapshot
from tor_sets.runtime.enrich.index import RelayIndex
from tor_sets.runtime.enrich.stream import Enricher

__all__ = ["EnrichSpeed", "measure_speed"]


@dataclass(frozen=True, slots=True)
class EnrichSpeed:
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


#: the output of the alert the measurement enriches: tor-sets' outbound rule's, as the default build writes it
_DOCUMENTATION = frozenset({ipaddress.ip_address("198.51.100.77")})
_OUTPUT = generate(RelaySets(entry=_DOCUMENTATION, exit=_DOCUMENTATION)).rules()[OUTBOUND_RULE].output
_TIME_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def _alert_line(address: str) -> bytes:
    """One alert line as Falco writes it, of tor-sets' outbound rule, on a connection to ``address``."""
    doc = alert_json(
        rule=OUTBOUND_RULE,
        priority="Warning",
        output=_OUTPUT,
        values={
            "fd.sip": address,
            "fd.cip": "10.0.0.5",
            "fd.cport": "40112",
            "fd.sport": "443",
            "fd.l4proto": "tcp",
            "evt.type": "connect",
            "evt.res": "EINPROGRESS",
            "user.name": "root",
            "proc.name": "curl",
            "proc.cmdline": "curl https://example.test/",
        },
        ts_ns=_TIME_NS,
        hostname="bench",
        tags=("tor",),
    )
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def measure_speed(snapshot: Snapshot, *, lookups: int = 400_000, alerts: int = 20_000, seed: int = 1) -> EnrichSpeed:
    """Time :meth:`RelayIndex.from_snapshot`, :meth:`RelayIndex.lookup` and :meth:`Enricher.enrich_line`.

    Args:
        snapshot: the relay data.
        lookups: lookups to time (half hits as text, a quarter misses, a quarter ``ipaddress`` objects).
        alerts: alert lines to enrich (built with :func:`tor_sets.falco.alerts.alert_json`).
        seed: the random choice of addresses.

    Raises:
        TorSetsError: the snapshot has no running relay with an address.
    """
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
    lines = [_alert_line(rng.choice(known)) for _ in range(alerts)]
    start = time.perf_counter()
    for line in lines:
        enricher.enrich_line(line)
    alerts_s = time.perf_counter() - start
    return EnrichSpeed(
        relays=index.relay_count,
        addresses=len(index),
        build_s=build_s,
        lookups=len(probes),
        lookups_per_s=len(probes) / lookup_s,
        alerts=alerts,
        alerts_per_s=alerts / alerts_s,
    )
