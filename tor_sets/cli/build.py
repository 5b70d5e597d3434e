"""``tor-sets build``: fetch or read relay data, write the Falco rules file."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from tor_sets.build import BuildOptions, Built, build, write_rules
from tor_sets.cli import types
from tor_sets.cli.parser import invalid_choice
from tor_sets.cli.progress import download_bar
from tor_sets.compact import DEFAULT_EXPAND_BELOW
from tor_sets.deploy.fleet.kubernetes import MANIFEST_FORMATS, render_manifest
from tor_sets.errors import RuleError, UsageError
from tor_sets.falco.generate import DEFAULT_TAGS, RulesOptions
from tor_sets.falco.model import CURRENT_FALCO, PRIORITIES, Profile
from tor_sets.onionoo import (
    DEFAULT_DEADLINE,
    DEFAULT_URL,
    MAX_BYTES,
    MAX_RELAYS,
    FetchSettings,
    Obtained,
    default_cache_dir,
    obtain,
)
from tor_sets.relays import IPAddress, Role, Snapshot

log = logging.getLogger("tor_sets")

FORMATS = ("falco", *MANIFEST_FORMATS, "plugin-table", "falco-plugin", "2022-files")
#: writes a folder of files rather than one file
FOLDER_FORMAT = "2022-files"


def _priority(text: str) -> str:
    if text.upper() not in PRIORITIES:
        raise argparse.ArgumentTypeError(invalid_choice(text, [p.lower() for p in PRIORITIES]))
    return text.upper()


def _expand_below(text: str) -> int:
    value = types.count(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number, 2 or more, got {text!r}")
    return value


def add_source_arguments(parser: argparse.ArgumentParser, *, refresh: bool = False) -> None:
    """Where relay data comes from (shared with refresh and ``plugin table``).

    Args:
        parser: the subcommand's parser.
        refresh: for ``refresh``, which never falls back unless ``--allow-fallback`` is given: no
            ``--no-fallback``, and ``--offline`` says that it needs ``--allow-fallback``.
    """
    group = parser.add_argument_group("relay data")
    group.add_argument(
        "--input", "-i", type=types.input_file, metavar="FILE", help="read a details document (JSON or .json.gz)"
    )
    group.add_argument(
        "--url",
        type=types.http_url,
        default=DEFAULT_URL,
        help="Onionoo details endpoint, http or https (default: %(default)s)",
    )
    if refresh:
        group.add_argument(
            "--offline",
            action="store_true",
            help="do not fetch: deploy the cached download, else the bundled snapshot (needs --allow-fallback)",
        )
    else:
        group.add_argument(
            "--offline",
            action="store_true",
            help="do not fetch: use the cached download, else the bundled snapshot, with a warning",
        )
        group.add_argument(
            "--no-fallback",
            action="store_true",
            help="fail (exit 4) when the live directory cannot be fetched, instead of falling back to the cached "
            "download or the bundled snapshot",
        )
    group.add_argument(
        "--max-age",
        type=types.duration,
        metavar="AGE",
        help="fail (exit 7) when the relay data is older than AGE (e.g. 6h, 2d)",
    )
    group.add_argument(
        "--cache-dir", type=Path, default=None, metavar="DIR", help=f"download cache (default: {default_cache_dir()})"
    )
    group.add_argument(
        "--timeout",
        type=types.positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="read timeout: the longest wait for data (default: 60)",
    )
    group.add_argument(
        "--deadline",
        type=types.positive_seconds,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help=f"give up a fetch after this long in all, retries included (default: {DEFAULT_DEADLINE:g})",
    )
    group.add_argument(
        "--max-bytes",
        type=types.count,
        default=MAX_BYTES,
        metavar="N",
        help=f"cap on the document size after every decompression layer, files included (default: {MAX_BYTES})",
    )
    group.add_argument(
        "--max-relays",
        type=types.count,
        default=MAX_RELAYS,
        metavar="N",
        help=f"refuse a document listing more relays, fetched or read (default: {MAX_RELAYS}; the network has ~10,000)",
    )


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """What the relay sets hold: families, exclusions, authorities, BadExits, canaries (``plugin table`` too)."""
    group = parser.add_argument_group("relay sets")
    group.add_argument(
        "--families",
        type=types.csv_of(("ipv4", "ipv6")),
        default=frozenset({"ipv4", "ipv6"}),
        help="address families (default: ipv4,ipv6)",
    )
    group.add_argument(
        "--exclude",
        action="append",
        type=types.network,
        default=[],
        metavar="CIDR",
        help="remove your own range from every set (repeatable; no host bits: 10.0.0.0/8, not 10.0.0.1/8)",
    )
    group.add_argument("--no-authorities", action="store_true", help="do not count directory authorities as entry")
    group.add_argument("--keep-bad-exits", action="store_true", help="keep BadExit relays in the exit set")
    group.add_argument(
        "--canary",
        action="append",
        type=types.address,
        default=[],
        metavar="ADDRESS",
        help="add a documentation-range address to entry and exit (end-to-end self-tests)",
    )


def add_rules_arguments(parser: argparse.ArgumentParser) -> None:
    """What the rules contain, the relay sets' options included (shared with refresh)."""
    add_set_arguments(parser)
    group = parser.add_argument_group("rules")
    group.add_argument(
        "--rules",
        type=types.csv_of(("inbound", "outbound")),
        default=frozenset({"inbound", "outbound"}),
        help="rules to write (default: inbound,outbound)",
    )
    group.add_argument(
        "--roles",
        type=types.csv_of(("entry", "exit", "relay")),
        default=frozenset({"entry", "exit"}),
        help="roles to write lists for; 'relay' makes the outbound rule watch every relay",
    )
    group.add_argument(
        "--falco-version",
        type=types.falco_version,
        default=CURRENT_FALCO,
        metavar="VERSION",
        help=f"oldest Falco the rules must load on (default: {CURRENT_FALCO}); 0.31 or 'legacy' selects the legacy "
        "profile",
    )
    group.add_argument("--priority", type=_priority, default="WARNING", help="rule priority (default: warning)")
    group.add_argument("--tags", default=",".join(DEFAULT_TAGS), help="comma-separated rule tags")
    group.add_argument(
        "--expand-below",
        type=_expand_below,
        default=DEFAULT_EXPAND_BELOW,
        metavar="N",
        help=f"write networks of fewer than N addresses as addresses (default: {DEFAULT_EXPAND_BELOW})",
    )
    group.add_argument(
        "--list-names",
        choices=("tor-sets", "2022"),
        default="tor-sets",
        help="'2022' writes the 2022 tool's list names (tor_ipv4_entry_nodes ...)",
    )
    group.add_argument("--allow-wide", action="store_true", help="allow networks wider than /16 (IPv4) or /32 (IPv6)")


