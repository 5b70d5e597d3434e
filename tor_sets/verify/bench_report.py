"""The benchmark's report: a table for people, the JSON document, docs/benchmarks.md and its plots.

Exports :func:`format_bench` (the table ``tor-sets bench`` prints), :func:`bench_json` (the document ``--json``
prints and benchmarks.json holds: the :class:`~tor_sets.verify.bench.BenchReport` with a schema version),
:func:`read_bench_json` (that document back into a report, so a report can be written again without measuring) and
:func:`write_report` (benchmarks.md, benchmarks.json and a PNG plot per engine, and for real Falco, into a folder).
Pure formatting of measured values; the measuring is :mod:`tor_sets.verify.bench`'s job.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tor_sets import __version__
from tor_sets.engines import PREFERENCE
from tor_sets.errors import TorSetsError
from tor_sets.verify.bench import BenchReport, EncodingCost, FalcoCost

__all__ = ["SCHEMA", "bench_json", "format_bench", "plot_points", "read_bench_json", "write_report"]

#: the version of the JSON document's layout
SCHEMA = 1


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _engines(result: BenchReport) -> list[str]:
    """The engines measured, in the order :data:`tor_sets.engines.PREFERENCE` ranks them (not the order a JSON
    document happens to keep)."""
    rank = {name: i for i, name in enumerate(PREFERENCE)}
    return sorted(result.baseline, key=lambda name: (rank.get(name, len(rank)), name))


def _cost(m: EncodingCost) -> float:
    """The cost used to decide: instructions when counted (deterministic), else CPU time."""
    return m.relative_instructions if m.relative_instructions is not None else m.relative


def format_bench(result: BenchReport) -> str:
    """A table for people."""
    lines = []
    for engine in _engines(result):
        base = result.baseline[engine]
        lines.append(f"{engine} {result.engine_versions[engine]}: replay with no Tor rule {base:.3f} s (median)")
        header = (
            f"  {'encoding':<16} {'bytes':>8} {'items':>6} {'nets':>5} {'load s':>7} {'RSS MB':>7} "
            f"{'CPU s':>6} {'x no-rule':>9} {'instr/ev':>9} {'x no-rule':>9} {'FP addr':>7}"
        )
        lines.append(header)
        for m in result.measurements:
            if m.engine != engine:
                continue
            lines.append(
                f"  {m.encoding:<16} {m.rules_bytes:>8} {m.list_items:>6} {m.networks:>5} {m.load_s:>7.3f} "
                f"{m.max_rss_kb / 1024:>7.1f} {m.replay_s:>6.3f} {m.relative:>9.2f} "
                f"{_fmt(m.instructions_per_event, '.0f'):>9} {_fmt(m.relative_instructions, '.3f'):>9} "
                f"{m.false_positive_addresses:>7}"
            )
    lines.append(f"build (bundled snapshot): {result.build_s:.3f} s, peak {result.build_peak_mb:.0f} MB")
    return "\n".join(lines) + "\n"


def bench_json(result: BenchReport) -> dict[str, object]:
    doc = asdict(result)
    doc["schema"] = SCHEMA
    doc["tor_sets_version"] = __version__
    return doc


def read_bench_json(doc: object) -> BenchReport:
    """The report a :func:`bench_json` document holds (``bench_json(read_bench_json(doc)) == doc``).

    Raises:
        TorSetsError: not such a document, or of another schema.
    """
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise TorSetsError(f"not a benchmarks document of schema {SCHEMA}")
    fields = {k: v for k, v in doc.items() if k not in ("schema", "tor_sets_version")}
    try:
        return BenchReport(
            **{
                **fields,
                "measurements": tuple(EncodingCost(**m) for m in fields["measurements"]),
                "falco": tuple(FalcoCost(**f) for f in fields.get("falco", ())),
                "falco_events": tuple(fields.get("falco_events", (0, 0))),
                "captures": {k: tuple(v) for k, v in fields.get("captures", {}).items()},
            }
        )
    except (KeyError, TypeError) as exc:
        raise TorSetsError(f"not a benchmarks document of schema {SCHEMA}: {exc}") from None


def plot_points(result: BenchReport, engine: str) -> tuple[str, list[tuple[str, float, float]]]:
    """What the plot of ``engine`` shows: the y-axis label and ``(encoding, rules kB, cost)`` per encoding; the cost
    is the instruction ratio when every encoding was counted, else the CPU-time ratio, and the label says which."""
    points = [m for m in result.measurements if m.engine == engine]
    counted = bool(points) and all(m.relative_instructions is not None for m in points)
    label = (
        "instructions per event / no Tor rule (callgrind)" if counted else "replay CPU time / replay with no Tor rule"
    )
    return label, [
        (m.encoding, m.rules_bytes / 1000, m.relative_instructions if counted else m.relative)  # type: ignore[misc]
        for m in points
    ]


def _plot(result: BenchReport, path: Path, engine: str) -> None:
    """Rules bytes against per-event cost (relative to no Tor rule), one point per encoding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, points = plot_points(result, engine)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    markers = "osD^v<>pXh*"
    colours = [f"C{index}" for index in range(10)]  # matplotlib's default colour cycle
    for index, (encoding, kilobytes, cost) in enumerate(points):
        ax.scatter(
            kilobytes,
            cost,
            s=46,
            marker=markers[index % len(markers)],
            color=colours[index % len(colours)],
            label=encoding,
        )
    # a legend beside the plot, not labels at the points: the encodings crowd together where the sizes are close
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlabel("rules size (kB)")
    ax.set_ylabel(label)
    ax.set_title(f"Tor rules on {engine} {result.engine_versions[engine]}: size against per-event cost")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _plot_falco(result: BenchReport, path: Path) -> None:
    """Real Falco: per-event instructions and start-up instructions of each variant, relative to no Tor rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = result.falco
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=110)
    names = [v.name for v in variants]
    left.barh(names, [v.relative_instructions for v in variants], color="tab:blue")
    left.axvline(1.0, color="grey", linewidth=0.8)
    left.set_xlabel("instructions per event / no Tor rule")
    left.invert_yaxis()
    for index, v in enumerate(variants):
        left.annotate(
            f"{v.relative_instructions:.3f}",
            (v.relative_instructions, index),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=8,
        )
    right.barh(names, [v.startup_instructions / 1e6 for v in variants], color="tab:orange")
    right.set_xlabel("start-up and rules loading (million instructions)")
    right.invert_yaxis()
    right.set_yticks(range(len(names)), [""] * len(names))
    fig.suptitle(f"Tor rules in real Falco {result.falco_version} (callgrind instruction counts)")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_report(result: BenchReport, out_dir: Path, *, default: str) -> list[Path]:
    """docs/benchmarks.md, benchmarks.json and a PNG plot per engine (and for real Falco) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    json_path = out_dir / "benchmarks.json"
    json_path.write_text(json.dumps(bench_json(result), indent=2, sort_keys=True) + "\n")
    written.append(json_path)
    for engine in _engines(result):
        png = out_dir / f"benchmarks-{engine}.png"
        _plot(result, png, engine)
        written.append(png)
    if result.falco:
        png = out_dir / "benchmarks-falco.png"
        _plot_falco(result, png)
        written.append(png)
    md = out_dir / "benchmarks.md"
    md.write_text(_markdown(result, default))
    written.append(md)
    return written


