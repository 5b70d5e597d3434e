"""``tor-sets engines``: set up, list and stop the real rule engines.

Subcommands::

    tor-sets engines install [legacy|modern|docker|bench|all]   set up engines (root; steps already done are skipped)
    tor-sets engines list [--json]                        every engine, present or not, and its version
    tor-sets engines stop-docker                          stop the dockerd that tor-sets started, if any

stdout carries only data (the ``list`` table or JSON document); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from tor_sets.engines import install as setup

__all__ = ["add_parser", "run"]

#: version of the ``engines list --json`` document
SCHEMA = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``engines`` and its subcommands."""
    parser = sub.add_parser(
        "engines",
        help="set up, list and stop the real rule engines",
        description="Set up, list and stop the engines that replay captures (sysdig builds, Falco in Docker).",
    )
    actions = parser.add_subparsers(dest="engines_command", required=True, metavar="ACTION")
    inst = actions.add_parser("install", help="set up engines (needs root; idempotent)")
    inst.add_argument(
        "part",
        nargs="?",
        choices=[*setup.PARTS, *setup.EXTRA_PARTS, "all"],
        default="all",
        help="what to set up (default: all = legacy, modern, docker; docker includes the modern root it imports; "
        "bench adds valgrind to the modern root for instruction counts)",
    )
    lst = actions.add_parser("list", help="list every engine, present or not, with its version")
    lst.add_argument("--json", action="store_true", help="print one JSON document")
    actions.add_parser("stop-docker", help="stop the dockerd that tor-sets started (others are left alone)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tor-sets engines ACTION``; return the exit code."""
    if args.engines_command == "install":
        steps = setup.install([args.part])
        done = sum(step.done for step in steps)
        print(f"tor-sets: engines: {done} step(s) done, {len(steps) - done} already in place", file=sys.stderr)
        return 0
    if args.engines_command == "list":
        _print_list(setup.status(), as_json=args.json)
        return 0
    stopped = setup.stop_docker()
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
