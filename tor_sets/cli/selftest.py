"""``tor-sets selftest``: prove on a live host that the canary's connections raise Falco alerts.

::

    tor-sets build --canary 198.51.100.77 -o /etc/falco/rules.d/tor_rules.yaml      # once, for Falco
    tor-sets selftest --canary 198.51.100.77 --sink /var/log/falco/events.json       # Falco's file_output
    tor-sets selftest --canary 198.51.100.77 --sink http://127.0.0.1:2801            # tor-sets enrich --listen
    tor-sets selftest --canary 198.51.100.77 --sink out.json --simulate tor_rules.yaml   # no Falco: a real engine
    tor-sets selftest --live [--plugin]      # starts real Falco (modern eBPF) itself, checks alerts, silence, enrich

Needs root (network namespaces). The report goes to stdout (a table, or JSON with ``--json``); exit 0 when
every alert arrived, 1 when one did not within ``--timeout``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from pathlib import Path

from tor_sets.cli import types
from tor_sets.errors import UsageError
from tor_sets.runtime.selftest import (
    CASES,
    DEFAULT_CANARY,
    Case,
    Observed,
    Report,
    format_live,
    format_report,
    open_sink,
    run_live,
    run_selftest,
    simulate_alerts,
)

__all__ = ["add_parser", "run"]

log = logging.getLogger("tor_sets")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _cases(text: str) -> tuple[Case, ...]:
    chosen = tuple(c.strip().lower() for c in text.split(",") if c.strip())
    if not chosen or any(c not in CASES for c in chosen):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(CASES)}")
    return tuple(c for c in CASES if c in chosen)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("expected seconds between 0 and 3600")
    return value


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError("expected a port number (0: any free port)")
    return int(text)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``selftest``."""
    parser = sub.add_parser(
        "selftest",
        help="connect to and from a canary in network namespaces and wait for the Falco alerts",
        description="Create two network namespaces joined by a veth pair (no default route, documentation "
        "addresses only), make a real outbound connection to the canary and an inbound one from it, and wait for "
        "the matching alerts in Falco's JSON output file or at a 'tor-sets enrich --listen' endpoint. Needs root.",
        epilog="exit codes: 0 every alert arrived (and, with --live, every silent case stayed silent), 1 a check "
        "failed, 2 usage, 3 runtime error, 5 the canary is unsafe here",
    )
    parser.add_argument(
        "--canary",
        type=_address,
        metavar="ADDRESS",
        help="the canary the rules were built with (required unless --live, which uses 198.51.100.77 by default)",
    )
    parser.add_argument(
        "--sink",
        metavar="FILE|URL",
        help="Falco's JSON output file, or http://127.0.0.1:PORT of 'tor-sets enrich --listen' (not with --live)",
    )
    live = parser.add_argument_group("with a Falco that tor-sets starts")
    live.add_argument(
        "--live",
        action="store_true",
        help="start the installed Falco with its modern eBPF probe, with rules built with the canary, and check "
        "that the canary's connections alert, a refused connect and another peer stay silent, and the alerts "
        "come out of an enrich endpoint enriched (root; `tor-sets engines install falco` first)",
    )
    live.add_argument("--plugin", action="store_true", help="with --live: the same with the plugin and a table swap")
    live.add_argument(
        "--input", "-i", type=types.input_file, metavar="FILE", help="with --live: relay data (default: bundled)"
    )
    live.add_argument("--keep", type=Path, metavar="DIR", help="with --live: keep Falco's config, rules, log in DIR")
    parser.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="SECONDS", help="wait this long for alerts (default: 30)"
    )
    parser.add_argument("--cases", type=_cases, default=CASES, metavar="LIST", help="outbound,inbound (default: both)")
    parser.add_argument("--port", type=_port, default=0, help="server port in the lab (default: any free port)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    sim = parser.add_argument_group("without a live Falco")
    sim.add_argument(
        "--simulate",
        type=types.input_file,
        metavar="RULES",
        help="replay the connections through a real engine with these rules and deliver its alerts to the sink",
    )
    sim.add_argument(
        "--engine",
        type=types.engine_name(),
        default=None,
        metavar="NAME",
        help="engine for --simulate (default: the best one present)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tor-sets selftest``; return the exit code."""
    if args.live:
        return _run_live(args)
    for flag, value in (("--plugin", args.plugin), ("--input", args.input), ("--keep", args.keep)):
        if value:
            raise UsageError(f"{flag} only goes with --live")
    if args.canary is None or args.sink is None:
        raise UsageError("--canary and --sink are required (or use --live)")
    if args.engine is not None and args.simulate is None:
        raise UsageError("--engine only goes with --simulate")
    sink = open_sink(args.sink)
    on_connected = None
    engine_name = None
    if args.simulate is not None:
        from tor_sets.engines import auto, get_engine
        from tor_sets.falco.load import load_rules

        rules = load_rules(args.simulate)
        rules_path = args.simulate
        engine = get_engine(args.engine) if args.engine else auto()
        engine.check()
        engine_name = engine.name
        canary = str(args.canary)
        if not any(canary in rule.expanded for rule in rules.rules.values()):
            log.warning("selftest: %s does not mention %s: expect FAIL (build with --canary)", args.simulate, canary)

        def on_connected(observed: tuple[Observed, ...]) -> None:
            lines = simulate_alerts(observed, [rules_path], engine)
            log.info(
                "selftest: %s produced %d alert(s); delivering them to %s", engine.name, len(lines), sink.describe()
            )
            sink.deliver(lines)

    report = run_selftest(
        args.canary,
        sink,
        cases=args.cases,
        timeout=args.timeout,
        port=args.port,
        on_connected=on_connected,
        simulated_by=engine_name,
    )
    _print(report, as_json=args.json)
    return 0 if report.ok else 1


def _run_live(args: argparse.Namespace) -> int:
    from tor_sets.onionoo import bundled_snapshot, read_snapshot

    for flag, value in (("--sink", args.sink), ("--simulate", args.simulate), ("--engine", args.engine)):
        if value:
            raise UsageError(f"{flag} does not go with --live (it starts Falco and reads its alerts itself)")
    snapshot = read_snapshot(args.input) if args.input else bundled_snapshot()
    report = run_live(
        snapshot,
        canary=args.canary or DEFAULT_CANARY,
        plugin=args.plugin,
        timeout=args.timeout,
        workdir=args.keep,
    )
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_live(report))
    sys.stdout.flush()
    return 0 if report.ok else 1


def _print(report: Report, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_report(report))
    sys.stdout.flush()
