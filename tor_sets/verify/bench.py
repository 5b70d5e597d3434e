"""What a Tor list costs an engine: rule size, load time, memory and per-event cost, per encoding; the one benchmark.

Exports :class:`Encoding`, :func:`encodings`, :func:`bench_capture`, :func:`rules_condition`, :func:`run_bench`
(every encoding on the sysdig engines → :class:`BenchReport` of :class:`EncodingCost`) and :func:`falco_cost` (real
Falco: no Tor rule, the list rules, and the plugin rules with the plugin loaded → :class:`FalcoCost`). The report
(table, JSON, docs/benchmarks.md and plots) is :mod:`tor_sets.verify.bench_report`'s job.

Every encoding covers the same relays (entry + exit, IPv4 + IPv6, inbound + outbound rules); they differ only in
how addresses are written: the 2022 tool's literal files, everything as networks, the hybrid split at several
expansion thresholds, and opt-in lossy aggregation (whose added addresses are reported as false positives).

How cost is measured on the sysdig engines: a sysdig engine replays one generated capture (connects and accepts, a
share of them to and from Tor relays) with a filter equal to the rules' conditions OR-ed together
(:func:`rules_condition`). The same capture is replayed with a filter that touches no address (``evt.num = 0``):
the replay with no Tor rule. The cost of a replay is the engine process's CPU time (user + system), steadier than
wall time on a shared machine. Every encoding run is paired with a no-rule run just before it and the median of the
pairs' ratios is reported, which cancels slow drifts of the machine; encodings are interleaved round-robin. Load
time is the engine compiling the filter without replaying anything. When valgrind is in the engine's root,
callgrind's instruction counts give the same comparison deterministically.

On real Falco (:func:`falco_cost`), the rules files are loaded as they are (Falco indexes rules by event type), and
the per-event cost is the difference between replays of two captures of different length.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tor_sets.build import BuildOptions, build
from tor_sets.compact import DEFAULT_EXPAND_BELOW
from tor_sets.engines import Engine, FalcoLocal, Plugin, SysdigModern
from tor_sets.engines.process import run_process
from tor_sets.errors import EngineUnavailable, RuleError
from tor_sets.falco.generate import RulesOptions
from tor_sets.falco.legacy2022 import render_2022
from tor_sets.falco.load import load_rules
from tor_sets.onionoo import address_problem
from tor_sets.relays import IPAddress, RelaySets, Snapshot, classify
from tor_sets.verify.capture import Connection, write_capture
from tor_sets.verify.scenarios import HOST_V4, HOST_V6, INTERFACES, PROCESSES, START_NS

__all__ = [
    "BASELINE_CONDITION",
    "BenchReport",
    "Encoding",
    "EncodingCost",
    "FalcoCost",
    "bench_capture",
    "encodings",
    "falco_cost",
    "rules_condition",
    "run_bench",
]

BASELINE_CONDITION = "evt.num = 0"


@dataclass(frozen=True, slots=True)
class Encoding:
    """One way of writing the same coverage."""

    name: str
    description: str
    options: RulesOptions | None  # None: the 2022 tool's literal files

    def texts(self, snapshot: Snapshot, sets: RelaySets, *, legacy: bool = False) -> list[str]:
        """The rules text(s); ``legacy`` writes them in the legacy profile (no IPv6 networks) for the 2022 engine."""
        if self.options is None:
            return [text for _, text in sorted(render_2022(sets).items())]
        options = replace(self.options, falco_version="legacy") if legacy else self.options
        return [build(snapshot, BuildOptions(rules=options)).text]


def encodings(thresholds: Sequence[int] = (2, 8, 16, 32, 64), lossy_budgets: Sequence[int] = (16,)) -> list[Encoding]:
    """The encodings compared, in the order reported."""
    base = RulesOptions()
    out = [
        Encoding("literal-2022", "the 2022 tool: quoted addresses, one file per role and family", None),
        Encoding(
            "networks-only",
            "every address as a network (/32, /128) in fd.snet/fd.cnet lists",
            replace(base, networks_only=True),
        ),
    ]
    for threshold in thresholds:
        label = "hybrid (every true network kept)" if threshold == 2 else f"hybrid, networks below {threshold} expanded"
        out.append(Encoding(f"hybrid-{threshold}", label, replace(base, expand_below=threshold)))
    out.append(
        Encoding(
            "addresses-only", "every address in hash-set address lists, no network", replace(base, expand_below=1 << 32)
        )
    )
    for budget in lossy_budgets:
        out.append(
            Encoding(
                f"lossy-{budget}",
                f"lossy aggregation, <= {budget} added addresses per list",
                replace(base, lossy_budget=budget),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class EncodingCost:
    """One encoding on one engine."""

    encoding: str
    description: str
    engine: str
    rules_bytes: int
    list_items: int
    networks: int
    false_positive_addresses: int
    load_s: float
    max_rss_kb: int
    replay_s: float  # CPU seconds of the engine for the replay (median)
    relative: float  # replay CPU time / replay CPU time with no Tor rule
    matches: int
    runs: tuple[float, ...] = ()
    ratios: tuple[float, ...] = ()  # each run's cost over its paired no-rule run
    #: deterministic cost (callgrind, modern engine only): instructions per replayed event beyond loading the rules
    instructions_per_event: float | None = None
    #: instructions to load the rules (start-up of the engine excluded)
    load_instructions: int | None = None
    #: instructions per event / the same with no Tor rule
    relative_instructions: float | None = None


@dataclass(frozen=True, slots=True)
class FalcoCost:
    """One way of loading the Tor rules into real Falco, measured on the same two captures.

    Attributes:
        name, description: which (``no Tor rule``, the list rules, the plugin rules ...).
        rules_bytes: the rules files' size (the plugin's table not included).
        instructions_per_event: callgrind's count on the long capture minus the short one, per extra event.
        relative_instructions: that over the same with no Tor rule.
        startup_instructions: the count on the short capture minus its events' share: start-up and rules loading.
        cpu_per_event_us: the same difference in CPU time (median of runs), per event, in microseconds.
        relative_cpu: that over the same with no Tor rule.
        max_rss_kb: Falco's peak memory on the long capture.
        alerts: alerts on the long capture (the captures hold no Tor connection: 0 expected).
    """

    name: str
    description: str
    rules_bytes: int
    instructions_per_event: float
    relative_instructions: float
    startup_instructions: int
    cpu_per_event_us: float
    relative_cpu: float
    max_rss_kb: int
    alerts: int


@dataclass(frozen=True, slots=True)
class BenchReport:
    measurements: tuple[EncodingCost, ...]
    baseline: dict[str, float]  # engine → median replay seconds with no Tor rule
    events: int
    connections: int
    tor_connections: int
    engine_versions: dict[str, str]
    build_s: float
    build_peak_mb: float
    machine: dict[str, str]
    command: str
    repetitions: int
    counted_events: int = 0  # events of the capture replayed under callgrind (0: not counted)
    extra: dict[str, object] = field(default_factory=dict)
    #: real Falco: the Tor rules (lists, plugin) against no Tor rule, and the two capture sizes (events)
    falco: tuple[FalcoCost, ...] = ()
    falco_version: str = ""
    falco_events: tuple[int, int] = (0, 0)
    #: per engine, the connections and events of the capture it replayed (the legacy engine gets a smaller one)
    captures: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: how long installing that Falco took here: install-times.json of ``tor-sets engines install falco``
    falco_install: dict[str, object] = field(default_factory=dict)


def bench_capture(
    sets: RelaySets, path: Path, *, connections: int = 200_000, tor_share: float = 0.05, seed: int = 7
) -> tuple[int, int]:
    """Write a capture of ``connections`` connects and accepts (IPv4 and IPv6) with ``tor_share`` to/from Tor.

    Returns:
        (events written, Tor connections).
    """
    rng = random.Random(seed)
    tor = sets.entry | sets.exit | sets.relay
    entry = sorted(sets.entry, key=lambda a: (a.version, int(a)))
    exit_ = sorted(sets.exit, key=lambda a: (a.version, int(a)))
    public: list[IPAddress] = []
    while len(public) < 4000:
        candidate: IPAddress = (
            ipaddress.IPv4Address(rng.getrandbits(32))
            if len(public) % 3
            else ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(125))
        )
        if address_problem(candidate) is None and candidate not in tor:
            public.append(candidate)
    hits = 0

    def generate() -> list[Connection]:
        nonlocal hits
        out = []
        for i in range(connections):
            ts = START_NS + (i + 1) * 1_000
            is_tor = rng.random() < tor_share
            hits += is_tor
            if i % 4:  # three quarters outbound
                peer = rng.choice(entry) if is_tor else rng.choice(public)
                host = HOST_V4 if peer.version == 4 else HOST_V6
                out.append(
                    Connection(
                        "connect", host, 40000 + i % 20000, peer, 443, ts, PROCESSES[i % 2].pid, rng.choice((0, -115))
                    )
                )
            else:
                peer = rng.choice(exit_) if is_tor else rng.choice(public)
                host = HOST_V4 if peer.version == 4 else HOST_V6
                out.append(
                    Connection(
                        "accept4" if i % 8 else "accept", peer, 30000 + i % 30000, host, 443, ts, PROCESSES[2].pid
                    )
                )
        return out

    events = write_capture(path, generate(), processes=PROCESSES, interfaces=INTERFACES, hostname="tor-sets-bench")
    return events, hits


def rules_condition(*texts: str) -> str:
    """One filter equal to "some rule of these rules texts fires": each enabled rule's expanded condition, OR-ed.

    A sysdig engine evaluates it as Falco evaluates the rules on each event (every rule whose event types match;
    the OR short-circuits the same way), which is what the benchmark replays.

    Raises:
        RuleError: the texts do not load, a condition cannot be fully expanded, or there is no enabled rule.
    """
    ruleset = load_rules(*texts)
    parts = []
    for rule in ruleset.rules.values():
        if not rule.enabled:
            continue
        if not rule.complete:
            raise RuleError(f"rule {rule.name!r}: cannot expand {', '.join(rule.unresolved)}")
        parts.append(f"({rule.expanded})")
    if not parts:
        raise RuleError("the rules text has no enabled rule")
    return " or ".join(parts)


def _fp(texts: Sequence[str], sets: RelaySets) -> int:
    """Addresses the lists cover that are no entry or exit relay (lossy encodings only add such)."""
    rules = load_rules(*texts)
    covered = 0
    truth = sets.entry | sets.exit
    for items in rules.lists.values():
        for item in items:
            text = item.strip("'\"")
            if "/" in text:
                net = ipaddress.ip_network(text)
                covered += sum(1 for a in net if a not in truth) if net.num_addresses <= 65536 else net.num_addresses
    return covered


def _build_cost(python: str = sys.executable) -> tuple[float, float]:
    """Seconds (median of 3 new processes) and peak MB of ``build()`` on the bundled snapshot (read, parse,
    classify, render)."""
    code = (
        "import time, resource\n"
        "t = time.perf_counter()\n"
        "from tor_sets.onionoo import bundled_snapshot\n"
        "from tor_sets.build import build\n"
        "t0 = time.perf_counter()\n"
        "text = build(bundled_snapshot()).text\n"
        "t1 = time.perf_counter()\n"
        "print(t1 - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    runs = []
    for _ in range(3):
        # started through the engines' small reaper: a child forked from this (large) process would be charged
        # this process's memory as its peak
        done = run_process([python, "-c", code], engine="build", timeout=300)
        out = done.stdout.split()
        runs.append((float(out[0]), float(out[1])))
    return statistics.median(t for t, _ in runs), max(mb for _, mb in runs)


def run_bench(
    snapshot: Snapshot,
    engines: Sequence[Engine],
    workdir: Path,
    *,
    connections: int = 200_000,
    repetitions: int = 3,
    chosen: Sequence[Encoding] | None = None,
    connections_for: Callable[[Engine], int] | None = None,
    count_connections: int = 0,
    command: str = "",
    progress: Callable[[str], None] = lambda _msg: None,
) -> BenchReport:
    """Measure every encoding on every engine.

    Args:
        connections_for: capture size per engine (the 2022 engine expands ``in`` into OR chains and is far slower,
            so it gets a smaller capture).
        count_connections: when > 0 and the engine can count instructions (the modern engine with valgrind),
            also replay a capture of this many connections under callgrind: the deterministic cost.
    """
    sets = classify(snapshot)
    chosen = list(chosen or encodings())
    measurements: list[EncodingCost] = []
    baselines: dict[str, float] = {}
    versions: dict[str, str] = {}
    events_total = 0
    tor_total = 0
    counted_events = 0
    captures: dict[str, tuple[int, int]] = {}
    for engine in engines:
        legacy = engine.name == "sysdig-legacy"
        texts = {e.name: e.texts(snapshot, sets, legacy=legacy) for e in chosen}
        conditions = {name: rules_condition(*t) for name, t in texts.items()}
        versions[engine.name] = engine.version()
        size = connections_for(engine) if connections_for else connections
        capture = workdir / f"bench-{size}.scap"
        if not capture.exists():
            progress(f"writing a capture of {size} connections")
            events, hits = bench_capture(sets, capture, connections=size)
            (workdir / f"bench-{size}.json").write_text(json.dumps({"events": events, "tor": hits}))
        meta = json.loads((workdir / f"bench-{size}.json").read_text())
        captures[engine.name] = (size, meta["events"])
        if engine is engines[0]:
            events_total, tor_total = meta["events"], meta["tor"]
        # each encoding run is paired with a replay with no Tor rule just before it; the ratio of the pair cancels
        # the slow drifts of a shared machine (CPU frequency, neighbours), the median of the ratios is reported
        runs: dict[str, list[float]] = {n: [] for n in conditions}
        ratios: dict[str, list[float]] = {n: [] for n in conditions}
        base_runs: list[float] = []
        rss: dict[str, int] = {}
        matches: dict[str, int] = {}

        def cost(condition: str, engine: Engine = engine, capture: Path = capture) -> tuple[float, int, int]:
            run = engine.filter(capture, condition, ("evt.type",), timeout=3600)
            return (run.cpu_s if run.cpu_s > 0 else run.wall_s), run.max_rss_kb, len(run.matches)

        for rep in range(repetitions):
            for name, condition in conditions.items():
                progress(f"{engine.name}: {name} (run {rep + 1}/{repetitions})")
                base_cost, _, _ = cost(BASELINE_CONDITION)
                enc_cost, enc_rss, enc_matches = cost(condition)
                base_runs.append(base_cost)
                runs[name].append(enc_cost)
                ratios[name].append(enc_cost / base_cost)
                rss[name] = max(rss.get(name, 0), enc_rss)
                matches[name] = enc_matches
        base = statistics.median(base_runs)
        baselines[engine.name] = base
        counts = _instruction_counts(engine, sets, workdir, conditions, count_connections, progress)
        if counts:
            counted_events = int(counts.pop("__events__")[0])
        base_load = _load_time(engine, BASELINE_CONDITION)
        for enc in chosen:
            text_bytes = sum(len(t.encode()) for t in texts[enc.name])
            rules = load_rules(*texts[enc.name])
            items = sum(len(v) for v in rules.lists.values())
            nets = sum(1 for v in rules.lists.values() for i in v if "/" in i)
            median = statistics.median(runs[enc.name])
            measurements.append(
                EncodingCost(
                    encoding=enc.name,
                    description=enc.description,
                    engine=engine.name,
                    rules_bytes=text_bytes,
                    list_items=items,
                    networks=nets,
                    false_positive_addresses=_fp(texts[enc.name], sets)
                    if enc.options and enc.options.lossy_budget
                    else 0,
                    load_s=max(0.0, _load_time(engine, conditions[enc.name]) - base_load),
                    max_rss_kb=rss[enc.name],
                    replay_s=median,
                    relative=statistics.median(ratios[enc.name]),
                    matches=matches[enc.name],
                    runs=tuple(runs[enc.name]),
                    ratios=tuple(ratios[enc.name]),
                    instructions_per_event=counts[enc.name][0] if counts else None,
                    load_instructions=int(counts[enc.name][1]) if counts else None,
                    relative_instructions=counts[enc.name][0] / counts["baseline"][0] if counts else None,
                )
            )
    build_s, build_mb = _build_cost()
    return BenchReport(
        measurements=tuple(measurements),
        baseline=baselines,
        events=events_total,
        connections=connections,
        tor_connections=tor_total,
        engine_versions=versions,
        build_s=build_s,
        build_peak_mb=build_mb,
        machine=_machine(),
        command=command,
        repetitions=repetitions,
        counted_events=counted_events,
        captures=captures,
    )


#: a rule Falco indexes under ``open`` only: connects and accepts reach no rule, as with no Tor rule loaded
_NO_TOR_RULE = """\
- rule: tor-sets bench baseline
  desc: matches nothing the bench replays
  condition: evt.type = open and fd.name = /nonexistent/tor-sets-bench
  output: never %fd.name
  priority: DEBUG
