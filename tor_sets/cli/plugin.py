"""``tor-sets plugin``: build, configure, feed and inspect the tor-sets Falco plugin.

Subcommands:

* ``build [-o DIR]``: compile ``libtorsets.so`` with gcc against the Falco plugin API header; prints its path.
* ``config [-o PATH]``: write the Falco ``config.d`` drop-in that loads the plugin (``-o -``: print it).
* ``table [-o FILE]``: write the plugin's table (with fingerprints and nicknames) from the relay directory,
  atomically, so that a running plugin picks it up; takes the relay-data options of ``build`` and those that
  decide what the sets hold (``--families``, ``--exclude``, ``--canary`` ...), not the rules' own.
* ``inspect FILE [--lookup ADDRESS]``: check a table as the plugin would and print a JSON summary.

What the plugin costs an engine, against the list-based rules, is measured by the one benchmark:
``tor-sets bench --engine falco-local`` (real Falco, the plugin loaded; see docs/plugin.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tor_sets.build import build
from tor_sets.cli import types
from tor_sets.cli.build import add_set_arguments, add_source_arguments, obtain_from_args, set_options

log = logging.getLogger("tor_sets")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "plugin",
        help="the tor-sets Falco plugin (tor.* fields from a table it reloads)",
        description="Build, configure, feed and inspect the tor-sets Falco plugin. Its cost against the list-based "
        "rules: tor-sets bench --engine falco-local.",
    )
    commands = parser.add_subparsers(dest="plugin_command", required=True, metavar="ACTION")

    p = commands.add_parser("build", help="compile libtorsets.so", description="Compile the plugin with gcc.")
    p.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR", help="output folder (default: .)")
    p.add_argument("--include", type=types.folder, metavar="DIR", help="folder holding plugin/plugin_api.h")
    p.add_argument("--cc", metavar="CC", help="C compiler (default: $CC or gcc)")
    p.set_defaults(func=_run_build)

    p = commands.add_parser(
        "config",
        help="write the Falco config.d drop-in that loads the plugin",
        description="Write the Falco config.d drop-in (load_plugins: [torsets] and its plugins entry), atomically. "
        "Put it in /etc/falco/config.d: Falco 0.41+ appends its lists to those of falco.yaml and the other drop-ins.",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PATH",
        help="where to write (default: ./falco.torsets_plugin.yaml; - for stdout), e.g. "
        "/etc/falco/config.d/falco.torsets_plugin.yaml",
    )
    p.add_argument("--library", default=None, metavar="PATH", help="installed libtorsets.so")
    p.add_argument("--table", default=None, metavar="PATH", help="where the table is written")
    p.add_argument(
        "--check-interval",
        type=types.non_negative_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds between the plugin's checks for a replaced table",
    )
    p.set_defaults(func=_run_config)

    p = commands.add_parser(
        "table",
        help="write the plugin's table",
        description="Write the plugin's relay table (atomically: a running plugin reloads it).",
    )
    add_source_arguments(p)
    add_set_arguments(p)
    p.add_argument(
        "-o",
        "--output",
        default="tor.table",
        metavar="PATH",
        help="where to write (default: tor.table; '-' for stdout)",
    )
    p.set_defaults(func=_run_table)

    p = commands.add_parser("inspect", help="check a table and summarise it", description="Check a table.")
    p.add_argument("table", type=types.input_file, metavar="FILE")
    p.add_argument(
        "--lookup", action="append", type=types.address, default=[], metavar="ADDRESS", help="also show these addresses"
    )
    p.set_defaults(func=_run_inspect)


def _run_build(args: argparse.Namespace) -> int:
    from tor_sets.plugin.native import compile_plugin

    path = compile_plugin(args.output, include_dir=args.include, cc=args.cc)
    log.info("built %s", path)
    print(path)
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from tor_sets.build import write_rules
    from tor_sets.plugin.rules import (
        DEFAULT_CHECK_INTERVAL_S,
        DEFAULT_CONFIG_NAME,
        DEFAULT_LIBRARY,
        DEFAULT_TABLE,
        falco_config,
    )

    text = falco_config(
        library=args.library or DEFAULT_LIBRARY,
        table=args.table or DEFAULT_TABLE,
        check_interval_s=DEFAULT_CHECK_INTERVAL_S if args.check_interval is None else args.check_interval,
    )
    output = args.output or DEFAULT_CONFIG_NAME
    if output == "-":
        sys.stdout.write(text)
        return 0
    changed = write_rules(Path(output), text)
    log.info("%s %s: the config.d drop-in that loads the plugin", "wrote" if changed else "unchanged", output)
    return 0


def _run_table(args: argparse.Namespace) -> int:
    from tor_sets.plugin import table_bytes
    from tor_sets.plugin.table import write_table

    options = set_options(args)
    obtained = obtain_from_args(args)
    built = build(obtained.snapshot, options)
    data = table_bytes(built, obtained.snapshot)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        changed = True
    else:
        changed = write_table(Path(args.output), data)
    log.info("%s %s: %d bytes (%s)", "wrote" if changed else "unchanged", args.output, len(data), obtained.origin)
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from tor_sets.plugin.table import decode, read_table, role_names, summary

    data = read_table(args.table)
    table = decode(data)
    document: dict[str, object] = {"schema": 1, "table": str(args.table), "bytes": len(data), **summary(table)}
    lookups: dict[str, object] = {}
    for address in args.lookup:
        entry = table.get(address)
        lookups[str(address)] = (
            None
            if entry is None
            else {"role": role_names(entry.roles), "fingerprint": entry.fingerprint, "nickname": entry.nickname}
        )
    if args.lookup:
        document["lookup"] = lookups
    print(json.dumps(document, sort_keys=True, indent=2))
    return 0
