"""The command line: ``tor-sets SUBCOMMAND ...``.

The only package that parses argv, prints and exits. Each subcommand lives in a module of its own exposing
``add_parser(subparsers)``, which registers the subcommand and sets ``func`` (``args -> int``) as its default.
stdout carries only data (YAML, JSON, tables); progress, warnings and logs go to stderr.

Exit codes:
    0  success (rules written or unchanged; verification passed)
    1  a check failed (verification found misses or false alarms)
    2  usage error (bad flags)
    3  runtime error (engine failure, I/O)
    4  upstream failure (fetch failed, document unusable)
    5  a sanity guard tripped (empty or shrunk sets, too-wide networks)
    6  validation failure (rules do not load or compile)
    7  stale data (older than --max-age)
    130 interrupted
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from tor_sets import __version__
from tor_sets.cli import bench, build, engines, enrich, plugin, publish, refresh, selftest, verify
from tor_sets.cli.flags import with_flags
from tor_sets.errors import TorSetsError

EXIT_CODES_HELP = __doc__.split("Exit codes:", 1)[1] if __doc__ else ""

#: every subcommand's module, in the order ``tor-sets --help`` lists them
_SUBCOMMANDS = (build, verify, engines, bench, refresh, publish, enrich, selftest, plugin)


def make_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tor-sets",
        description="Falco rules from the Tor relay directory, verified on real engines.",
        epilog="exit codes:" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tor-sets {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
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
    """Run the command line; return the exit code."""
    parser = make_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TorSetsError as exc:
        if args.verbose:
            raise
        print(f"tor-sets: error: {with_flags(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tor-sets: interrupted", file=sys.stderr)
        return 130
