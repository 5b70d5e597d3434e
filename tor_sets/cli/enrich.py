"""``tor-sets enrich``: add relay details to the Falco alerts of tor-sets rules.

Three ways to run it::

    tor-sets enrich [FILE|-] [-o OUT]                       a file or a pipe of Falco JSON alerts, line by line
    tor-sets enrich --listen 127.0.0.1:2801 [--forward URL]  an HTTP endpoint for Falco's http_output/falcosidekick
    tor-sets enrich --bench [--input SNAPSHOT]              lookups per second on a snapshot (JSON on stdout)

Relay data: ``--input FILE``, else the last download cached by ``tor-sets build``, else the bundled snapshot; never
the network. stdout carries only alerts (or the bench document); skipped lines and progress go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tor_sets.cli import types
from tor_sets.errors import TorSetsError, UsageError
from tor_sets.files import open_output
from tor_sets.onionoo import bundled_snapshot, cached_snapshot, default_cache_dir, read_snapshot
from tor_sets.relays import Snapshot
from tor_sets.runtime.enrich import (
    TOR_RULES,
    Enricher,
    EnrichServer,
    RelayIndex,
    ServerSettings,
    enrich_stream,
    measure_speed,
    parse_listen,
)
from tor_sets.urls import redact_url

__all__ = ["add_parser", "run"]

log = logging.getLogger("tor_sets")

#: version of the ``--bench`` document
SCHEMA = 1

#: the flags that set :class:`ServerSettings` fields, by field: the library's messages name the field
_FLAGS = {
    "allow_remote": "--allow-remote",
    "forward": "--forward",
    "forward_timeout": "--forward-timeout",
    "max_body": "--max-body",
    "max_connections": "--max-connections",
    "request_timeout": "--request-timeout",
}
#: a field's name standing as a word of its own (not inside a URL or another name)
_FIELD = re.compile(r"(?<![\w/.:@-])(" + "|".join(_FLAGS) + r")(?![\w/.:@-])")


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _checked(settings: ServerSettings) -> ServerSettings:
    """``settings`` once :meth:`ServerSettings.check` passed; its error names the flags where it named fields.

    >>> _FIELD.sub(lambda m: _FLAGS[m[1]], "forward must be an http:// URL, got 'ftp://h/forward'")
    "--forward must be an http:// URL, got 'ftp://h/forward'"
    """
    try:
        settings.check()
    except TorSetsError as exc:
        raise type(exc)(_FIELD.sub(lambda m: _FLAGS[m[1]], str(exc))) from exc
    return settings


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _size(text: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024 * 1024}
    number, unit = text.lower().rstrip("ib"), ""
    if number and number[-1] in "km":
        number, unit = number[:-1], number[-1]
    if not number.isascii() or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1048576, 512k, 4m)")
    return int(number) * units[unit]


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``enrich``."""
    parser = sub.add_parser(
        "enrich",
        help="add relay details to Falco alerts of tor-sets rules (file, pipe or HTTP)",
        description="Read Falco JSON alerts (json_output, http_output or falcosidekick's webhook), add a 'tor' "
        "object with the relays behind the address to alerts of tor-sets rules, pass every other line unchanged.",
    )
    parser.add_argument(
        "file",
        nargs="?",
        type=types.input_file_or_stdin,
        default="-",
        metavar="FILE",
        help="alerts, one JSON per line ('-': stdin)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="PATH",
        help="where enriched alerts go (default: stdout); with --listen the file is appended to",
    )
    data = parser.add_argument_group("relay data")
    data.add_argument(
        "--input", "-i", type=types.input_file, metavar="SNAPSHOT", help="a details document (JSON or .json.gz)"
    )
    data.add_argument(
        "--cache-dir", type=Path, default=None, metavar="DIR", help=f"download cache (default: {default_cache_dir()})"
    )
    what = parser.add_argument_group("enrichment")
    what.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="NAME",
        help="also enrich alerts of this rule (repeatable; the tor-sets rules always are)",
    )
    what.add_argument(
        "--canary",
        action="append",
        type=_address,
        default=[],
        metavar="ADDRESS",
        help="mark this self-test address as a canary in the 'tor' object (repeatable)",
    )
    what.add_argument(
        "--output-fields",
        action="store_true",
        help="also add flat tor.* keys to output_fields (kept by falcosidekick, which drops unknown top-level keys)",
    )
    http = parser.add_argument_group("HTTP endpoint")
    http.add_argument("--listen", type=_listen, metavar="HOST:PORT", help="serve HTTP on this address (port 0: any)")
    http.add_argument(
        "--forward",
        type=types.http_url,
        metavar="URL",
        help="POST every alert to this URL (e.g. falcosidekick); redirects are not followed, credentials in the URL "
        "are used but never shown",
    )
    http.add_argument("--allow-remote", action="store_true", help="allow --listen on a non-loopback address")
    http.add_argument(
        "--max-body", type=_size, default=1024 * 1024, metavar="SIZE", help="largest request body (default: 1m)"
    )
    http.add_argument(
        "--forward-timeout",
        type=types.positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="forward timeout (default: 5)",
    )
    http.add_argument(
        "--request-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="time a client has to send a whole request, head and body; slower ones are cut off (default: 10)",
    )
    http.add_argument(
        "--max-connections",
        type=_count,
        default=64,
        metavar="N",
        help="connections served at once; when all are taken, the one that has waited longest for its request "
        "is closed to make room (default: 64)",
    )
    parser.add_argument("--bench", action="store_true", help="measure lookups/s on the relay data; print JSON")
    parser.set_defaults(func=run)


