"""The command line: ``tor-sets SUBCOMMAND ...``.

The only package that parses argv, prints and exits. Each subcommand lives in a module of its own exposing
``add_parser(subparsers)``, which registers the subcommand and sets ``func`` (``args -> int``) as its default.
stdout carries only data (YAML, JSON, tables); progress, warnings and logs go to stderr. Every error is one line,
``tor-sets: error: ...`` (a usage error: ``tor-sets SUBCOMMAND: error: ...``); ``-v`` (before or after the
subcommand) adds the traceback and never changes the exit code.

Exit codes (every subcommand):
    0    success (rules written or unchanged; verification passed)
    1    a check failed (verification found misses or false alarms; status: not what was deployed)
    2    usage error, decided from the command line before anything is fetched, read or written: a bad flag or
         value, options that contradict each other, an input file named on the command line that is missing
         or unreadable, a malformed registry reference
    3    runtime error (I/O, an engine, a registry, the refresh lock, the reload)
    4    upstream failure (fetch failed, document unusable)
    5    a safety guard tripped (empty or shrunk sets, too-wide networks, an unsafe canary or listen address)
    6    validation failure (rules do not load or compile)
    7    stale data (older than --max-age)
    130  interrupted (SIGINT; a single refresh stopped by SIGTERM: 143)
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from tor_sets import __version__
from tor_sets.cli import bench, build, engines, enrich, plugin, publish, refresh, selftest, verify
from tor_sets.cli.flags import with_flags
from tor_sets.cli.parser import Parser
from tor_sets.errors import TorSetsError

EXIT_CODES_HELP = __doc__.split("Exit codes (every subcommand):", 1)[1] if __doc__ else ""

#: every subcommand's module, in the order ``tor-sets --help`` lists them
_SUBCOMMANDS = (build, verify, engines, bench, refresh, publish, enrich, selftest, plugin)


def make_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = Parser(
        prog="tor-sets",
        description="Falco rules from the Tor relay directory, verified on real engines.",
        epilog="exit codes (every subcommand):" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tor-sets {__version__}")
    parser.set_defaults(verbose=False)  # Parser adds -v to every parser, the subcommands' included
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS:
        module.add_parser(sub)
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _configure_logging(verbose: bool) -> None:
    logger = logging.getLogger("tor_sets")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("tor-sets: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = True  # tests capture records at the root; a plain run has no root handler
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (a usage error exits 2 through ``SystemExit``)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TorSetsError as exc:
        return _fail(with_flags(str(exc)), exc.exit_code, verbose=args.verbose)
    except OSError as exc:  # the last safety net: an I/O error no layer translated is still one line
        where = f" ({exc.filename})" if exc.filename is not None else ""
        return _fail(f"{exc.strerror or exc}{where}", 3, verbose=args.verbose)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print("tor-sets: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, code: int, *, verbose: bool) -> int:
    """Print the error line (after the traceback under ``-v``) and return its exit code."""
    if verbose:
        traceback.print_exc()
    print(f"tor-sets: error: {message}", file=sys.stderr)
    return code
