"""``tor-sets publish``: push the rules file to an OCI registry as a falcoctl rulesfile artifact.

Every Falco node whose falcoctl follows the reference then installs the new rules on its own; see ``docs/fleet.md``.
stdout gets one YAML document (``ref``, ``digest``, ``tags``); the push time goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import yaml

from tor_sets import __version__
from tor_sets.errors import RuleError
from tor_sets.fleet import date_tag, default_annotations, publish, read_header

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)

DEFAULT_RULES = Path("tor_rules.yaml")  # where `tor-sets build` writes by default

EPILOG = """\
The tag defaults to "latest". When the rules file's header names the data's date (# relays_published: ...), the
artifact is also tagged with it (e.g. 2026-02-28T0100), so an older artifact stays reachable for a rollback; use
--no-date-tag to skip that. Plain HTTP is used for a loopback registry (127.0.0.0/8, ::1, localhost) and refused
for any other host. Credentials: TOR_SETS_REGISTRY_USERNAME and TOR_SETS_REGISTRY_PASSWORD, else the Docker
client's configuration ($DOCKER_CONFIG/config.json or ~/.docker/config.json).

example:
  tor-sets build --no-fallback -o tor_rules.yaml
  tor-sets publish oci://registry.example.com/security/tor-rules:latest --rules tor_rules.yaml
"""


def _annotation(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``publish``."""
    parser = subparsers.add_parser(
        "publish",
        help="push the rules file to an OCI registry for falcoctl",
        description="Push the rules file as a falcoctl rulesfile artifact to an OCI registry.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ref", metavar="oci://REGISTRY/REPO[:TAG]", help="where to push")
    parser.add_argument(
        "--rules", type=Path, default=DEFAULT_RULES, metavar="FILE", help=f"rules file (default: {DEFAULT_RULES})"
    )
    parser.add_argument(
        "--tag", dest="tags", action="append", default=[], metavar="TAG", help="another tag for the artifact (repeat)"
    )
    parser.add_argument("--no-date-tag", action="store_true", help="do not tag the artifact with the data's date")
    parser.add_argument(
        "--plain-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plain HTTP (loopback registries only); default: plain HTTP exactly for a loopback registry",
    )
    parser.add_argument(
        "--engine-version",
        metavar="X",
        help="required Falco engine version, integer or semver (default: the file's required_engine_version)",
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Publish, print ``ref``, ``digest`` and ``tags`` as YAML on stdout, and return 0."""
    rules: Path = args.rules
    try:
        text = rules.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RuleError(f"cannot read rules file {rules}: {exc.strerror or exc}", path=str(rules)) from exc
    header = read_header(text)
    annotations = default_annotations(header, filename=rules.name, tool_version=__version__)
    annotations.update(dict(args.annotations))
    tags: list[str] = list(args.tags)
    if header.relays_published is not None and not args.no_date_tag:
        tags.append(date_tag(header.relays_published))
    elif header.relays_published is None and not args.no_date_tag:
        log.info("no '# relays_published:' line in %s: no date tag", rules)
    started = time.monotonic()
    result = publish(
        args.ref,
        rules,
        engine_version=args.engine_version,
        annotations=annotations,
        extra_tags=tags,
        plain_http=args.plain_http,
    )
    log.info("pushed %s in %.2f s", result.ref, time.monotonic() - started)
    document = {"ref": result.ref, "digest": result.digest, "tags": list(result.tags)}
    print(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), end="")
    return 0
