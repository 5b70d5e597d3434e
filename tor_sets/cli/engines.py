"""``tor-sets engines``: set up, list and stop the real rule engines.

Subcommands::

    tor-sets engines install [legacy|modern|docker|falco|bench|all]   set up engines (root; steps done are skipped)
    tor-sets engines list [--json]                        every engine, present or not, and its version
    tor-sets engines stop-docker                          stop the dockerd that tor-sets started, if any

stdout carries only data (the ``list`` table or JSON document); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from tor_sets import provision as setup
from tor_sets.cli import types
from tor_sets.engines.paths import FALCO_SOURCE_ENV
from tor_sets.provision.docker import SESSION_ENV

__all__ = ["add_parser", "run"]

#: version of the ``engines list --json`` document
SCHEMA = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``engines`` and its subcommands."""
    parser = sub.add_parser(
        "engines",
        help="set up, list and stop the real rule engines",
        description="Set up, list and stop the engines that replay captures: real Falco (run directly and in its "
        "container image) and Debian's sysdig builds.",
    )
    actions = parser.add_subparsers(dest="engines_command", required=True, metavar="ACTION")
    inst = actions.add_parser("install", help="set up engines (needs root; idempotent)")
    parts = [*setup.PARTS, *setup.EXTRA_PARTS, "all"]
    inst.add_argument(
        "part",
        nargs="?",
        choices=parts,
        default="all",
        metavar="PART",
        help=f"what to set up: {', '.join(parts)} (default: all = legacy, modern, docker, falco; docker includes the "
        "modern root it "
        "imports; falco pulls falcosecurity/falco where it can, else builds Falco from source; bench adds valgrind "
        "to the modern root for instruction counts)",
    )
    inst.add_argument(
        "--falco-source",
        type=types.folder,
        metavar="DIR",
        help=f"folder holding falco-VERSION.tar.gz, libs-VERSION.tar.gz and driver-VERSION.tar.gz to build Falco "
        f"from (default: ${FALCO_SOURCE_ENV})",
    )
    inst.add_argument(
        "--falco-version",
        type=_release,
        metavar="VERSION",
        help="which Falco release, e.g. 0.44.1 (default: the newest source)",
    )
    inst.add_argument(
        "--no-pull", action="store_true", help="do not try the official Falco image first; build from source"
    )
    lst = actions.add_parser("list", help="list every engine, present or not, with its version")
    lst.add_argument("--json", action="store_true", help="print one JSON document")
    stop = actions.add_parser("stop-docker", help="stop the dockerd that tor-sets started (others are left alone)")
    stop.add_argument(
        "--session",
        default=os.environ.get(SESSION_ENV),
        help="stop it only if the run with this $TOR_SETS_SESSION started it (default: $TOR_SETS_SESSION; unset: "
        "whichever tor-sets run started it)",
    )
    parser.set_defaults(func=run)


def _release(text: str) -> str:
    """A Falco release: ``MAJOR.MINOR.PATCH``.

    >>> _release("0.44.1")
    '0.44.1'
    """
    if not re.fullmatch(r"\d+\.\d+\.\d+", text):
        raise argparse.ArgumentTypeError(f"expected a Falco release such as 0.44.1, got {text!r}")
    return text


def run(args: argparse.Namespace) -> int:
    """Run ``tor-sets engines ACTION``; return the exit code."""
    if args.engines_command == "install":
        source = args.falco_source or (Path(os.environ[FALCO_SOURCE_ENV]) if os.environ.get(FALCO_SOURCE_ENV) else None)
        steps = setup.install([args.part], falco_source=source, falco_version=args.falco_version, pull=not args.no_pull)
        done = sum(step.done for step in steps)
        print(f"tor-sets: engines: {done} step(s) done, {len(steps) - done} already in place", file=sys.stderr)
        return 0
    if args.engines_command == "list":
        _print_list(setup.engine_status(), as_json=args.json)
        return 0
    stopped = setup.stop_docker(args.session)
    if stopped is None:
        print("tor-sets: no dockerd started by tor-sets is running; nothing stopped", file=sys.stderr)
    else:
        print(f"tor-sets: stopped dockerd (pid {stopped.pid})", file=sys.stderr)
    return 0


def _print_list(engines: tuple[setup.EngineStatus, ...], *, as_json: bool) -> None:
    if as_json:
        doc = {
            "schema": SCHEMA,
            "engines": [
                {
                    "name": e.name,
                    "description": e.description,
                    "present": e.present,
                    "version": e.version,
                    "reason": e.reason,
                }
                for e in engines
            ],
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    rows = [("ENGINE", "PRESENT", "VERSION", "DETAIL")]
    rows += [
        (e.name, "yes" if e.present else "no", e.version or "-", e.description if e.present else e.reason or "")
        for e in engines
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
