"""``tor-sets publish``: push a falcoctl artifact to an OCI registry: the rules file, the plugin, or its table.

Every Falco node whose falcoctl installs or follows the reference then gets it on its own; see ``docs/fleet.md``.
stdout gets one YAML document (``ref``, ``digest``, ``type``, ``name``, ``version``, ``tags``), or with
``--index-entry -`` the falcoctl index entry instead; the push time goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from tor_sets import __version__
from tor_sets.cli import types
from tor_sets.deploy.fleet import (
    RULES_MAJOR,
    PublishResult,
    check_version,
    data_version,
    date_tag,
    default_annotations,
    index_entry,
    merge_index,
    parse_index,
    parse_ref,
    publish_asset,
    publish_plugin,
    publish_rules,
)
from tor_sets.errors import TorSetsError, UsageError
from tor_sets.falco.header import read_header
from tor_sets.files import atomic_write

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)

DEFAULT_RULES = Path("tor_rules.yaml")  # where `tor-sets build` writes by default

EPILOG = """\
What is pushed (exactly one; the rules file by default):
  --rules FILE     a falcoctl "rulesfile" artifact: the list-based rules (tor-sets build) or the plugin rules
                   (tor-sets build --format falco-plugin), which depend on the plugin they name
  --plugin LIB     a falcoctl "plugin" artifact: libtorsets.so (tor-sets plugin build), one image per platform
                   (repeat for more platforms); name, version and plugin API come from the library itself
  --table FILE     a falcoctl "asset" artifact: the plugin's relay table (tor-sets plugin table)