"""


def falco_cost(
    snapshot: Snapshot,
    engine: FalcoLocal,
    workdir: Path,
    *,
    connections: Sequence[int] = (10_000, 20_000),
    repetitions: int = 3,
    plugin_library: Path | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> tuple[tuple[int, int], tuple[FalcoCost, ...]]:
    """Per-event cost of the Tor rules in real Falco, as Falco evaluates them: rules indexed by event type.

    Falco's start-up (loading thousands of list items) dwarfs a short replay, so the per-event cost is the
    difference between replays of two captures of different length with the same rules (no Tor connection in
    them, so that the cost is the rules' evaluation, not their outputs): callgrind's instruction count, the decisive
    figure, and CPU time as a second view.

    Args:
        snapshot: the relay data.
        engine: the local Falco (callgrind runs it directly).
        workdir: where captures and rules go.
        connections: the two capture sizes (connects and accepts).
        repetitions: runs per variant and size for the CPU times.
        plugin_library: the compiled plugin (None: the plugin variant is left out).

    Returns:
        The two captures' event counts, and every variant.
    """
    sets = classify(snapshot)
    short, long = sorted(connections)[:2]
    captures = []
    for size in (short, long):
        path = workdir / f"falco-{size}.scap"
        events, _ = bench_capture(sets, path, connections=size, tor_share=0.0, seed=13)
        captures.append((path, events))
    folder = workdir / "falco-rules"
    folder.mkdir(parents=True, exist_ok=True)

    def files(name: str, texts: Sequence[str]) -> list[Path]:
        paths = []
        for number, text in enumerate(texts):
            path = folder / f"{name}-{number}.yaml"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        return paths

    default = build(snapshot)
    variants: list[tuple[str, str, list[Path], list[Plugin]]] = [
        ("no Tor rule", "a rule on open only: connects and accepts reach no rule", files("none", [_NO_TOR_RULE]), []),
        (
            "lists",
            f"the default list rules (hybrid-{DEFAULT_EXPAND_BELOW}: networks of {DEFAULT_EXPAND_BELOW} or more "
            "addresses in network lists, every other address in hash-set lists)",
            files("lists", [default.text]),
            [],
        ),
        (
            "addresses-only",
            "every address in hash-set lists",
            files("addresses", [build(snapshot, BuildOptions(rules=RulesOptions(expand_below=1 << 30))).text]),
            [],
        ),
        (
            "literal-2022",
            "the 2022 tool's four files",
            files("literal", [t for _, t in sorted(render_2022(sets).items())]),
            [],
        ),
    ]
    if plugin_library is not None:
        from tor_sets.plugin.rules import engine_plugin, plugin_rules_text
        from tor_sets.plugin.table import encode, make_table

        table = folder / "tor.table"
        table.write_bytes(encode(make_table(sets, snapshot.relays, published=snapshot.relays_published)))
        plugin = engine_plugin(plugin_library, table)
        variants.append(
            ("plugin", "the plugin rules, plugin loaded", files("plugin", [plugin_rules_text(default)]), [plugin])
        )
    measured = []
    for name, description, paths, plugins in variants:
        counts = []
        for capture, _ in captures:
            progress(f"falco: counting instructions of {name} on {capture.name}")
            counts.append(engine.count_instructions(capture, paths, plugins=plugins))
        cpu: list[list[float]] = [[], []]
        rss = 0
        alerts = 0
        for _ in range(repetitions):
            for index, (capture, _) in enumerate(captures):
                replay = engine.replay(capture, paths, fields=("evt.type",), plugins=plugins, timeout=3600)
                cpu[index].append(replay.cpu_s)
                if index == 1:
                    rss = max(rss, replay.max_rss_kb)
                    alerts = sum(len(m) for m in replay.hits.values())
        extra_events = captures[1][1] - captures[0][1]
        per_event = (counts[1] - counts[0]) / extra_events
        measured.append(
            (
                name,
                description,
                sum(p.stat().st_size for p in paths),
                per_event,
                int(counts[0] - per_event * captures[0][1]),
                (statistics.median(cpu[1]) - statistics.median(cpu[0])) / extra_events * 1e6,
                rss,
                alerts,
            )
        )
    base = measured[0]
    return (captures[0][1], captures[1][1]), tuple(
        FalcoCost(
            name=m[0],
            description=m[1],
            rules_bytes=m[2],
            instructions_per_event=m[3],
            relative_instructions=m[3] / base[3],
            startup_instructions=m[4],
            cpu_per_event_us=m[5],
            relative_cpu=m[5] / base[5] if base[5] > 0 else float("nan"),
            max_rss_kb=m[6],
            alerts=m[7],
        )
        for m in measured
    )


def _instruction_counts(
    engine: Engine,
    sets: RelaySets,
    workdir: Path,
    conditions: dict[str, str],
    connections: int,
    progress: Callable[[str], None],
) -> dict[str, tuple[float, int]]:
    """``{name: (instructions per event, load instructions)}`` plus ``baseline``, or {} when not countable."""
    if connections <= 0 or not isinstance(engine, SysdigModern):  # it alone counts a condition's instructions
        return {}
    capture = workdir / f"count-{connections}.scap"
    events, _ = bench_capture(sets, capture, connections=connections, seed=11)
    out: dict[str, tuple[float, int]] = {"__events__": (events, 0)}
    try:
        startup = engine.count_instructions(None, BASELINE_CONDITION)
    except EngineUnavailable as exc:
        progress(f"not counting instructions: {exc}")
        return {}
    for name, condition in {"baseline": BASELINE_CONDITION, **conditions}.items():
        progress(f"{engine.name}: counting instructions of {name}")
        loaded = engine.count_instructions(None, condition)
        replayed = engine.count_instructions(capture, condition)
        out[name] = ((replayed - loaded) / events, loaded - startup)
    return out


def _load_time(engine: Engine, condition: str, repetitions: int = 3) -> float:
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        engine.compile(condition, timeout=600)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
