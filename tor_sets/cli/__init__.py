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
import re
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from tor_sets import __version__
from tor_sets.errors import TorSetsError

EXIT_CODES_HELP = __doc__.split("Exit codes:", 1)[1] if __doc__ else ""

#: the option fields library messages name, and the flag that sets each (issue 15.4: the library names fields,
#: the command line names its flags)
OPTION_FLAGS = {
    "allow_fallback": "--allow-fallback",
    "lock_timeout": "--lock-timeout",
    "max_age": "--max-age",
    "max_drop": "--max-drop",
    "min_relays": "--min-relays",
    "plain_http": "--plain-http",
    "reload.pid": "--reload-pid",
}
# a field as a word of its own: not inside a path, a URL, a dotted name or an assignment
_OPTION_FIELD = re.compile(r"(?<![\w./=-])(" + "|".join(map(re.escape, OPTION_FLAGS)) + r")(?![\w/=-])")


def with_flags(message: str) -> str:
    """A library message as the command line shows it: each option field it names replaced by its flag.

    >>> with_flags("only 0 running relays in the data (at least 5000 required, min_relays)")
    'only 0 running relays in the data (at least 5000 required, --min-relays)'
    >>> with_flags("cannot read /srv/min_relays/x.json")
    'cannot read /srv/min_relays/x.json'
    """
    return _OPTION_FIELD.sub(lambda match: OPTION_FLAGS[match[1]], message)


def _subcommand_modules() -> list[ModuleType]:
    from tor_sets.cli import build

    modules: list[ModuleType] = [build]
    for name in ("verify", "engines", "bench", "refresh", "publish", "enrich", "selftest", "plugin"):
        try:
            modules.append(__import__(f"tor_sets.cli.{name}", fromlist=["add_parser"]))
        except ModuleNotFoundError as exc:
            if exc.name != f"tor_sets.cli.{name}":
                raise
    return modules


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
    for module in _subcommand_modules():
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
