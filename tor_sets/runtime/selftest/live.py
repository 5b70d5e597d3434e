"""The live self-test: real Falco with its modern eBPF probe watches real connections made between two network
namespaces, and the alerts come out of ``tor-sets enrich``'s endpoint enriched.

Exports :func:`run_live`, :class:`LiveCase`, :class:`LivePhase`, :class:`LiveReport`, :func:`canary_relay`,
:func:`format_live` and :data:`CANARY_FINGERPRINT`.

One run, all on this host and nothing outside it:

1. The relay data (the bundled snapshot by default) gains one relay: the canary (a documentation address, Guard and
   Exit). Rules, the enrich index and the plugin table are all made from that one snapshot, so an alert on the
   canary comes out enriched with the canary's fingerprint.
2. ``lists`` phase: Falco (:class:`~tor_sets.engines.live.LiveFalco`) loads the list rules, writes alerts to a
   JSON file and POSTs them (``http_output``) to an in-process :class:`~tor_sets.runtime.enrich.EnrichServer`. In a
   :class:`~tor_sets.runtime.selftest.lab.Lab` (two namespaces, a veth pair, no default route): an outbound
   connection to the canary and an inbound one from it must alert; a connect the kernel refuses and both
   connections with the bystander (the relay namespace's other address) must not. Silence is judged after a marker
   event that Falco sees after them (:meth:`~tor_sets.engines.live.LiveFalco.sync`), not after a sleep.
3. ``plugin`` phase (``--plugin``): the same with the tor-sets plugin loaded and the plugin rules; the table is first
   one without the canary (an outbound connection stays silent), then replaced by one with it while Falco runs; once
   the plugin has reloaded it, the connections alert.

The time from each connection to its alert (read from Falco's file output) is reported. Falco is stopped and the
namespaces removed on every way out (SIGTERM included; after SIGKILL, Falco gets its parent-death signal and the
lab's watcher removes the namespaces).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tor_sets.build import BuildOptions, build, relay_sets
from tor_sets.engines.base import Plugin
from tor_sets.engines.live import LiveFalco
from tor_sets.errors import EngineUnavailable, TorSetsError
from tor_sets.falco.alerts import Alert
from tor_sets.files import atomic_write
from tor_sets.relays import IPAddress, Relay, Snapshot
from tor_sets.runtime.enrich import Enricher, EnrichServer, RelayIndex, ServerSettings
from tor_sets.runtime.selftest.lab import Lab, Observed, Refused
from tor_sets.runtime.selftest.plan import HostNetwork, LabPlan, plan_lab
from tor_sets.runtime.selftest.sinks import CASE_RULES, HttpSink, alert_matches, alerts_wanted

__all__ = [
    "CANARY_FINGERPRINT",
    "CANARY_NICKNAME",
    "DEFAULT_CANARY",
    "LiveCase",
    "LivePhase",
    "LiveReport",
    "canary_relay",
    "format_live",
    "run_live",
]

log = logging.getLogger(__name__)

#: the canary relay's fingerprint and nickname (made up: no relay has them)
CANARY_FINGERPRINT = "CA" * 20
CANARY_NICKNAME = "torsetsCanary"
DEFAULT_CANARY = ipaddress.ip_address("198.51.100.77")
#: how often the plugin looks for a replaced table during the self-test
PLUGIN_CHECK_S = 0.2
#: version of the ``selftest --live --json`` document
_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class LiveCase:
    """One connection of the live self-test and what Falco made of it.

    Attributes:
        name: ``outbound``, ``inbound``, ``refused``, ``bystander-outbound``, ``bystander-inbound``, or with
            ``before-swap`` for the plugin phase's connection made with the old table.
        connection: ``client:port -> server:port``.
        expect_alert: whether an alert must come.
        alerted: whether one came (for a silent case: any Tor alert on it at all).
        rule: the rule that alerted.
        latency_s: from the syscall to the alert being read from Falco's file output.
        enriched: the alert came out of the enrich endpoint with the canary's fingerprint (None: not checked).
    """

    name: str
    connection: str
    expect_alert: bool
    alerted: bool
    rule: str | None = None
    latency_s: float | None = None
    enriched: bool | None = None

    @property
    def ok(self) -> bool:
        return self.alerted == self.expect_alert and self.enriched is not False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "connection": self.connection,
            "expect_alert": self.expect_alert,
            "alerted": self.alerted,
            "rule": self.rule,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 2),
            "enriched": self.enriched,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class LivePhase:
    """One Falco run of the self-test.

    Attributes:
        name: ``lists`` or ``plugin``.
        falco_start_s: from starting Falco to its first marker alert.
        cases: every connection and its outcome.
        notes: what else was seen (the plugin's reload, Falco's warnings).
    """

    name: str
    falco_start_s: float
    cases: tuple[LiveCase, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)


@dataclass(frozen=True, slots=True)
class LiveReport:
    """The live self-test's outcome."""

    canary: IPAddress
    falco_version: str
    phases: tuple[LivePhase, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return bool(self.phases) and all(p.ok for p in self.phases)

    def to_json(self) -> dict[str, object]:
        return {
            "schema": _SCHEMA,
            "ok": self.ok,
            "canary": str(self.canary),
            "falco_version": self.falco_version,
            "phases": [
                {
                    "name": p.name,
                    "ok": p.ok,
                    "falco_start_s": round(p.falco_start_s, 3),
                    "cases": [c.to_json() for c in p.cases],
                    "notes": list(p.notes),
                }
                for p in self.phases
            ],
        }


def canary_relay(canary: IPAddress) -> Relay:
    """The made-up relay at ``canary``: Guard and Exit, so both rules watch it."""
    return Relay(
        CANARY_FINGERPRINT,
        CANARY_NICKNAME,
        (canary,),
        exit_addresses=(canary,) if canary.version == 4 else (),
        flags=frozenset({"Guard", "Exit", "Running", "Valid", "Fast", "Stable"}),
    )


def _doc(alert: Alert) -> dict[str, Any]:
    return {"rule": alert.rule, "output": alert.output, "output_fields": dict(alert.output_fields)}


def _tor_alerts(alerts: Sequence[Alert]) -> list[Alert]:
    rules = frozenset().union(*CASE_RULES.values())
    return [a for a in alerts if a.rule in rules]


class _Phase:
    """The bookkeeping of one Falco run: connections made, alerts awaited."""

    def __init__(self, falco: LiveFalco, plan: LabPlan, timeout: float) -> None:
        self.falco = falco
        self.plan = plan
        self.timeout = timeout
        self.cases: list[LiveCase] = []

    def positives(self, observed: Sequence[Observed], enrich: HttpSink | None, prefix: str = "") -> None:
        wanted = alerts_wanted(observed)
        seen: dict[int, tuple[Alert, int]] = {}

        def found(alerts: list[Alert]) -> bool:
            now = time.time_ns()
            for alert in _tor_alerts(alerts):
                for number, expected in enumerate(wanted):
                    if number not in seen and alert_matches(expected, _doc(alert)):
                        seen[number] = (alert, now)
            return len(seen) == len(wanted)

        self.falco.wait_for(found, self.timeout)
        enriched = self._enriched(observed, enrich) if enrich is not None else {}
        for number, (obs, expected) in enumerate(zip(observed, wanted, strict=True)):
            hit = seen.get(number)
            self.cases.append(
                LiveCase(
                    f"{prefix}{obs.case}",
                    obs.connection,
                    expect_alert=True,
                    alerted=hit is not None,
                    rule=hit[0].rule if hit else None,
                    latency_s=max(hit[1] - expected.ts_ns, 0) / 1e9 if hit else None,
                    enriched=enriched.get(number) if enrich is not None else None,
                )
            )

    def _enriched(self, observed: Sequence[Observed], sink: HttpSink) -> dict[int, bool]:
        """Whether each connection's alert came out of the enrich endpoint with the canary's fingerprint."""
        wanted = alerts_wanted(observed)
        result = dict.fromkeys(range(len(wanted)), False)
        deadline = time.monotonic() + self.timeout
        docs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            docs.extend(sink.poll())
            for number, expected in enumerate(wanted):
                for doc in docs:
                    fields = doc.get("output_fields")
                    if (
                        alert_matches(expected, doc)
                        and isinstance(fields, Mapping)
                        and CANARY_FINGERPRINT in str(fields.get("tor.fingerprint", ""))
                    ):
                        result[number] = True
            if all(result.values()):
                break
            time.sleep(0.05)
        return result

    def silent(self, name: str, connection: str, involved: set[tuple[str, int]]) -> None:
        """Record a case that must raise no alert: none of our rules may name one of its ``(address, port)``."""
        self.falco.sync(self.timeout)  # every event before this marker has been judged
        hits = []
        for alert in _tor_alerts(self.falco.alerts()):
            fields = alert.output_fields
            ends = {
                (fields.get("fd.cip", ""), fields.get("fd.cport", "")),
                (fields.get("fd.sip", ""), fields.get("fd.sport", "")),
            }
            if {(str(a), str(p)) for a, p in involved} & ends:
                hits.append(alert)
        self.cases.append(
            LiveCase(name, connection, expect_alert=False, alerted=bool(hits), rule=hits[0].rule if hits else None)
        )

    def refused(self, probe: Refused) -> None:
        self.silent(f"refused (errno {probe.errno})", probe.connection, {(str(probe.server), probe.server_port)})

    def bystanders(self, pair: Sequence[Observed]) -> None:
        for obs in pair:
            self.silent(
                obs.case, obs.connection, {(str(obs.client), obs.client_port), (str(obs.server), obs.server_port)}
            )


def _with_canary(snapshot: Snapshot, canary: IPAddress) -> Snapshot:
    return replace(snapshot, relays=(*snapshot.relays, canary_relay(canary)), source=f"{snapshot.source} + canary")


def run_live(
    snapshot: Snapshot,
    *,
    canary: IPAddress = DEFAULT_CANARY,
    plugin: bool = False,
    timeout: float = 30.0,
    workdir: Path | None = None,
    host: HostNetwork | None = None,
) -> LiveReport:
    """Run the live self-test (see the module's docstring).

    Args:
        snapshot: the relay data the rules are built from (the canary is added).
        canary: the canary address (a documentation address that overlaps nothing of this machine).
        plugin: also run the plugin phase (builds the plugin; needs its headers).
        timeout: seconds to wait for each alert, and for Falco to start.
        workdir: where Falco's config, rules, log and alerts go (a temporary folder by default; kept when given).
        host: this machine's network (default: read now).

    Raises:
        SanityError: the canary is not safe here.
        EngineUnavailable: not root, no Falco installed.
        TorSetsError: the lab, Falco or the enrich endpoint failed.
    """
    from tor_sets.engines.paths import falco_installed

    if os.geteuid() != 0:
        raise EngineUnavailable(
            "the live self-test needs root: it starts Falco's eBPF probe and creates network namespaces"
        )
    installed = falco_installed()
    version = installed.version if installed else "?"
    plan = plan_lab(canary, host=host if host is not None else HostNetwork.read())
    with tempfile.TemporaryDirectory(prefix="tor-sets-live-") as tmp:
        base = workdir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        snap = _with_canary(snapshot, plan.canary)
        phases = [_lists_phase(snap, plan, base / "lists", timeout)]
        if plugin:
            phases.append(_plugin_phase(snapshot, snap, plan, base / "plugin", timeout))
    return LiveReport(plan.canary, version, tuple(phases))


def _lists_phase(snap: Snapshot, plan: LabPlan, folder: Path, timeout: float) -> LivePhase:
    folder.mkdir(parents=True, exist_ok=True)
    rules = folder / "tor_rules.yaml"
    rules.write_text(build(snap, BuildOptions()).text, encoding="utf-8")
    with (
        _enrich_endpoint(snap, plan) as (url, sink),
        LiveFalco(folder, [rules], http_output=f"{url}/falco", ready_timeout=timeout) as falco,
    ):
        phase = _Phase(falco, plan, timeout)
        with Lab(plan) as lab:
            observed = lab.run(("outbound", "inbound"))
            phase.positives(observed, sink)
            phase.refused(lab.refused())
            phase.bystanders(lab.bystander())
        return LivePhase("lists", falco.started_s, tuple(phase.cases), _warnings(falco))


@contextlib.contextmanager
def _enrich_endpoint(snap: Snapshot, plan: LabPlan) -> Iterator[tuple[str, HttpSink]]:
    """``tor-sets enrich --listen`` in this process, indexing ``snap``: its URL, and a sink reading it."""
    enricher = Enricher(RelayIndex.from_snapshot(snap), canaries=(plan.canary,), output_fields=True)
    server = EnrichServer(enricher, ServerSettings()).start()
    try:
        sink = HttpSink(server.url)
        sink.mark()
        yield server.url, sink
    finally:
        server.stop()


def _plugin_phase(snapshot: Snapshot, snap: Snapshot, plan: LabPlan, folder: Path, timeout: float) -> LivePhase:
    from tor_sets.plugin.native import compile_plugin
    from tor_sets.plugin.rules import plugin_rules_text
    from tor_sets.plugin.table import encode, make_table

    folder.mkdir(parents=True, exist_ok=True)
    library = compile_plugin(folder / "lib")
    options = BuildOptions()
    without = encode(make_table(relay_sets(snapshot, options), snapshot.relays, published=snapshot.relays_published))
    with_canary = encode(make_table(relay_sets(snap, options), snap.relays, published=snap.relays_published))
    table = folder / "tor.table"
    atomic_write(table, without)
    rules = folder / "tor_plugin_rules.yaml"
    rules.write_text(plugin_rules_text(build(snap, options)), encoding="utf-8")
    plugin = Plugin("torsets", library, {"table": str(table), "check_interval_s": PLUGIN_CHECK_S})
    notes: list[str] = []
    with (
        _enrich_endpoint(snap, plan) as (url, sink),
        LiveFalco(folder, [rules], plugins=[plugin], http_output=f"{url}/falco", ready_timeout=timeout) as falco,
    ):
        phase = _Phase(falco, plan, timeout)
        with Lab(plan) as lab:
            (before,) = lab.run(("outbound",))
            phase.silent("outbound before-swap", before.connection, {(str(before.server), before.server_port)})
            loads_before = _reloads(falco)
            atomic_write(table, with_canary)
            swapped = time.monotonic()
            # the plugin looks for a replaced table when it extracts: keep connections coming until it reports it
            while _reloads(falco) <= loads_before:
                if time.monotonic() - swapped > timeout:
                    raise TorSetsError(f"the plugin did not report loading the replaced table within {timeout:g} s")
                lab.bystander()
                time.sleep(PLUGIN_CHECK_S)
            waited = time.monotonic() - swapped
            notes.append(f"table replaced while Falco ran; the plugin reported the reload after {waited:.2f} s")
            observed = lab.run(("outbound", "inbound"))
            phase.positives(observed, sink)
            phase.bystanders(lab.bystander())
        return LivePhase("plugin", falco.started_s, tuple(phase.cases), (*notes, *_warnings(falco)))


def _reloads(falco: LiveFalco) -> int:
    """How many times the plugin has said in Falco's log that it loaded a table."""
    return sum(1 for line in falco.log_lines() if "torsets" in line and "loaded" in line and ".table" in line)


def _warnings(falco: LiveFalco) -> tuple[str, ...]:
    return tuple(line.strip()[:200] for line in falco.log_lines() if "warning" in line.lower())[:5]


def format_live(report: LiveReport) -> str:
    """The report as text: one table per phase."""
    lines = []
    for phase in report.phases:
        rows = [("case", "connection", "expected", "seen", "after", "enriched", "rule")]
        for c in phase.cases:
            rows.append(
                (
                    c.name,
                    c.connection,
                    "alert" if c.expect_alert else "silence",
                    ("alert" if c.alerted else "silence") + ("" if c.ok else "  FAIL"),
                    "-" if c.latency_s is None else f"{c.latency_s * 1000:.1f} ms",
                    "-" if c.enriched is None else ("yes" if c.enriched else "NO"),
                    c.rule or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append(f"{phase.name}: Falco {report.falco_version} capturing after {phase.falco_start_s:.2f} s")
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines += [f"  note: {note}" for note in phase.notes]
    verdict = "PASS" if report.ok else "FAIL"
    lines.append(f"{verdict}: live self-test with canary {report.canary} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return "\n".join(lines) + "\n"
