"""The self-test without a live Falco: what a Falco running given rules would have written, computed by a real
engine.

Exports :func:`simulate_alerts` and :data:`SIMULATED_FIELDS`. The observed connections are written into a capture
(:mod:`tor_sets.scap`), replayed through a real engine against the rules files, and each match becomes a Falco JSON
alert line (:func:`tor_sets.falco.alerts.alert_json`), which :meth:`~tor_sets.runtime.selftest.sinks.Sink.deliver`
hands to the sink.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tor_sets.engines.base import Engine
from tor_sets.falco.alerts import alert_json, output_fields
from tor_sets.falco.load import load_rules
from tor_sets.runtime.selftest.lab import Observed
from tor_sets.verify.capture import MIN_GAP_NS, Connection, Process, write_capture

__all__ = ["SIMULATED_FIELDS", "simulate_alerts"]

#: fields a simulation asks the engine for (printable on both sysdig builds); other output fields are null
SIMULATED_FIELDS: tuple[str, ...] = (
    "evt.type",
    "evt.rawres",
    "fd.name",
    "fd.lport",
    "fd.rport",
    "fd.sip",
    "fd.cip",
    "fd.sport",
    "fd.cport",
    "proc.name",
    "proc.pid",
    "proc.cmdline",
    "user.name",
)
_NUMERIC_FIELDS = frozenset({"evt.rawres", "fd.lport", "fd.rport", "fd.sport", "fd.cport", "proc.pid"})


def _connections(observed: Sequence[Observed]) -> list[Connection]:
    """Each observed connection as the kernel saw it: the client's connect, then the server's accept4."""
    events: list[Connection] = []
    for o in observed:
        events.append(
            Connection(
                "connect", o.client, o.client_port, o.server, o.server_port, o.connect_ts_ns, o.pid, o.connect_result
            )
        )
        events.append(Connection("accept4", o.client, o.client_port, o.server, o.server_port, o.accept_ts_ns, o.pid))
    events.sort(key=lambda c: c.ts_ns)
    spaced: list[Connection] = []
    for conn in events:  # the capture writer wants increasing timestamps at least MIN_GAP_NS apart
        if spaced and conn.ts_ns < spaced[-1].ts_ns + 10 * MIN_GAP_NS:
            conn = Connection(
                conn.kind,
                conn.client,
                conn.client_port,
                conn.server,
                conn.server_port,
                spaced[-1].ts_ns + 10 * MIN_GAP_NS,
                conn.pid,
                conn.result,
            )
        spaced.append(conn)
    return spaced


def _this_process(pid: int) -> Process:
    """The capture's view of process ``pid``: its ``comm`` and the arguments it was started with."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", errors="replace").split("\0")
    except OSError:
        comm, argv = "tor-sets", [sys.executable, *sys.argv]
    args = tuple(a for a in argv[1:] if a)
    return Process(pid=pid, comm=comm[:15] or "tor-sets", exe=sys.executable, args=args)


def simulate_alerts(
    observed: Sequence[Observed], rules: Sequence[Path], engine: Engine, *, hostname: str | None = None
) -> list[bytes]:
    """What a Falco running ``rules`` would have written for ``observed``, computed by a real engine.

    The connections become a capture (connect and accept4 exit of each, by this process), which ``engine``
    replays against the rules files (:meth:`~tor_sets.engines.Engine.replay`); every match becomes a JSON alert
    line shaped like Falco's (:func:`tor_sets.falco.alerts.alert_json`; output fields without a value are null).

    Raises:
        CaptureError: the capture cannot be written.
        EngineError, RuleError: the engine failed or rejected the rules.
    """
    hostname = hostname or socket.gethostname()
    loaded = {rule.name: rule for rule in load_rules(*rules).rules.values()}
    fields = tuple(dict.fromkeys([*SIMULATED_FIELDS, *(f for r in loaded.values() for f in output_fields(r.output))]))
    connections = _connections(observed)
    processes = [_this_process(pid) for pid in sorted({c.pid for c in connections})]
    alerts: list[tuple[int, bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tor-sets-selftest-") as tmp:
        capture = Path(tmp) / "selftest.scap"
        write_capture(capture, connections, processes=processes, hostname=hostname)
        replay = engine.replay(capture, rules, fields=fields)
    for name, matches in replay.hits.items():
        rule = loaded[name]
        for match in matches:
            doc = alert_json(
                rule=rule.name,
                priority=rule.priority,
                output=rule.output,
                values=match.fields,
                ts_ns=match.ts_ns,
                hostname=hostname,
                source=rule.source,
                tags=rule.tags,
                numeric=_NUMERIC_FIELDS,
            )
            alerts.append((match.ts_ns, json.dumps(doc, separators=(",", ":")).encode() + b"\n"))
    alerts.sort(key=lambda item: item[0])
    return [line for _, line in alerts]
