"""``tor-sets verify``: replay labelled connections through real engines; exit 0 only with no miss, no false alarm."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from tor_sets.build import BuildOptions, build, relay_sets
from tor_sets.cli import types
from tor_sets.cli.parser import invalid_choice
from tor_sets.engines import ENGINES, PREFERENCE, Engine, Plugin, auto, get_engine
from tor_sets.engines.base import RULE_MATCHING
from tor_sets.errors import EngineError, EngineUnavailable, UsageError
from tor_sets.falco.load import load_rules
from tor_sets.falco.model import CURRENT_FALCO
from tor_sets.files import require_folder
from tor_sets.onionoo import bundled_snapshot, read_snapshot
from tor_sets.relays import Snapshot
from tor_sets.verify import Verdict, format_verdicts, make_scenario, outbound_role, verify

log = logging.getLogger("tor_sets")

SCHEMA = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "verify",
        help="prove the rules fire: replay labelled connections through real engines",
        description="Build (or take) Falco rules, write a capture of labelled connections to and from Tor relays "
        "and other addresses, replay it through real engines and report, per engine and rule, what was expected, "
        "what fired, what was missed and what alerted falsely. Exit 0 only with no miss and no false alarm.",
    )
    parser.add_argument(
        "--rules",
        type=types.input_file,
        action="append",
        default=[],
        metavar="FILE",
        help="verify this rules file (any format, e.g. the 2022 tool's) instead of building one; "
        "repeatable, loaded in order like Falco's rules files",
    )
    parser.add_argument(
        "--input",
        "-i",
        type=types.input_file,
        metavar="FILE",
        help="relay snapshot that is the truth (default: the bundled one)",
    )
    parser.add_argument(
        "--engine",
        action="append",
        type=types.engine_name("auto", "all"),
        default=[],
        metavar="NAME",
        help=f"auto (default), all, or one of {', '.join(PREFERENCE)}; repeatable",
    )
    parser.add_argument(
        "--size", type=_size, default=1200, metavar="N", help="about how many connections, 10 or more (default: 1200)"
    )
    parser.add_argument(
        "--seed", type=types.non_negative_count, default=1, metavar="N", help="sampling seed (default: 1)"
    )
    parser.add_argument(
        "--exclude",
        action="append",
        type=types.network,
        default=[],
        metavar="CIDR",
        help="your own ranges: removed from built rules, and relays inside must not alert",
    )
    parser.add_argument(
        "--falco-version",
        type=types.falco_version,
        default=CURRENT_FALCO,
        metavar="VERSION",
        help=f"profile of the built rules for current engines (default: {CURRENT_FALCO})",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the rules files and capture in DIR")
    parser.add_argument(
        "--before",
        type=types.input_file,
        action="append",
        default=[],
        metavar="FILE",
        help="a rules file loaded before the judged ones and not judged itself, e.g. Falco's falco_rules.yaml: "
        "shows which Tor alerts it takes under --rule-matching first; repeatable",
    )
    parser.add_argument(
        "--rule-matching",
        choices=RULE_MATCHING,
        default="all",
        help="Falco's rule_matching for the replay (default: all; Falco's own default is first)",
    )
    parser.add_argument(
        "--load-plugin",
        type=types.plugin_library,
        action="append",
        default=[],
        metavar="NAME=LIBRARY",
        help="load this plugin (with an empty init_config), e.g. container=/usr/share/falco/plugins/libcontainer.so "
        "for rules that need it; torsets=libtorsets.so: the tor-sets plugin with a table of the same relay data, "
        "and (without --rules) the plugin's rules; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.set_defaults(func=run)


def _size(text: str) -> int:
    value = types.count(text)
    if value < 10:
        raise argparse.ArgumentTypeError(f"expected 10 or more connections, got {text!r}")
    return value


def skip_reason(name: str, exc: EngineError) -> str:
    """``NAME: REASON`` for an engine that could not be used, its name said once (the engines' messages start with
    it: ``falco: image tor-sets/falco:0.44.1 not present; run ...``).

    >>> skip_reason("falco", EngineUnavailable("falco: image tor-sets/falco:0.44.1 not present"))
    'falco: image tor-sets/falco:0.44.1 not present'
    >>> skip_reason("falco-local", EngineUnavailable("cannot read the engine cache /c: Permission denied"))
    'falco-local: cannot read the engine cache /c: Permission denied'
    """
    reason = str(exc)
    return reason if reason.startswith(f"{name}: ") else f"{name}: {reason}"


def select_engines(names: list[str]) -> tuple[list[Engine], list[str]]:
    """The engines asked for, and for ``all`` the reasons of those skipped."""
    names = names or ["auto"]
    skipped: list[str] = []
    engines: list[Engine] = []
    for name in names:
        if name == "auto":
            engines.append(auto())
        elif name == "all":
            for candidate in PREFERENCE:
                engine = get_engine(candidate)
                try:
                    engine.check()
                except EngineUnavailable as exc:
                    skipped.append(skip_reason(candidate, exc))
                    continue
                engines.append(engine)
        elif name in ENGINES:
            engine = get_engine(name)
            engine.check()
            engines.append(engine)
        else:
            raise UsageError(invalid_choice(name, ["auto", "all", *PREFERENCE]))
    if not engines:
        raise EngineUnavailable("no engine available: " + "; ".join(skipped) + " (run `tor-sets engines install`)")
    unique = {e.name: e for e in engines}
    return list(unique.values()), skipped


def _rules_for(
    engine: Engine, snapshot: Snapshot, options: BuildOptions, folder: Path, written: set[Path], *, plugin: bool
) -> Path:
    """The rules file this run built for ``engine``, written into ``folder`` once per run (``written``): a file of
    that name left in a ``--keep`` folder by an earlier run is replaced, never replayed."""
    if plugin:  # the rules that ask the tor-sets plugin
        from tor_sets.plugin import plugin_rules_text

        path = folder / "tor_plugin_rules.yaml"
        if path not in written:
            path.write_text(plugin_rules_text(build(snapshot, options)))
            written.add(path)
        return path
    legacy = engine.name == "sysdig-legacy"
    if legacy:
        options = replace(options, rules=replace(options.rules, falco_version="legacy"))
    path = folder / ("tor_rules.legacy.yaml" if legacy else "tor_rules.yaml")
    if path not in written:
        path.write_text(build(snapshot, options).text)
        written.add(path)
    return path


def _with_table(plugins: list[Plugin], snapshot: Snapshot, options: BuildOptions, folder: Path) -> list[Plugin]:
    """``plugins`` with the tor-sets plugin, when named without a configuration, given a table of ``snapshot``."""
    from tor_sets.plugin import PLUGIN_NAME, engine_plugin, table_bytes

    if not any(p.name == PLUGIN_NAME and not p.init_config for p in plugins):
        return plugins
    table = folder / "tor.table"
    table.write_bytes(table_bytes(build(snapshot, options), snapshot))
    return [engine_plugin(p.library, table) if p.name == PLUGIN_NAME and not p.init_config else p for p in plugins]


def run(args: argparse.Namespace) -> int:
    snapshot = read_snapshot(args.input) if args.input else bundled_snapshot()
    exclude = tuple(args.exclude)
    options = BuildOptions(exclude=exclude)
    options = replace(options, rules=replace(options.rules, falco_version=args.falco_version))
    truth = relay_sets(snapshot, BuildOptions())
    engines, skipped = select_engines(args.engine)
    for reason in skipped:
        log.warning("skipped %s", reason)
    verdicts: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="tor-sets-verify-") as tmp:
        folder = args.keep or Path(tmp)
        require_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written: set[Path] = set()
        plugins = _with_table(args.load_plugin, snapshot, options, folder)
        torsets = plugins != args.load_plugin
        for engine in engines:
            paths = args.rules or [_rules_for(engine, snapshot, options, folder, written, plugin=torsets)]
            rules = load_rules(*paths)
            for warning in rules.warnings:
                log.warning("%s: %s", paths[-1], warning)
            scenario = make_scenario(
                truth,
                lists=rules.lists,
                outbound_role=outbound_role(rules),
                exclude=exclude,
                size=args.size,
                seed=args.seed,
            )
            log.info(
                "replaying %d labelled connections through %s (%s)",
                len(scenario.connections),
                engine.name,
                ", ".join(p.name for p in paths),
            )
            workdir = folder / engine.name if args.keep else None
            verdicts.append(
                verify(
                    paths,
                    scenario,
                    engine,
                    workdir=workdir,
                    plugins=plugins,
                    before=args.before,
                    rule_matching=args.rule_matching,
                )
            )
    ok = all(v.ok for v in verdicts)
    if args.json:
        doc = {"schema": SCHEMA, "ok": ok, "skipped": skipped, "verdicts": [v.to_json() for v in verdicts]}
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_verdicts(verdicts))
    return 0 if ok else 1
