"""``tor-sets refresh`` and ``tor-sets status``: keep a deployed rules file fresh, and say what is deployed.

``refresh`` runs :func:`tor_sets.deploy.refresh.refresh` once, or every ``--every`` in a loop that SIGTERM and
SIGINT end cleanly between steps. ``status`` prints what :func:`tor_sets.deploy.refresh.deployment_status` found (a
table, or one JSON document with ``--json``). Progress and warnings go to stderr; stdout carries only ``status``'s
report. The library's messages name option fields (``min_relays``); they are shown with the flags
(``--min-relays``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

from tor_sets.cli import types
from tor_sets.cli.build import add_rules_arguments, add_source_arguments, build_options
from tor_sets.cli.flags import with_flags
from tor_sets.deploy.refresh import (
    VALIDATIONS,
    DeploymentStatus,
    Guards,
    Outcome,
    RefreshOptions,
    Reload,
    Stop,
    Stopped,
    check_falco_pid,
    deployment_status,
    refresh,
    run_every,
    status_document,
)
from tor_sets.errors import StaleDataError, TorSetsError
from tor_sets.onionoo import MAX_CLOCK_SKEW, FetchSettings, default_cache_dir
from tor_sets.relays import format_age

__all__ = ["add_parser", "log_failure", "run_refresh", "run_status"]

log = logging.getLogger("tor_sets")

REFRESH_EPILOG = """\
exit codes (the table of `tor-sets --help`, as refresh meets it):
  0    the rules were updated, or nothing changed (304, same data, or older data than deployed)
  2    usage error, before anything is fetched or written: a bad flag or value, a missing --input file, -o -,
       --offline without --allow-fallback
  3    runtime error: lock timeout, a file cannot be written or is not a regular file (-o, --state, --lock),
       the engine or the reload failed, --reload-pid is not a Falco process
  4    upstream failure: fetch failed or the document is unusable; the rules file is left as it was
  5    a sanity guard tripped (--min-relays, --max-drop, an empty set, a too-wide network); rules left as they were
  6    validation failure: the new rules do not load; the old rules stay
  7    stale: the newest good data is older than --max-age (wins over 3-6 when both apply)
  130  interrupted by SIGINT (143: SIGTERM) during a single run; the --every loop exits 0 when stopped

The live directory is fetched with If-Modified-Since (a 304 costs one request). When it fails, refresh fails and
leaves the rules alone: it never falls back to the cached download or to the snapshot bundled with tor-sets (months
old) unless --allow-fallback is given. State and lock: STATE_DIR/NAME-DIGEST.state.json
and .lock (STATE_DIR: $TOR_SETS_STATE_DIR, else /var/lib/tor-sets for root, else ~/.local/state/tor-sets), never in
the rules folder, whose every file Falco before 0.41 loads; --state and --lock choose other paths.

examples:
  tor-sets refresh -o /etc/falco/rules.d/tor_rules.yaml
  tor-sets refresh -o /etc/falco/rules.d/tor_rules.yaml --reload-cmd 'systemctl reload falco' --max-age 6h
  tor-sets refresh --every 30m -o /rules/tor_rules.yaml         # long-lived, for containers