Versions and tags: a rules file or table gets the version MAJOR.YYYYMMDD.HHMM of its relay data (MAJOR is 1 for
rules, --major to change; a table's MAJOR is its format version), a plugin its own version. The artifact is
tagged with the version, the data's date (e.g. 2026-02-28T0100, --no-date-tag to skip), the reference's tag
("latest" by default), --tag, and the floating tags MAJOR and MAJOR.MINOR that `falcoctl artifact follow REPO:1`
follows (--no-floating-tags to skip). --index-entry FILE adds the artifact to a falcoctl index.yaml ("-": print
the entry instead of the result), for `falcoctl index add` and `falcoctl artifact install NAME`.

Plain HTTP is used for a loopback registry (127.0.0.0/8, ::1, localhost) and refused for any other host.
Credentials: TOR_SETS_REGISTRY_USERNAME and TOR_SETS_REGISTRY_PASSWORD, else the Docker client's configuration
($DOCKER_CONFIG/config.json or ~/.docker/config.json).

examples:
  tor-sets build --no-fallback -o tor_rules.yaml
  tor-sets publish oci://registry.example.com/security/tor-rules:latest --rules tor_rules.yaml
  tor-sets publish oci://registry.example.com/security/torsets --plugin libtorsets.so --index-entry index.yaml
  tor-sets publish oci://registry.example.com/security/tor-table --table tor.table --index-entry index.yaml
"""


def _annotation(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _major(text: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text.startswith("0")):
        raise argparse.ArgumentTypeError(f"expected a number without leading zeros, got {text!r}")
    return int(text)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``publish``."""
    parser = subparsers.add_parser(
        "publish",
        help="push the rules, the plugin or its table to an OCI registry for falcoctl",
        description="Push a falcoctl artifact to an OCI registry: a rules file, the plugin library, or its table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ref", metavar="oci://REGISTRY/REPO[:TAG]", help="where to push")
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--rules",
        type=types.input_file,
        default=DEFAULT_RULES,
        metavar="FILE",
        help=f"rules file (default: {DEFAULT_RULES})",
    )
    what.add_argument(
        "--plugin",
        type=types.input_file,
        action="append",
        metavar="LIB",
        help="plugin library, one per platform (repeat)",
    )
    what.add_argument("--table", type=types.input_file, metavar="FILE", help="the plugin's relay table")
    parser.add_argument(
        "--tag", dest="tags", action="append", default=[], metavar="TAG", help="another tag for the artifact (repeat)"
    )
    parser.add_argument("--no-date-tag", action="store_true", help="do not tag the artifact with the data's date")
    parser.add_argument("--no-floating-tags", action="store_true", help="do not set the tags MAJOR and MAJOR.MINOR")
    parser.add_argument("--version", metavar="X.Y.Z", help="the artifact's version (default: from the data)")
    parser.add_argument(
        "--major",
        type=_major,
        default=None,
        metavar="N",
        help=f"major of a rules file's version (default: {RULES_MAJOR})",
    )
    parser.add_argument(
        "--name", metavar="NAME", help="the artifact's name (default: the repository's last path component)"
    )
    parser.add_argument(
        "--plain-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plain HTTP (loopback registries only); default: plain HTTP exactly for a loopback registry",
    )
    parser.add_argument(
        "--engine-version",
        metavar="X",
        help="required Falco engine version, integer or semver (default: the rules file's required_engine_version)",
    )
    parser.add_argument(
        "--annotation",
        dest="annotations",
        action="append",
        default=[],
        type=_annotation,
        metavar="KEY=VALUE",
        help="manifest annotation, added to or replacing the defaults (repeat)",
    )
    parser.add_argument(
        "--index-entry",
        metavar="FILE",
        help="add the artifact's entry to this falcoctl index.yaml (created if missing); '-' prints the entry",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Publish, print the result (or the index entry) as YAML on stdout, and return 0."""
    _check_options(args)
    parse_ref(args.ref)  # a bad reference stops before any file is read
    index_path = Path(args.index_entry) if args.index_entry not in (None, "-") else None
    existing_index = _read_index(index_path) if index_path is not None else None  # a bad index stops before the push
    started = time.monotonic()
    if args.plugin:
        result = publish_plugin(
            args.ref,
            args.plugin,
            annotations=dict(args.annotations),
            extra_tags=args.tags,
            floating=not args.no_floating_tags,
            plain_http=args.plain_http,
        )
    elif args.table is not None:
        result = _publish_table(args)
    else:
        result = _publish_rules(args)
    log.info("pushed %s %s as %s in %.2f s", result.kind, result.ref, result.digest, time.monotonic() - started)
    if args.index_entry == "-":
        sys.stdout.write(merge_index(None, index_entry(result)))
        return 0
    if index_path is not None:
        _add_index_entry(index_path, existing_index, result)
    document = {
        "ref": result.ref,
        "digest": result.digest,
        "type": result.kind,
        "name": result.name,
        "version": result.version,
        "tags": list(result.tags),
    }
    print(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), end="")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    kind = "plugin" if args.plugin else "table" if args.table is not None else "rules"
    refused = {
        "plugin": ("--version", "--major", "--name", "--engine-version", "--no-date-tag"),
        "table": ("--major", "--engine-version"),
        "rules": (),
    }[kind]
    given = {
        "--version": args.version is not None,
        "--major": args.major is not None,
        "--name": args.name is not None,
        "--engine-version": args.engine_version is not None,
        "--no-date-tag": args.no_date_tag,
    }
    for option in refused:
        if given[option]:
            raise UsageError(f"{option} does not apply to --{kind}")
    if args.version is not None:
        check_version(args.version)
        if args.major is not None:
            raise UsageError("--major and --version contradict each other; --version names the whole version")


def _publish_rules(args: argparse.Namespace) -> PublishResult:
    rules: Path = args.rules
    try:
        text = rules.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:  # the default, tor_rules.yaml, is not checked by argparse: a usage error all the same
        raise UsageError(f"cannot read rules file {rules}: {exc.strerror or exc} (name one with --rules)") from exc
    header = read_header(text)
    annotations = default_annotations(header, filename=rules.name, tool_version=__version__)
    annotations.update(dict(args.annotations))
    published = header.relays_published
    version = args.version
    if version is None:
        if published is None:
            raise UsageError(
                f"no '# relays_published:' line in {rules} to make the artifact's version from: pass --version X.Y.Z"
            )
        version = data_version(published, RULES_MAJOR if args.major is None else args.major)
    tags: list[str] = list(args.tags)
    if published is not None and not args.no_date_tag:
        tags.insert(0, date_tag(published))
    return publish_rules(
        args.ref,
        rules,
        version=version,
        engine_version=args.engine_version,
        annotations=annotations,
        name=args.name,
        extra_tags=tags,
        floating=not args.no_floating_tags,
        plain_http=args.plain_http,
    )


def _publish_table(args: argparse.Namespace) -> PublishResult:
    from datetime import UTC, datetime

    from tor_sets.plugin.table import VERSION, decode

    path: Path = args.table
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TorSetsError(f"cannot read table {path}: {exc.strerror or exc}") from exc
    try:
        table = decode(data)  # what the plugin would refuse is never published
    except TorSetsError as exc:
        raise TorSetsError(f"table {path} is not one the plugin loads: {exc}") from exc
    published = datetime.fromtimestamp(table.published, UTC) if table.published else None
    version = args.version
    if version is None:
        if published is None:
            raise UsageError(f"table {path} names no publication time to make the version from: pass --version X.Y.Z")
        version = data_version(published, VERSION)
    annotations = {"tor-sets.version": __version__}
    if published is not None:
        stamp = published.strftime("%Y-%m-%dT%H:%M:%SZ")
        annotations |= {"org.opencontainers.image.created": stamp, "tor-sets.relays_published": stamp}
    annotations.update(dict(args.annotations))
    tags: list[str] = list(args.tags)
    if published is not None and not args.no_date_tag:
        tags.insert(0, date_tag(published))
    return publish_asset(
        args.ref,
        path,
        version=version,
        annotations=annotations,
        name=args.name,
        extra_tags=tags,
        floating=not args.no_floating_tags,
        plain_http=args.plain_http,
    )


def _read_index(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else None
    except OSError as exc:
        raise UsageError(f"cannot read index {path}: {exc.strerror or exc}") from exc
    try:
        parse_index(text)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    return text


def _add_index_entry(path: Path, existing: str | None, result: PublishResult) -> None:
    entry = index_entry(result)
    try:
        atomic_write(path, merge_index(existing, entry).encode())
    except OSError as exc:
        raise TorSetsError(f"cannot write index {path}: {exc.strerror or exc}") from exc
    log.info("index %s: entry %s (%s) for %s/%s", path, entry.name, entry.type, entry.registry, entry.repository)
