"""The argument parser of every subcommand: a usage error is one line, a misspelt choice gets a suggestion.

Exports :class:`Parser` (an :class:`argparse.ArgumentParser` whose ``error()`` prints one line and exits 2; the
subcommand parsers made by its ``add_subparsers()`` are of the same class) and :func:`invalid_choice`.

Every parser made by :class:`Parser` also takes ``-v``/``--verbose``, so that ``tor-sets build -v`` means what
``tor-sets -v build`` means.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

__all__ = ["VERBOSE_HELP", "Parser", "invalid_choice"]

VERBOSE_HELP = "log details, and show the traceback of an error (the exit code stays the error's)"


def invalid_choice(value: object, choices: Iterable[object]) -> str:
    """The message for a value outside ``choices``: the closest choice when one is close, else every choice.

    >>> invalid_choice("outbund", ["inbound", "outbound"])
    "invalid choice: 'outbund' (did you mean 'outbound'?)"
    >>> invalid_choice("bogus", ["legacy", "modern", "all"])
    "invalid choice: 'bogus' (choose from legacy, modern, all)"
    """
    names = [str(choice) for choice in choices]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(names)}"
    return f"invalid choice: {str(value)!r} ({hint})"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, ``PROG: error: MESSAGE``, and exit 2.

    argparse prints the whole usage block above the message (16 lines for ``build``); ``PROG --help`` shows it
    when wanted. Every parser of this class takes ``-v``/``--verbose`` (the top-level one sets its default).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: a subcommand's parser leaves the value of the top-level -v alone unless -v is given after it
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` as one line on stderr and exit 2."""
        line = " ".join(message.split())
        sys.stderr.write(f"{self.prog}: error: {line}\n")
        sys.stderr.flush()
        raise SystemExit(2)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own message lists every choice; this one names the closest when there is one
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, invalid_choice(value, action.choices))
