"""The canary self-test: make real connections to and from a canary "relay" and wait for Falco to report them.

A canary is a documentation address (RFC 5737 / RFC 3849) that ``tor-sets build --canary ADDR`` adds to the
entry and exit lists. The self-test then proves the whole chain on a live host — rules loaded, Falco watching,
alerts delivered — without touching any real network. The modules, in the order a run uses them:

* :mod:`.plan`: :func:`plan_lab` checks the canary against the machine's network (:class:`HostNetwork`) and names
  the lab (:class:`LabPlan`).
* :mod:`.lab`: :class:`Lab`, two network namespaces joined by a veth pair, makes the real connections
  (:class:`Observed`) and removes itself on every way out.
* :mod:`.sinks`: where alerts arrive (:class:`FileSink`, :class:`HttpSink`, :func:`open_sink`), which alert is the
  one of a connection, and :func:`wait_for_alerts`.
* :mod:`.run`: :func:`run_selftest` against a Falco that runs already, its :class:`Report` and
  :func:`format_report`.
* :mod:`.simulate`: :func:`simulate_alerts`, a real engine instead of a live Falco.
* :mod:`.live`: :func:`run_live`, the live self-test that starts Falco itself (:class:`LiveReport`,
  :func:`format_live`).
"""

from __future__ import annotations

from tor_sets.runtime.selftest.lab import CASES, Case, Lab, Observed
from tor_sets.runtime.selftest.live import DEFAULT_CANARY, LiveReport, format_live, run_live
from tor_sets.runtime.selftest.plan import HostNetwork, LabPlan, plan_lab
from tor_sets.runtime.selftest.run import Report, format_report, run_selftest
from tor_sets.runtime.selftest.simulate import simulate_alerts
from tor_sets.runtime.selftest.sinks import CaseResult, FileSink, HttpSink, Sink, open_sink, wait_for_alerts

__all__ = [
    "CASES",
    "DEFAULT_CANARY",
    "Case",
    "CaseResult",
    "FileSink",
    "HostNetwork",
    "HttpSink",
    "Lab",
    "LabPlan",
    "LiveReport",
    "Observed",
    "Report",
    "Sink",
    "format_live",
    "format_report",
    "open_sink",
    "plan_lab",
    "run_live",
    "run_selftest",
    "simulate_alerts",
    "wait_for_alerts",
]