def _canaries(args: argparse.Namespace) -> tuple[IPAddress, ...]:
    canaries = tuple(args.canary)
    for canary in canaries:
        if not any(
            canary in ipaddress.ip_network(n)
            for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
            if ipaddress.ip_network(n).version == canary.version
        ):
            raise UsageError(f"canary {canary} is not a documentation address (RFC 5737 / RFC 3849)")
    return canaries


def set_options(args: argparse.Namespace) -> BuildOptions:
    """The BuildOptions of :func:`add_set_arguments` (the rules themselves as by default, in those families)."""
    return BuildOptions(
        rules=RulesOptions(families=frozenset(int(f[-1]) for f in args.families)),
        exclude=tuple(args.exclude),
        include_authorities=not args.no_authorities,
        include_bad_exits=args.keep_bad_exits,
        canaries=_canaries(args),
    )


def build_options(args: argparse.Namespace) -> BuildOptions:
    """The BuildOptions an argument namespace of :func:`add_rules_arguments` asks for."""
    sets = set_options(args)
    try:
        rules = RulesOptions(
            rules=frozenset(args.rules),
            roles=frozenset(Role(r) for r in args.roles),
            families=sets.rules.families,
            falco_version=args.falco_version,
            priority=args.priority,
            tags=tuple(t.strip() for t in args.tags.split(",") if t.strip()),
            expand_below=args.expand_below,
            list_names=args.list_names,
            min_prefix_v4=0 if args.allow_wide else 16,
            min_prefix_v6=0 if args.allow_wide else 32,
        )
        rules.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return replace(sets, rules=rules)