def _install_lines(result: BenchReport) -> list[str]:
    """How long ``tor-sets engines install falco`` took on this machine: each step when it last did work, and the
    last install (warm: everything cached)."""
    steps = result.falco_install.get("steps")
    last = result.falco_install.get("last")
    if not isinstance(steps, dict) or not steps:
        return []
    lines = [
        f"### Installing Falco {result.falco_version}",
        "",
        "`tor-sets engines install falco` (part of `make engines`) on this machine, each step the last time it",
        "did work (an empty cache: every step runs), and the last install:",
        "",
        "| step | seconds | when |",
        "|---|---:|---|",
    ]
    for name, step in steps.items():
        lines.append(f"| {name} | {step['seconds']:,.1f} | {step['at']} |")
    total = sum(step["seconds"] for step in steps.values())
    lines.append(f"| **cold install, all steps** | **{total:,.1f}** | |")
    if isinstance(last, dict):
        did = ", ".join(last["did"]) or "nothing: everything was cached"
        lines.append(f"| last install ({did}) | {last['seconds']:,.1f} | {last['at']} |")
    return [*lines, ""]


def _markdown(result: BenchReport, default: str) -> str:
    by = {(m.engine, m.encoding): m for m in result.measurements}
    modern = "sysdig-modern" if "sysdig-modern" in result.baseline else next(iter(_engines(result)), "")
    lit = by.get((modern, "literal-2022"))
    best = by.get((modern, "addresses-only"))
    chosen = by.get((modern, default))
    lines = [
        "# Benchmarks: what the Tor rules cost an engine",
        "",
        "Generated by `tor-sets bench`; do not edit by hand. Reproduce with:",
        "",
        f"    {result.command}",
        "",
        "After a change to this report's layout, write it again from benchmarks.json without measuring:",
        "",
        "    tor-sets bench --from-json docs/benchmarks.json --output docs",
        "",
        f"Machine: {result.machine.get('cpu')}, {result.machine.get('cores')} cores, {result.machine.get('memory')}, "
        f"Linux {result.machine.get('kernel')}, Python {result.machine.get('python')}.",
        "Engines: "
        + ", ".join(
            ([f"Falco {result.falco_version}"] if result.falco else [])
            + [f"{k} {result.engine_versions[k]}" for k in _engines(result)]
        )
        + ".",
        f"Capture: {result.connections} connects and accepts ({result.events} events), "
        f"{result.tor_connections} of them to or from Tor relays, IPv4 and IPv6; median of "
        f"{result.repetitions} interleaved runs."
        + (
            f" Instructions counted on a capture of {result.counted_events} events of the same mix."
            if result.counted_events
            else ""
        ),
        "",
    ]
    if lit and best and chosen:
        lines += [
            "## Headline (modern engine)",
            "",
            f"- Default encoding `{default}`: **{chosen.rules_bytes:,} bytes** = "
            f"{chosen.rules_bytes / lit.rules_bytes:.2f}x the 2022 tool's {lit.rules_bytes:,} bytes.",
            f"- Per-event cost: {_cost(chosen):.3f}x the replay with no Tor rule; "
            f"{_cost(chosen) / _cost(best):.3f}x the all-addresses-hashed encoding "
            f"({_cost(best):.3f}x no rule); the 2022 tool's files: {_cost(lit):.3f}x no rule "
            + (
                "(instructions counted by callgrind)."
                if chosen.relative_instructions is not None
                else "(CPU time, median of pairs)."
            ),
            f"- Build of the bundled snapshot (parse, classify, compact, render): {result.build_s:.3f} s, "
            f"peak {result.build_peak_mb:.0f} MB.",
            "",
        ]
    if lit and best:
        lines += [
            "## Choosing the default",
            "",
            "Targets on the modern engine: rules bytes <= 0.6x the 2022 tool's files, per-event cost <= 1.05x the",
            "encoding that puts every address in hash-set address lists (the fastest complete encoding), and no",
            "loss of evaluation speed against the 2022 tool's files (which do less: they skip accept4). Cost here",
            "is the engine's instructions per replayed event (valgrind's callgrind: the same count to within 0.1 %",
            "on every run, whatever else the machine does) when counted, else the CPU-time ratio.",
            "",
            "| encoding | bytes / 2022 tool | cost / all-addresses | cost / 2022 tool | meets all three |",
            "|---|---:|---:|---:|---|",
        ]
        for m in result.measurements:
            if m.engine != modern or m.encoding == "literal-2022":
                continue
            size = m.rules_bytes / lit.rules_bytes
            cost = _cost(m) / _cost(best)
            against_2022 = _cost(m) / _cost(lit)
            ok = size <= 0.6 and cost <= 1.05 and against_2022 <= 1.0 and m.false_positive_addresses == 0
            lines.append(f"| `{m.encoding}` | {size:.3f} | {cost:.3f} | {against_2022:.3f} | {'yes' if ok else 'no'} |")
        lines += [
            "",
            "Why: current libsinsp answers `fd.sip in (...)` with one hash lookup whatever the list's length, but",
            "scans `fd.snet in (...)` entry by entry for every event, so each network kept costs every connect and",
            "accept a mask comparison. Exact collapsing removes few entries (relay addresses are mostly isolated;",
            "the widest exact blocks are a handful of exit farms), so keeping only the networks that replace many",
            "addresses gets almost all the size benefit while the scan stays a few entries long. Networks of fewer",
            f"addresses than the threshold are written as addresses; the default, `{default}`, is the smallest file",
            "that meets all three targets in the figures above. Everything-as-networks is the smallest exact",
            "file and by far the slowest; lossy aggregation is smaller still but alerts on addresses that are no",
            "relay, so it stays opt-in.",
            "",
            "Noise: this is a shared 2-vCPU virtual machine. CPU times (the min-max columns below) spread by tens",
            "of per cent between runs of one encoding, which is why the decision rests on instruction counts.",
            "",
        ]
    if result.falco:
        by_name = {v.name: v for v in result.falco}
        lists, plugin = by_name.get("lists"), by_name.get("plugin")
        lines += [
            f"## Real Falco {result.falco_version}",
            "",
            "Falco evaluates only the rules indexed under an event's type, and its start-up (loading and compiling",
            "thousands of list items) dwarfs a short replay. So each variant replays two captures of connects and",
            f"accepts to random public addresses, none of them Tor ({result.falco_events[0]:,} and "
            f"{result.falco_events[1]:,} events), and the per-event cost is the difference between the two, over",
            "the extra events: callgrind's instruction count (valgrind, the decisive figure: the same on every run)",
            "and the CPU time of the same replays (median; a second view, noisy on a shared machine). Start-up is the",
            "count on the short capture minus its events' share.",
            "",
        ]
        if lists and plugin:
            lines += [
                f"- The list rules cost {lists.relative_instructions:.3f}x the per-event instructions of a Falco with"
                f" no Tor rule; the plugin rules {plugin.relative_instructions:.3f}x.",
                f"- Loading the list rules takes {lists.startup_instructions / 1e6:,.0f} million instructions at"
                f" start-up (and at each rules reload); the plugin rules {plugin.startup_instructions / 1e6:,.0f}"
                " million, with their table read by the plugin, which reloads it without a rules reload.",
                "",
            ]
        lines += [
            "| variant | what | rules bytes | instructions / event | x no Tor rule | start-up instructions | "
            "CPU µs / event | x no Tor rule (CPU) | peak RSS MB | alerts |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for v in result.falco:
            lines.append(
                f"| `{v.name}` | {v.description} | {v.rules_bytes:,} | {v.instructions_per_event:,.0f} | "
                f"{v.relative_instructions:.3f} | {v.startup_instructions:,} | {v.cpu_per_event_us:.2f} | "
                f"{v.relative_cpu:.2f} | {v.max_rss_kb / 1024:.1f} | {v.alerts} |"
            )
        lines += ["", "![real Falco](benchmarks-falco.png)", ""]
        lines += _install_lines(result)
    for engine in _engines(result):
        base = result.baseline[engine]
        size, events = result.captures.get(engine, (result.connections, result.events))
        lines += [
            f"## {engine} {result.engine_versions[engine]}",
            "",
            f"Capture: {size:,} connections ({events:,} events); replay with no Tor rule: {base:.3f} s CPU."
            + (" A smaller capture than the others: this engine is far slower." if size < result.connections else ""),
            "",
            "| encoding | what | rules bytes | list items | networks | load s | peak RSS MB | replay CPU s | "
            "x no rule | x no rule, min-max | instructions / event | x no rule (instructions) | "
            "false-positive addresses |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in result.measurements:
            if m.engine == engine:
                lines.append(
                    f"| `{m.encoding}` | {m.description} | {m.rules_bytes:,} | {m.list_items:,} | {m.networks:,} | "
                    f"{m.load_s:.3f} | {m.max_rss_kb / 1024:.1f} | {m.replay_s:.3f} | {m.relative:.2f} | "
                    f"{min(m.ratios, default=m.relative):.2f}-{max(m.ratios, default=m.relative):.2f} | "
                    f"{_fmt(m.instructions_per_event, ',.0f')} | {_fmt(m.relative_instructions, '.3f')} | "
                    f"{m.false_positive_addresses:,} |"
                )
        lines += ["", f"![size against cost](benchmarks-{engine}.png)", ""]
    return "\n".join(lines) + "\n"