def _snapshot(args: argparse.Namespace) -> Snapshot:
    if args.input is not None:
        return read_snapshot(args.input)
    cached = cached_snapshot(args.cache_dir or default_cache_dir())
    snapshot, origin = (cached, "cached download") if cached is not None else (bundled_snapshot(), "bundled snapshot")
    log.info("enrich: relay data from the %s of %s UTC", origin, f"{snapshot.relays_published:%Y-%m-%d %H:%M}")
    return snapshot


@contextlib.contextmanager
def _open_output(path: str, *, append: bool) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        return
    out = open_output(path, append=append)
    try:
        yield out
    finally:
        out.close()


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        src = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TorSetsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        yield src
    finally:
        src.close()


def run(args: argparse.Namespace) -> int:
    """Run ``tor-sets enrich``; return the exit code."""
    if args.forward is not None and args.listen is None:
        raise UsageError("--forward needs --listen")
    settings = _server_settings(args) if args.listen is not None else None  # checked before the data is read
    snapshot = _snapshot(args)
    if args.bench:
        result = measure_speed(snapshot)
        doc = {"schema": SCHEMA, "source": snapshot.source, **result.to_json()}
        print(json.dumps(doc, sort_keys=True))
        return 0
    index = RelayIndex.from_snapshot(snapshot)
    enricher = Enricher(index, rules=TOR_RULES | set(args.rule), canaries=args.canary, output_fields=args.output_fields)
    if settings is not None:
        return _serve(args, settings, enricher)
    return _enrich_file(args, enricher)


def _enrich_file(args: argparse.Namespace, enricher: Enricher) -> int:
    def report(number: int, reason: str) -> None:
        log.warning("enrich: line %d skipped: %s", number, reason)

    with _open_input(args.file) as src, _open_output(args.output, append=False) as dst:
        stats = enrich_stream(src, dst, enricher, on_malformed=report)
    where = ""
    if stats.malformed:
        shown = ", ".join(str(n) for n in stats.malformed_lines[:10])
        more = ", ..." if stats.malformed > 10 else ""
        where = f" (line{'s' if stats.malformed > 1 else ''} {shown}{more})"
    log.info(
        "enrich: %d lines: %d enriched, %d passed, %d malformed%s",
        stats.lines,
        stats.enriched,
        stats.passed,
        stats.malformed,
        where,
    )
    return 0


def _server_settings(args: argparse.Namespace) -> ServerSettings:
    host, port = args.listen
    return _checked(
        ServerSettings(
            host=host,
            port=port,
            forward=args.forward,
            forward_timeout=args.forward_timeout,
            max_body=args.max_body,
            allow_remote=args.allow_remote,
            max_connections=args.max_connections,
            request_timeout=args.request_timeout,
        )
    )


def _serve(args: argparse.Namespace, settings: ServerSettings, enricher: Enricher) -> int:
    with contextlib.ExitStack() as stack:
        write = None
        if args.output != "-":
            out = stack.enter_context(_open_output(args.output, append=True))

            def write(data: bytes) -> None:
                out.write(data)
                out.flush()

        server = EnrichServer(enricher, settings, write=write).start()
        stack.callback(server.stop)
        stop = threading.Event()
        stack.enter_context(_stop_on_signals(stop))
        target = f", forwarding to {redact_url(args.forward)}" if args.forward else ""
        log.info("enrich: listening on %s%s", server.url, target)
        while not stop.wait(0.5):
            pass
        log.info("enrich: stopping")
        counts = server.stats()
    log.info("enrich: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no alerts received")
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``stop.set()`` while inside (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
