"""``tor-sets bench``: rule size and evaluation cost of each encoding (and of the plugin) on the real engines."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tor_sets.cli import types
from tor_sets.cli.verify import skip_reason
from tor_sets.compact import DEFAULT_EXPAND_BELOW
from tor_sets.engines import ENGINES, Engine, FalcoEngine, FalcoLocal, get_engine
from tor_sets.errors import EngineUnavailable, TorSetsError, UsageError
from tor_sets.files import require_folder, write_file
from tor_sets.onionoo import bundled_snapshot, read_snapshot
from tor_sets.verify import (
    bench_json,
    encodings,
    falco_cost,
    format_bench,
    read_bench_json,
    run_bench,
    write_report,
)

log = logging.getLogger("tor_sets")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure rule size and evaluation cost of each encoding on the real engines",
        description="Write the same coverage (entry + exit, IPv4 + IPv6, inbound + outbound) in several encodings "
        "and measure bytes, list items, load time, peak engine memory and the cost of replaying a generated "
        "capture relative to the same replay with no Tor rule. On real Falco (--engine falco-local), also the "
        "plugin rules with the tor-sets plugin loaded, against the list-based rules.",
    )
    parser.add_argument(
        "--input", "-i", type=types.input_file, metavar="FILE", help="relay snapshot (default: the bundled one)"
    )
    parser.add_argument(
        "--engine",
        action="append",
        type=types.engine_name(),
        default=[],
        metavar="NAME",
        help="engines to measure (default: sysdig-modern, and sysdig-legacy when present)",
    )
    parser.add_argument(
        "--connections",
        type=_at_least(100),
        metavar="N",
        default=200_000,
        help="connects + accepts in the capture for current engines (default: 200000)",
    )
    parser.add_argument(
        "--legacy-connections",
        type=_at_least(100),
        metavar="N",
        default=10_000,
        help="capture size for the 2022 engine, whose OR chains are far slower (default: 10000)",
    )
    parser.add_argument(
        "--repetitions", type=types.count, default=3, metavar="N", help="runs per encoding; the median is kept"
    )
    parser.add_argument(
        "--count-connections",
        type=types.non_negative_count,
        metavar="N",
        default=20_000,
        help="capture size for the instruction counts on the modern engine (callgrind; needs "
        "`tor-sets engines install bench`); 0 to skip (default: 20000)",
    )
    parser.add_argument(
        "--falco-connections",
        type=_at_least(100),
        metavar="N",
        default=20_000,
        help="real Falco: the short capture's connects and accepts (the long one has twice as many; default: 20000)",
    )
    parser.add_argument(
        "--thresholds",
        type=_ints,
        default=[2, 8, 16, 32, 64],
        metavar="LIST",
        help="expansion thresholds of the hybrid encodings (default: 2,8,16,32,64)",
    )
    parser.add_argument(
        "--lossy-budgets", type=_ints, default=[16], metavar="LIST", help="budgets of the lossy encodings (default: 16)"
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="DIR",
        help="write benchmarks.md, benchmarks.json and plots into DIR (e.g. docs)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    parser.add_argument(
        "--from-json",
        type=types.input_file,
        metavar="FILE",
        help="measure nothing: write the report of an earlier run's benchmarks.json again (with --output), e.g. "
        "after a change to the report's layout",
    )
    parser.set_defaults(func=run)


def _ints(text: str) -> list[int]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or not all(v.isascii() and v.isdigit() and int(v) >= 2 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, each 2 or more, got {text!r}")
    return [int(v) for v in values]


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = types.count(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {text!r}")
        return value

    return parse


def _engines(names: list[str]) -> list[Engine]:
    if names:
        engines = [get_engine(n) for n in names]
        for engine in engines:
            engine.check()
        return engines
    engines = [get_engine("sysdig-modern")]
    engines[0].check()
    for name in ("sysdig-legacy", "falco-local"):
        extra = get_engine(name)
        try:
            extra.check()
            engines.append(extra)
        except EngineUnavailable as exc:
            log.warning("not measuring %s", skip_reason(name, exc))
    return engines


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        return _rewrite(args)
    if any(issubclass(ENGINES[n], FalcoEngine) and not issubclass(ENGINES[n], FalcoLocal) for n in args.engine):
        raise UsageError("bench measures real Falco as falco-local (callgrind runs it directly), not in a container")
    if args.output:
        require_folder(args.output)  # before the long measurements, not after
    snapshot = read_snapshot(args.input) if args.input else bundled_snapshot()
    chosen = encodings(args.thresholds, args.lossy_budgets)
    engines = _engines(args.engine)
    falcos = [e for e in engines if isinstance(e, FalcoLocal)]
    engines = [e for e in engines if not isinstance(e, FalcoEngine)]
    command = "tor-sets bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else ""
    with tempfile.TemporaryDirectory(prefix="tor-sets-bench-") as tmp:
        result = run_bench(
            snapshot,
            engines,
            Path(tmp),
            connections=args.connections,
            repetitions=args.repetitions,
            chosen=chosen,
            connections_for=lambda e: args.legacy_connections if e.name == "sysdig-legacy" else args.connections,
            count_connections=args.count_connections,
            command=command or "tor-sets bench " + " ".join(f"--engine {e.name}" for e in [*engines, *falcos]),
            progress=lambda msg: log.info("%s", msg),
        )
        for falco in falcos:
            from tor_sets.plugin.native import compile_plugin

            library = compile_plugin(Path(tmp) / "plugin")
            events, variants = falco_cost(
                snapshot,
                falco,
                Path(tmp),
                connections=(args.falco_connections, 2 * args.falco_connections),
                repetitions=args.repetitions,
                plugin_library=library,
                progress=lambda msg: log.info("%s", msg),
            )
            from tor_sets.provision.falco import install_times

            version = falco.version()
            result = replace(
                result,
                falco=variants,
                falco_version=version,
                falco_events=events,
                falco_install=install_times(version) or {},
            )
    if args.output:
        for path in write_report(result, args.output, default=f"hybrid-{DEFAULT_EXPAND_BELOW}"):
            log.info("wrote %s", path)
    if args.json:
        json.dump(bench_json(result), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_bench(result))
    return 0


def _rewrite(args: argparse.Namespace) -> int:
    """``--from-json FILE``: the report of an earlier run, written again; no engine runs."""
    if not args.output:
        raise UsageError("--from-json writes the report again: give the folder with --output")
    try:
        document = json.loads(args.from_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read {args.from_json} as JSON: {exc}") from None
    require_folder(args.output)
    with tempfile.TemporaryDirectory(prefix="tor-sets-bench-") as tmp:
        # the whole report first, aside: a document whose values are not what a run writes fails here, before
        # a file of DIR is touched
        try:
            result = read_bench_json(document)
            written = write_report(result, Path(tmp), default=f"hybrid-{DEFAULT_EXPAND_BELOW}")
            table = format_bench(result)
        except TorSetsError as exc:
            raise UsageError(f"{args.from_json}: {exc}") from None
        except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise UsageError(f"{args.from_json}: not a report tor-sets bench wrote: {exc}") from None
        args.output.mkdir(parents=True, exist_ok=True)
        for path in written:
            write_file(args.output / path.name, path.read_bytes(), stream=False)
            log.info("wrote %s", args.output / path.name)
    sys.stdout.write(table)
    return 0
