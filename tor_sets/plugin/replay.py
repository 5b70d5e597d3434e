"""Replaying captures through sid's sysdig with the plugin loaded, and the plugin-versus-lists benchmark.

Exports :class:`PluginSpec` (library, table, check interval), :func:`init_config` (the JSON the plugin takes),
:func:`replay` (one capture, one condition, the plugin loaded with ``-H``; returns an engine
:class:`~tor_sets.engines.base.Run`), :class:`Measurement`, :func:`benchmark_capture` and :func:`benchmark`.

:func:`replay` is :meth:`tor_sets.engines.sysdig.SysdigModern.filter` plus ``-H``: the same chroot, scratch
folder under ``ROOT/tmp``, Lua chisel (no limit on the condition's length), output parsing and error mapping,
built from the public pieces of :mod:`tor_sets.engines.base`. Only the modern engine is supported: the 2022
sysdig predates the plugin API this plugin needs (3.6.0).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tor_sets.build import Built
from tor_sets.engines.base import (
    CHISEL_NAME,
    Run,
    chisel_source,
    parse_chisel_output,
    place,
    raise_for_run,
    run_process,
    temporary_workspace,
    write_spec,
)
from tor_sets.engines.sysdig import SYSDIG_INSIDE, SysdigModern
from tor_sets.errors import EngineError, RuleError
from tor_sets.falco.load import load_rules
from tor_sets.plugin.native import LIBRARY_NAME
from tor_sets.plugin.rules import plugin_rules_text
from tor_sets.plugin.table import encode, make_table
from tor_sets.relays import IPAddress, Snapshot
from tor_sets.scap import Connection, Interface, Process, write_capture

__all__ = [
    "BENCH_FIELDS",
    "Measurement",
    "PluginSpec",
    "benchmark",
    "benchmark_capture",
    "init_config",
    "replay",
    "rules_condition",
]

#: fields the benchmark prints for each match: the same for every condition
BENCH_FIELDS: tuple[str, ...] = ("evt.type", "fd.sip")


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """The plugin as one replay loads it.

    Attributes:
        library: the compiled ``libtorsets.so``.
        table: the table file.
        check_interval_s: the plugin's reload check interval.
    """

    library: Path
    table: Path
    check_interval_s: float = 5.0


def init_config(table: str, check_interval_s: float = 5.0) -> str:
    """The plugin's ``init_config`` as compact JSON.

    >>> init_config("/etc/falco/tor.table", 0.5)
    '{"table":"/etc/falco/tor.table","check_interval_s":0.5}'
    """
    return json.dumps({"table": table, "check_interval_s": check_interval_s}, separators=(",", ":"))


def replay(
    capture: Path,
    condition: str,
    fields: Sequence[str] = BENCH_FIELDS,
    *,
    plugin: PluginSpec,
    engine: SysdigModern | None = None,
    timeout: float = 300,
) -> Run:
    """Replay ``capture`` through sid's sysdig with the plugin loaded and return the events matching ``condition``.

    Args:
        capture: a capture file.
        condition: a filter condition (macros and lists expanded; any length); may use ``tor.*`` fields.
        fields: fields to print per match (``tor.*`` fields included).
        plugin: the library and table to load.
        engine: the modern engine to use (default: the cached sid root).
        timeout: seconds before sysdig is killed.

    Raises:
        RuleError: sysdig rejects the condition or a field.
        EngineError: the engine is missing (``EngineUnavailable``), too slow (``EngineTimeout``) or failed,
            e.g. because the plugin refused its table (the plugin's message is in the error).
    """
    engine = engine or SysdigModern()
    engine.check()
    for path in (capture, plugin.library, plugin.table):
        if not path.is_file():
            raise EngineError(f"{engine.name}: {path} is not a file", engine=engine.name)
    fields = tuple(fields)
    with temporary_workspace(engine.root / "tmp", lambda host: "/tmp/" + host.name) as ws:
        place(capture, ws.host)
        shutil.copyfile(plugin.library, ws.host / LIBRARY_NAME)
        shutil.copyfile(plugin.table, ws.host / "tor.table")
        (ws.host / CHISEL_NAME).write_bytes(chisel_source())
        write_spec(ws.host / "spec", "filter", fields, condition)
        config = init_config(ws.path("tor.table"), plugin.check_interval_s)
        argv = [
            shutil.which("chroot") or "chroot",
            str(engine.root),
            SYSDIG_INSIDE,
            "-H",
            f"{ws.path(LIBRARY_NAME)}:{config}",
            "-r",
            ws.path("capture.scap"),
            "-c",
            ws.path(CHISEL_NAME),
            ws.path("spec"),
        ]
        done = run_process(argv, engine=engine.name, timeout=timeout)
    raise_for_run(engine.name, done, what="sysdig with the plugin", prefer="plugin")
    matches, _ = parse_chisel_output(done.stdout, fields, engine=engine.name)
    return Run(matches, done.wall_s, done.max_rss_kb, done.stderr_tail)


def rules_condition(text: str) -> str:
    """One filter equal to "any rule of this rules text fires": each rule's expanded condition, OR-ed.

    Raises:
        RuleError: the text does not load, or a condition cannot be fully expanded.
    """
    ruleset = load_rules(text)
    parts = []
    for rule in ruleset.rules.values():
        if not rule.complete:
            raise RuleError(f"rule {rule.name!r}: cannot expand {', '.join(rule.unresolved)}")
        parts.append(f"({rule.expanded})")
    if not parts:
        raise RuleError("the rules text has no rule")
    return " or ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """Wall times of one way of matching over the benchmark capture.

    Attributes:
        name: ``baseline`` (a filter that matches nothing, no plugin: the cost of replaying alone), ``lists``
            (the list-based rules) or ``plugin`` (the plugin rules, plugin loaded).
        walls_s: each run's wall time.
        matches: events matched (the same for ``lists`` and ``plugin``).
        max_rss_kb: peak RSS of the last run.
        condition_chars: length of the filter.
        cpus_s: each run's CPU time (user + system) of the engine's process tree, which other load on the
            machine disturbs much less than wall time.
    """

    name: str
    walls_s: tuple[float, ...]
    matches: int
    max_rss_kb: int
    condition_chars: int
    cpus_s: tuple[float, ...] = ()

    @property
    def median_s(self) -> float:
        return statistics.median(self.walls_s)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpus_s) if self.cpus_s else float("nan")


_HOST = ipaddress.IPv4Address("10.0.0.5")
_BENCH_START_NS = 1_700_000_000_000_000_000
_BENCH_GAP_NS = 100_000  # 200,000 connects span 20 s of event time, under the engines' 30 s idle sweep


def benchmark_capture(dest: Path, built: Built, connections: int = 200_000, *, seed: int = 7) -> int:
    """Write the benchmark capture: ``connections`` outbound connects, one in ten to an entry relay.

    The other nine go to random public addresses that are no relay. Returns the number of events written.
    """
    rng = random.Random(seed)
    entries = sorted((a for a in built.sets.entry if a.version == 4), key=int)
    relays = built.sets.relay

    def public() -> IPAddress:
        while True:
            address = ipaddress.IPv4Address(rng.randrange(0x01000000, 0xDF000000))
            if address.is_global and address not in relays:
                return address

    conns = (
        Connection(
            "connect",
            _HOST,
            20000 + i % 40000,
            rng.choice(entries) if i % 10 == 0 else public(),
            443,
            _BENCH_START_NS + i * _BENCH_GAP_NS,
            100,
            0,
        )
        for i in range(connections)
    )
    return write_capture(
        dest, conns, processes=[Process(100, "curl", "/usr/bin/curl")], interfaces=[Interface("eth0", _HOST, 24)]
    )


def benchmark(
    workdir: Path,
    built: Built,
    snapshot: Snapshot,
    library: Path,
    *,
    connections: int = 200_000,
    repeat: int = 3,
    engine: SysdigModern | None = None,
) -> tuple[int, list[Measurement]]:
    """Time the list-based rules against the plugin rules on the same capture, ``repeat`` rounds of one run each.

    Args:
        workdir: where the capture and table are written.
        built: the build whose list-based rules and table are compared.
        snapshot: its snapshot (fingerprints for the table).
        library: the compiled plugin.
        connections: connects in the capture (six events each).
        repeat: runs per way of matching; the median is reported.
        engine: the modern engine (default: the cached sid root).

    Returns:
        The number of events in the capture and one :class:`Measurement` each for ``baseline``, ``lists``
        and ``plugin``.

    Raises:
        EngineError: a run failed; RuleError: a condition did not load.
    """
    engine = engine or SysdigModern()
    workdir.mkdir(parents=True, exist_ok=True)
    capture = workdir / "bench.scap"
    events = benchmark_capture(capture, built, connections)
    table = workdir / "tor.table"
    table.write_bytes(encode(make_table(built.sets, snapshot.relays, published=snapshot.relays_published)))
    spec = PluginSpec(library, table)
    conditions = {
        "baseline": "evt.num = 0",
        "lists": rules_condition(built.text),
        "plugin": rules_condition(plugin_rules_text(built)),
    }
    # rounds of one run per variant, so that a change in the machine's load hits every variant alike
    runs: dict[str, list[tuple[Run, float]]] = {name: [] for name in conditions}
    for _ in range(repeat):
        for name, condition in conditions.items():
            before = os.times()
            if name == "plugin":
                run = replay(capture, condition, BENCH_FIELDS, plugin=spec, engine=engine, timeout=900)
            else:
                run = engine.filter(capture, condition, BENCH_FIELDS, timeout=900)
            after = os.times()
            cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            runs[name].append((run, cpu))
    results = [
        Measurement(
            name,
            tuple(r.wall_s for r, _ in runs[name]),
            len(runs[name][-1][0].matches),
            runs[name][-1][0].max_rss_kb,
            len(condition),
            tuple(cpu for _, cpu in runs[name]),
        )
        for name, condition in conditions.items()
    ]
    return events, results