"""

STATUS_EPILOG = """\
exit codes:
  0  the rules file exists and is byte for byte what the last refresh wrote
  1  it is missing, differs from the state (edited by hand?), or there is no readable state; or the deployed
     data is dated in the future (more than 1 h ahead of this host's clock; the next refresh ignores that state)
  7  the deployed data is older than --max-age
"""


#: the shortest --every: Onionoo re-indexes its relays once an hour, so asking more often than once a minute only
#: loads the server (a 304 costs one request)
MIN_EVERY = timedelta(minutes=1)


def _command(text: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split the command: {exc}") from None
    if not argv:
        raise argparse.ArgumentTypeError("empty command")
    return argv


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``refresh`` and ``status``."""
    parser = sub.add_parser(
        "refresh",
        help="keep a rules file fresh: fetch, build, guard, validate, swap atomically, reload",
        description=(
            "Fetch the Tor relay directory (conditionally), build the rules, check them against sanity guards and\n"
            "validate them, then replace the rules file atomically and tell Falco. On any failure the last good\n"
            "rules stay in place."
        ),
        epilog=REFRESH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PATH",
        help="the rules file to keep fresh (a regular file, or a link to one)",
    )
    add_source_arguments(parser, refresh=True)
    fetching = parser.add_argument_group("fetching")
    fetching.add_argument(
        "--allow-fallback",
        action="store_true",
        help="when the live fetch fails, use the cached download, else the bundled snapshot (default: fail)",
    )
    fetching.add_argument(
        "--retries", type=types.non_negative_count, default=3, metavar="N", help="retries per fetch (default: 3)"
    )
    fetching.add_argument(
        "--backoff",
        type=types.non_negative_seconds,
        default=1.0,
        metavar="SECONDS",
        help="backoff factor between retries (default: 1)",
    )
    add_rules_arguments(parser)
    checks = parser.add_argument_group("checks")
    checks.add_argument(
        "--validate",
        choices=VALIDATIONS,
        default="auto",
        help="yaml: the file loads and every rule expands; engine: also each condition loads in a real engine; "
        "auto (default): engine when one is installed, else yaml",
    )
    checks.add_argument(
        "--engine",
        type=types.engine_name(),
        metavar="NAME",
        help="engine for --validate engine (default: the best present)",
    )
    checks.add_argument(
        "--min-relays",
        type=types.non_negative_count,
        default=Guards().min_relays,
        metavar="N",
        help=f"refuse data with fewer running relays (default: {Guards().min_relays}; the network has ~9,500)",
    )
    checks.add_argument(
        "--max-drop",
        type=types.percent,
        default=Guards().max_drop,
        metavar="PERCENT",
        help="refuse data whose relay count or entry/exit address count (per IP version) fell by more than this "
        "since the last good refresh (default: 50; 100 switches it off)",
    )
    deploy = parser.add_argument_group("deploying")
    reload = deploy.add_mutually_exclusive_group()
    reload.add_argument(
        "--reload-pid",
        type=types.pid,
        metavar="PID",
        help="send SIGHUP to this Falco process (refused unless its name is falco; checked before each signal)",
    )
    reload.add_argument(
        "--reload-cmd",
        type=_command,
        metavar="COMMAND",
        help="run this command (split like a shell would, run without one), e.g. 'systemctl reload falco'; "
        "default: rely on Falco's own watch of its rules files",
    )
    deploy.add_argument(
        "--state", type=Path, metavar="FILE", help="state file (default: STATE_DIR/NAME-DIGEST.state.json)"
    )
    deploy.add_argument(
        "--lock",
        type=Path,
        metavar="FILE",
        help="lock file (default: STATE_DIR/NAME-DIGEST.lock); every refresh of one PATH must use the same",
    )
    deploy.add_argument(
        "--lock-timeout",
        type=types.non_negative_seconds,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for another refresh of the same PATH (default: 60)",
    )
    deploy.add_argument(
        "--every",
        type=types.period(MIN_EVERY),
        metavar="PERIOD",
        help="keep running: refresh every PERIOD (e.g. 30m; at least 1m, Onionoo re-indexes hourly) with ±10%% "
        "jitter until SIGTERM/SIGINT",
    )
    parser.set_defaults(func=run_refresh)

    stat = sub.add_parser(
        "status",
        help="say what rules are deployed, from which data, how old, and whether the file was edited",
        description="Report what `tor-sets refresh` deployed at PATH and whether the file is still what it wrote.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stat.add_argument("rules", type=Path, metavar="PATH", help="the rules file")
    stat.add_argument(
        "--state", type=Path, metavar="FILE", help="state file (default: STATE_DIR/NAME-DIGEST.state.json)"
    )
    stat.add_argument("--max-age", type=types.duration, metavar="AGE", help="exit 7 when the data is older than AGE")
    stat.add_argument("--json", action="store_true", help="print one JSON document")
    stat.set_defaults(func=run_status)


def _usage(message: str) -> NoReturn:
    print(f"tor-sets refresh: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def refresh_options(args: argparse.Namespace) -> RefreshOptions:
    """The RefreshOptions the arguments ask for (usage errors exit 2)."""
    if str(args.output) == "-":
        _usage("-o - is not possible: refresh replaces a file")
    if args.offline and not args.allow_fallback:
        _usage("--offline needs --allow-fallback (it deploys the cached download or the bundled snapshot)")
    if args.engine and args.validate not in ("engine", "auto"):
        _usage("--engine goes with --validate engine")
    settings = FetchSettings(
        url=args.url,
        read_timeout=args.timeout,
        connect_timeout=min(10.0, args.timeout),
        retries=args.retries,
        backoff_factor=args.backoff,
        max_bytes=args.max_bytes,
        cache_dir=args.cache_dir or default_cache_dir(),
        deadline=args.deadline,
        max_relays=args.max_relays,
    )
    return RefreshOptions(
        output=args.output,
        build=build_options(args),
        settings=settings,
        input_path=args.input,
        offline=args.offline,
        allow_fallback=args.allow_fallback,
        validate="engine" if args.engine and args.validate == "auto" else args.validate,
        engine=args.engine,
        guards=Guards(min_relays=args.min_relays, max_drop=args.max_drop),
        reload=Reload(pid=args.reload_pid, command=args.reload_cmd or ()),
        state=args.state,
        lock=args.lock,
        lock_timeout=args.lock_timeout,
        max_age=args.max_age,
    )


@contextmanager
def _signals(stop: Stop) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``stop`` for the duration."""
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _log_outcome(outcome: Outcome, output: Path) -> None:
    for warning in outcome.warnings:
        log.warning("WARNING: %s", warning)
    deployed = outcome.state.deployed
    assert deployed is not None
    data = f"relay data of {outcome.relays_published:%Y-%m-%d %H:%M} UTC ({outcome.origin})"
    if outcome.action == "wrote":
        counts = deployed.counts
        log.info(
            "wrote %s: %d bytes from %d relays, %s; entry %d+%d, exit %d+%d IPv4+IPv6 addresses; validated: %s; "
            "reload: %s",
            output,
            deployed.size,
            deployed.relays,
            data,
            counts.get("entry_ipv4", 0),
            counts.get("entry_ipv6", 0),
            counts.get("exit_ipv4", 0),
            counts.get("exit_ipv6", 0),
            outcome.validated,
            outcome.reloaded or "falco's file watch",
        )
    elif outcome.action == "kept":
        log.info(
            "kept %s: its relay data (of %s UTC) is newer than this run's %s",
            output,
            f"{deployed.relays_published:%Y-%m-%d %H:%M}",
            data,
        )
    else:
        log.info("unchanged %s: %s is already deployed", output, data)
    if outcome.reloaded and outcome.action != "wrote":
        log.info("reload owed by an earlier run done: %s", outcome.reloaded)


def run_refresh(args: argparse.Namespace) -> int:
    """Run ``tor-sets refresh``; return the exit code."""
    options = refresh_options(args)
    if options.reload.pid is not None:
        check_falco_pid(options.reload.pid)  # again before each signal: Falco may have gone and its pid been reused
    stop = Stop()
    with _signals(stop):
        if args.every is not None:
            log.info(
                "refreshing %s every %s (±10 %%); SIGTERM or SIGINT ends the loop",
                options.output,
                _format_period(args.every),
            )
            run_every(
                options,
                args.every,
                stop=stop,
                on_outcome=lambda o: _log_outcome(o, options.output),
                on_failure=log_failure,
            )
            return 0
        try:
            outcome = refresh(options, stop=stop)
        except Stopped as stopped:
            log.info("interrupted by %s; the rules file is whole and as it was", signal.Signals(stopped.signum).name)
            return 128 + stopped.signum
    _log_outcome(outcome, options.output)
    if outcome.stale:
        raise StaleDataError(outcome.stale)
    return 0


def log_failure(exc: TorSetsError) -> None:
    """How the ``--every`` loop reports a failed run: one line, ``refresh failed (exit N): ...``, with flags."""
    log.error("refresh failed (exit %d): %s", exc.exit_code, with_flags(str(exc)))


def _format_period(period: timedelta) -> str:
    seconds = int(period.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{period.total_seconds():g}s"


def run_status(args: argparse.Namespace) -> int:
    """Run ``tor-sets status``; return the exit code."""
    found = deployment_status(args.rules, args.state)
    stale = args.max_age is not None and found.age is not None and found.age > args.max_age
    if args.json:
        print(json.dumps(status_document(found, args.max_age), indent=2, sort_keys=True))
    else:
        for line in _status_lines(found, args.max_age):
            print(line)
    if stale:
        return 7
    return 0 if found.exists and found.matches and not found.future else 1


def _status_lines(found: DeploymentStatus, max_age: timedelta | None) -> list[str]:
    lines = []
    if found.exists:
        lines.append(f"rules:         {found.rules} ({found.size} bytes, sha256 {found.sha256})")
    else:
        lines.append(f"rules:         {found.rules} (missing)")
    deployed = found.state.deployed if found.state else None
    if found.state_error:
        lines.append(f"state:         {found.state_error}")
    else:
        lines.append(f"state:         {found.state_path}")
    if found.matches is True:
        lines.append("file:          intact (byte for byte what the last refresh wrote)")
    elif found.matches is False:
        what = "missing" if not found.exists else "CHANGED since the last refresh (edited by hand?)"
        lines.append(f"file:          {what}; the next refresh replaces it")
    if deployed is not None:
        c = deployed.counts
        lines += [
            f"data:          relays_published {deployed.relays_published:%Y-%m-%d %H:%M} UTC, {deployed.relays} relays,"
            f" origin {deployed.origin} ({deployed.source})",
            f"addresses:     entry {c.get('entry_ipv4', 0)} IPv4 + {c.get('entry_ipv6', 0)} IPv6, "
            f"exit {c.get('exit_ipv4', 0)} IPv4 + {c.get('exit_ipv6', 0)} IPv6",
            f"validated:     {deployed.validated}",
            f"last success:  {deployed.checked_at:%Y-%m-%d %H:%M:%S} UTC; last change "
            f"{deployed.changed_at:%Y-%m-%d %H:%M:%S} UTC",
        ]
    elif found.header_published is not None:
        lines.append(f"data:          relays_published {found.header_published:%Y-%m-%d %H:%M} UTC (from the header)")
    if found.future:
        assert found.age is not None
        lines.append(
            f"age:           {format_age(found.age)} — ERROR: the deployed data is dated in the future (more than "
            f"{MAX_CLOCK_SKEW.total_seconds() / 3600:g} h ahead of this host's clock); the next refresh ignores it"
        )
    elif found.age is not None:
        verdict = ""
        if max_age is not None:
            verdict = " — STALE, older than --max-age" if found.age > max_age else " — within --max-age"
        lines.append(f"age:           {format_age(found.age)}{verdict}")
    if found.state is not None:
        failure = found.state.last_failure
        if failure is not None:
            lines.append(
                f"last failure:  {failure.at:%Y-%m-%d %H:%M:%S} UTC, exit {failure.exit_code}: "
                f"{with_flags(failure.message)}"
            )
        if found.state.reload_pending:
            lines.append("reload:        PENDING (telling Falco failed; the next refresh tries again)")
    return lines