def obtain_from_args(args: argparse.Namespace) -> Obtained:
    """Get relay data as the source arguments say, logging the fallback warning."""
    settings = FetchSettings(
        url=args.url,
        read_timeout=args.timeout,
        max_bytes=args.max_bytes,
        cache_dir=args.cache_dir or default_cache_dir(),
        deadline=args.deadline,
        max_relays=args.max_relays,
        progress=download_bar(),
    )
    obtained = obtain(
        input_path=args.input,
        settings=settings,
        offline=args.offline,
        fallback=not args.no_fallback,
        max_age=args.max_age,
    )
    if obtained.warning:
        log.warning("WARNING: %s", obtained.warning)
    summary = obtained.snapshot.dropped_summary()
    if summary:
        log.warning("%s", summary)
    return obtained


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "build",
        help="write Falco rules from the Tor relay directory",
        description="Fetch (or read) the Tor relay directory and write Falco rules for it.",
    )
    add_source_arguments(parser)
    add_rules_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="where to write (default: tor_rules.yaml; '-' for stdout; a device or FIFO is written through; "
        "--format 2022-files: a folder, default tor-2022)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="falco",
        help="falco rules (default), a Kubernetes ConfigMap, Helm values, the plugin's table, rules for the plugin, "
        "or the 2022 tool's four files from the same relays (a folder, for comparison with tor-sets verify --rules)",
    )
    check = parser.add_argument_group("validation by a real engine, before anything is written")
    check.add_argument(
        "--validate",
        nargs="?",
        const="auto",
        type=types.engine_name("auto"),
        metavar="ENGINE",
        help="have a real engine load the rules first (Falco: falco -V) and write nothing when it refuses them "
        "(exit 6); ENGINE: auto (the best installed for the profile: real Falco first), falco-local, falco, "
        "sysdig-modern, ...",
    )
    check.add_argument(
        "--load-plugin",
        action="append",
        type=types.plugin_library,
        default=[],
        metavar="NAME=LIBRARY",
        help="with --validate: load this plugin, e.g. container=/usr/share/falco/plugins/libcontainer.so for a "
        "profile before Falco 0.41 on a later Falco, or torsets=libtorsets.so for --format falco-plugin",
    )
    k8s = parser.add_argument_group("configmap / helm-values")
    k8s.add_argument("--rules-filename", default="tor_rules.yaml", help="key of the rules file (default: %(default)s)")
    k8s.add_argument("--configmap-name", default="tor-sets-rules", help="ConfigMap name (default: %(default)s)")
    k8s.add_argument("--namespace", default="falco", help="ConfigMap namespace (default: %(default)s)")
    parser.set_defaults(func=run)


def render_format(built: Built, fmt: str, args: argparse.Namespace, snapshot: Snapshot | None = None) -> str | bytes:
    """The output of ``--format`` for a build."""
    if fmt == "falco":
        return built.text
    if fmt in MANIFEST_FORMATS:
        return render_manifest(
            fmt, built.text, filename=args.rules_filename, name=args.configmap_name, namespace=args.namespace
        )
    from tor_sets import plugin

    if fmt == "plugin-table":
        return plugin.table_bytes(built, snapshot)
    return plugin.plugin_rules_text(built)


def _validate(built: Built, args: argparse.Namespace, snapshot: Snapshot, profile: Profile) -> None:
    """``--validate``: a real engine loads the rules this build writes (the ones embedded in a ConfigMap too)."""
    from tor_sets.engines import FalcoEngine, Plugin
    from tor_sets.plugin import engine_plugin
    from tor_sets.verify import pick_validator, validate_text

    plugins: list[Plugin] = args.load_plugin
    text = render_format(built, "falco-plugin", args, snapshot) if args.format == "falco-plugin" else built.text
    assert isinstance(text, str)
    if any(p.name == "container" for p in plugins):
        profile = replace(profile, container_fields=False)  # the plugin brings the fields: real Falco can judge
    engine = pick_validator(None if args.validate == "auto" else args.validate, profile=profile, required=True)
    assert engine is not None
    with tempfile.TemporaryDirectory(prefix="tor-sets-validate-") as tmp:
        loads = []
        for given in plugins:
            if given.name == "torsets":  # the plugin needs a table to start: this build's, copied along by the engine
                table = Path(tmp) / "tor.table"
                table.write_bytes(render_format(built, "plugin-table", args, snapshot))  # type: ignore[arg-type]
                loads.append(engine_plugin(given.library, table))
            else:
                loads.append(given)
        try:
            verdict = validate_text(text, engine, plugins=loads)
        except RuleError as exc:
            if profile.container_fields and isinstance(engine, FalcoEngine):
                raise RuleError(
                    f"{exc} (the {profile.falco_version} profile names container fields, which Falco 0.41 and "
                    "later take only from the container plugin: add --load-plugin container=LIBRARY)"
                ) from exc
            raise
    warnings = f", {len(verdict.warnings)} warning(s): {'; '.join(verdict.warnings)}" if verdict.warnings else ""
    log.info("validated by %s %s: Ok%s", engine.name, engine.version(), warnings)


