"""The canary self-test against a Falco that runs already: make the connections, wait for their alerts, report.

Exports :func:`run_selftest`, :class:`Report` and :func:`format_report`.

1. :func:`~tor_sets.runtime.selftest.plan.plan_lab` checks that the canary is safe to use here.
2. The sink is marked: only alerts arriving later count.
3. A :class:`~tor_sets.runtime.selftest.lab.Lab` makes one real connection per case and is removed.
4. :func:`~tor_sets.runtime.selftest.sinks.wait_for_alerts` waits for an alert of each.

Where no Falco runs, :func:`~tor_sets.runtime.selftest.simulate.simulate_alerts` computes the alerts with a real
engine and hands them to the sink (the ``on_connected`` callback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tor_sets.errors import SanityError
from tor_sets.relays import IPAddress
from tor_sets.runtime.selftest.lab import CASES, Case, Lab, Observed
from tor_sets.runtime.selftest.plan import HostNetwork, plan_lab
from tor_sets.runtime.selftest.sinks import CaseResult, Sink, wait_for_alerts

__all__ = ["SCHEMA", "Report", "format_report", "run_selftest"]

log = logging.getLogger(__name__)

#: version of the ``selftest --json`` document
SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one self-test.

    Attributes:
        canary: the canary.
        client: the lab client's address.
        sink: where alerts were read.
        timeout_s: how long alerts were waited for.
        setup_s: seconds to create the lab.
        wait_s: seconds spent waiting for alerts.
        cases: one result per case.
        simulated: the alerts came from a replay through ``engine``, not from a live Falco.
        engine: the engine of a simulation.
    """

    canary: IPAddress
    client: IPAddress
    sink: str
    timeout_s: float
    setup_s: float
    wait_s: float
    cases: tuple[CaseResult, ...]
    simulated: bool = False
    engine: str | None = None

    @property
    def ok(self) -> bool:
        """Every case's alert arrived."""
        return bool(self.cases) and all(c.ok for c in self.cases)

    def to_json(self) -> dict[str, object]:
        """The report as one JSON document (``schema`` 1)."""
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "canary": str(self.canary),
            "client": str(self.client),
            "sink": self.sink,
            "timeout_s": self.timeout_s,
            "setup_s": round(self.setup_s, 3),
            "wait_s": round(self.wait_s, 3),
            "simulated": self.simulated,
            "engine": self.engine,
            "cases": [c.to_json() for c in self.cases],
        }


def format_report(report: Report) -> str:
    """The report as a text table."""
    rows = [("case", "connection", "peer seen", "connect", "alert", "after", "rule")]
    for c in report.cases:
        o = c.observed
        rows.append(
            (
                o.case,
                o.connection,
                str(o.peer_seen),
                f"{o.connect_s * 1000:.2f} ms",
                "PASS" if c.ok else "FAIL",
                "-" if c.alert_after_s is None else f"{c.alert_after_s:.3f} s",
                c.rule or f"(none within {report.timeout_s:g} s)",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    source = f"simulated with {report.engine}" if report.simulated else "live"
    lines.append(
        f"{'PASS' if report.ok else 'FAIL'}: canary {report.canary}, sink {report.sink} ({source}), "
        f"lab set up in {report.setup_s:.3f} s, waited {report.wait_s:.3f} s"
    )
    return "\n".join(lines) + "\n"


def run_selftest(
    canary: IPAddress | str,
    sink: Sink,
    *,
    cases: Sequence[Case] = CASES,
    timeout: float = 30.0,
    port: int = 0,
    host: HostNetwork | None = None,
    on_connected: Callable[[tuple[Observed, ...]], None] | None = None,
    simulated_by: str | None = None,
) -> Report:
    """Run the self-test: plan, mark the sink, make the connections in a lab, remove the lab, wait for alerts.

    Args:
        canary: the canary (must be in the rules Falco runs: ``tor-sets build --canary``).
        sink: where Falco's alerts arrive.
        cases: which connections to make.
        timeout: seconds to wait for the alerts.
        port: server port in the lab (0: any free one).
        host: the machine's network (default: read now).
        on_connected: called with the connections once the lab is gone and before waiting (a simulation hands
            its alerts to the sink here).
        simulated_by: the engine name of a simulation, for the report.

    Raises:
        SanityError: the canary is not safe here.
        TorSetsError: the lab or a connection failed, or the sink cannot be read.
    """
    if not cases:
        raise SanityError("no case to test")
    plan = plan_lab(canary, host=host if host is not None else HostNetwork.read())
    sink.mark()
    with Lab(plan) as lab:
        observed = lab.run(cases, port)
        setup_s = lab.setup_s
    for o in observed:
        log.info(
            "selftest: %s %s:%d -> %s:%d, peer seen %s",
            o.case,
            o.client,
            o.client_port,
            o.server,
            o.server_port,
            o.peer_seen,
        )
    if on_connected is not None:
        on_connected(observed)
    log.info("selftest: waiting up to %g s for the alerts at %s", timeout, sink.describe())
    start = time.monotonic()
    results = wait_for_alerts(sink, observed, timeout=timeout)
    return Report(
        canary=plan.canary,
        client=plan.client,
        sink=sink.describe(),
        timeout_s=timeout,
        setup_s=setup_s,
        wait_s=time.monotonic() - start,
        cases=results,
        simulated=simulated_by is not None,
        engine=simulated_by,
    )