def _write_2022_files(built: Built, folder: Path, relays: int) -> int:
    """``--format 2022-files``: the 2022 tool's four files in ``folder``, each written atomically."""
    from tor_sets.falco import render_2022

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--format 2022-files writes a folder, and {folder} is not one")
    folder.mkdir(parents=True, exist_ok=True)
    files = render_2022(built.sets)
    for name, text in sorted(files.items()):
        changed = write_rules(folder / name, text, stream=False)
        log.info("%s %s: %d bytes", "wrote" if changed else "unchanged", folder / name, len(text.encode()))
    log.info("the 2022 tool's files from the same %d relays, for comparison only", relays)
    return 0


def run(args: argparse.Namespace) -> int:
    options = build_options(args)
    if args.load_plugin and not args.validate:
        raise UsageError("--load-plugin only goes with --validate")
    if args.format == FOLDER_FORMAT:
        if args.output == "-":
            raise UsageError("--format 2022-files writes a folder of four files, not stdout")
        if args.validate:
            raise UsageError(
                "--validate checks this project's rules; verify the 2022 files with tor-sets verify --rules"
            )
    args.output = args.output or ("tor-2022" if args.format == FOLDER_FORMAT else "tor_rules.yaml")
    if args.validate and args.format == "plugin-table":
        raise UsageError("--validate checks rules; --format plugin-table writes the plugin's table")
    obtained = obtain_from_args(args)
    built = build(obtained.snapshot, options)
    if args.format == FOLDER_FORMAT:
        return _write_2022_files(built, Path(args.output), len(obtained.snapshot.relays))
    output = render_format(built, args.format, args, obtained.snapshot)
    if args.validate:
        _validate(built, args, obtained.snapshot, options.rules.profile)
    if args.output == "-":
        if isinstance(output, bytes):
            sys.stdout.buffer.write(output)
        else:
            sys.stdout.write(output)
        changed = True
    else:
        changed = write_rules(Path(args.output), output)
    snapshot = obtained.snapshot
    data = output if isinstance(output, bytes) else output.encode()
    held, addresses = _what_the_file_holds(built, args.format, data)
    log.info(
        "%s %s: %d bytes, %s from %d relays published %s UTC (%s)",
        "wrote" if changed else "unchanged",
        args.output,
        len(data),
        held,
        len(snapshot.relays),
        f"{snapshot.relays_published:%Y-%m-%d %H:%M}",
        obtained.origin,
    )
    if addresses:
        log.info("%s", addresses)
    return 0


def _what_the_file_holds(built: Built, fmt: str, data: bytes) -> tuple[str, str]:
    """What the summary line says the written file holds, and the line of its address counts (or "").

    Only what the file holds is counted: the lists of the rules (their roles and families), nothing for plugin
    rules (the addresses are in the plugin's table), the table's own records for a table.
    """
    if fmt == "falco-plugin":
        return f"{len(built.rules_file.rules())} rules on the plugin's tor.* fields (no lists: see its table)", ""
    if fmt == "plugin-table":
        from tor_sets.plugin.table import ENTRY, EXIT, RELAY, decode

        table = decode(data)
        parts = []
        for name, bit in (("entry", ENTRY), ("exit", EXIT), ("relay", RELAY)):
            counts = {v: sum(1 for e in table.entries if e.roles & bit and e.address.version == v) for v in (4, 6)}
            parts.append(_role_counts(name, {v: n for v, n in counts.items() if n}))
        return f"a table of {len(table.entries)} addresses", ", ".join(p for p in parts if p)
    by_role: dict[str, dict[int, int]] = {}
    for key, number in built.watched.items():  # "entry_ipv4": 4177
        role, family = key.split("_ipv")
        by_role.setdefault(role, {})[int(family)] = number
    lines = ", ".join(_role_counts(role, counts) for role, counts in by_role.items())
    return f"{built.list_items()} list items ({built.networks()} networks)", lines


def _role_counts(role: str, counts: dict[int, int]) -> str:
    """``entry: 4177 IPv4 + 1921 IPv6`` (only the families given; "" for none).

    >>> _role_counts("exit", {4: 1217})
    'exit: 1217 IPv4'
    """
    if not counts:
        return ""
    return f"{role}: " + " + ".join(f"{n} IPv{v}" for v, n in sorted(counts.items()))
