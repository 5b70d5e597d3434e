"""Argument types: every option's value is checked by argparse, before anything is fetched, read or written.

Each function takes the text of one command-line value and returns the value, or raises
:class:`argparse.ArgumentTypeError`, which the parser turns into one line and exit 2
(``tor-sets build: error: argument --timeout: expected a positive number of seconds, got '-1'``).

Exports :func:`duration`, :func:`period`, :func:`positive_seconds`, :func:`non_negative_seconds`, :func:`count`,
:func:`non_negative_count`, :func:`percent`, :func:`pid`, :func:`address`, :func:`network`, :func:`http_url`,
:func:`falco_version`, :func:`engine_name`, :func:`csv_of`, :func:`input_file`, :func:`input_file_or_stdin`,
:func:`plugin_library`
and :func:`folder`.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from tor_sets.cli.parser import invalid_choice
from tor_sets.engines.base import Plugin
from tor_sets.falco.model import profile_for
from tor_sets.relays import IPAddress, IPNetwork

__all__ = [
    "address",
    "count",
    "csv_of",
    "duration",
    "engine_name",
    "falco_version",
    "folder",
    "http_url",
    "input_file",
    "input_file_or_stdin",
    "network",
    "non_negative_count",
    "non_negative_seconds",
    "percent",
    "period",
    "pid",
    "plugin_library",
    "positive_seconds",
]

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: the longest duration or period accepted: ten years is "never" for relay data
_LONGEST = timedelta(days=3650)


def duration(text: str) -> timedelta:
    """``90m``, ``6h``, ``2d``, ``1w`` or plain seconds, at most ten years.

    >>> duration("6h"), duration("90")
    (datetime.timedelta(seconds=21600), datetime.timedelta(seconds=90))
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 6h, 2d)")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds > _LONGEST.total_seconds():
        raise argparse.ArgumentTypeError(f"{text!r} is longer than ten years")
    return timedelta(seconds=seconds)


def period(minimum: timedelta) -> Callable[[str], timedelta]:
    """A :func:`duration` of at least ``minimum``.

    >>> period(timedelta(minutes=1))("30m")
    datetime.timedelta(seconds=1800)
    """

    seconds = int(minimum.total_seconds())
    shown = f"{seconds // 60} min" if seconds % 60 == 0 and seconds else f"{seconds} s"

    def parse(text: str) -> timedelta:
        value = duration(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"the period must be at least {shown}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A number of seconds greater than 0 (not ``inf``, not ``nan``).

    >>> positive_seconds("0.5")
    0.5
    """
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def non_negative_seconds(text: str) -> float:
    """A number of seconds, 0 or more (not ``inf``, not ``nan``).

    >>> non_negative_seconds("0")
    0.0
    """
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, got {text!r}")
    return value


def _digits(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def count(text: str) -> int:
    """A whole number, 1 or more (ASCII digits only: ``²`` passes ``str.isdigit`` but is no number).

    >>> count("5000")
    5000
    """
    value = _digits(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def non_negative_count(text: str) -> int:
    """A whole number, 0 or more.

    >>> non_negative_count("0")
    0
    """
    return _digits(text)


def percent(text: str) -> float:
    """A percentage from 0 to 100, as a fraction.

    >>> percent("50")
    0.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage between 0 and 100, got {text!r}")
    return value / 100


def pid(text: str) -> int:
    """A process id: 1 or more (0 and negative numbers would make ``kill`` signal a whole process group).

    >>> pid("4242")
    4242
    """
    value = _digits(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a process id (1 or more), got {text!r}")
    return value


def address(text: str) -> IPAddress:
    """An IPv4 or IPv6 address.

    >>> address("198.51.100.77")
    IPv4Address('198.51.100.77')
    """
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def network(text: str) -> IPNetwork:
    """A network in CIDR notation (or one address), without host bits set: ``10.0.0.1/8`` is refused, since
    whoever typed it may have meant ``10.0.0.1/32`` or ``10.0.0.0/8``.

    >>> network("10.0.0.0/8"), network("2001:db8::1")
    (IPv4Network('10.0.0.0/8'), IPv6Network('2001:db8::1/128'))
    """
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a network: {text!r} (use e.g. 10.0.0.0/8 or 2001:db8::/32)") from None
    raise argparse.ArgumentTypeError(f"{text!r} has host bits set (did you mean {str(loose)!r}?)")


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host.

    >>> http_url("https://onionoo.torproject.org/details")
    'https://onionoo.torproject.org/details'
    """
    try:
        parts = urllib.parse.urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError:
        valid = False
    if not valid:
        from tor_sets.urls import redact_url

        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {redact_url(text)!r}")
    return text


def falco_version(text: str) -> str:
    """The oldest Falco the rules must load on: ``0.41``, ``0.37.1``, ``legacy`` (see
    :func:`tor_sets.falco.model.profile_for`).

    >>> falco_version("0.37")
    '0.37'
    """
    try:
        profile_for(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def engine_name(*extra: str) -> Callable[[str], str]:
    """The name of an engine of :data:`tor_sets.engines.ENGINES`, or one of ``extra`` (``auto``, ``all``).

    >>> engine_name("auto")("sysdig-modern")
    'sysdig-modern'
    """

    def parse(text: str) -> str:
        from tor_sets.engines import ENGINES

        if text not in extra and text not in ENGINES:
            raise argparse.ArgumentTypeError(invalid_choice(text, [*extra, *ENGINES]))
        return text

    return parse


def csv_of(choices: tuple[str, ...]) -> Callable[[str], frozenset[str]]:
    """A comma-separated, non-empty subset of ``choices``; a misspelt one gets a suggestion.

    >>> sorted(csv_of(("inbound", "outbound"))("outbound,inbound"))
    ['inbound', 'outbound']
    """

    def parse(text: str) -> frozenset[str]:
        values = [v.strip().lower() for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}")
        for value in values:
            if value not in choices:
                raise argparse.ArgumentTypeError(invalid_choice(value, choices))
        return frozenset(values)

    return parse


def input_file(text: str) -> Path:
    """A file named on the command line that exists and may be read (it is read later; nothing is opened here, so
    a FIFO does not block).

    Raises:
        argparse.ArgumentTypeError: missing, a directory, or not readable by this user (exit 2, like any bad
            value: decided from the command line before anything runs).
    """
    path = Path(text)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise argparse.ArgumentTypeError(f"cannot read {text}: it is a directory, not a file")
    if not os.access(path, os.R_OK, effective_ids=os.access in os.supports_effective_ids):
        raise argparse.ArgumentTypeError(f"cannot read {text}: {os.strerror(errno.EACCES)}")
    return path


def plugin_library(text: str) -> Plugin:
    """``NAME=LIBRARY`` (``--load-plugin``): a plugin to load, its library an :func:`input_file`.

    >>> plugin_library("container=/dev/null").name
    'container'
    """
    name, sep, library = text.partition("=")
    if not sep or not name or not library:
        raise argparse.ArgumentTypeError(f"expected NAME=LIBRARY, got {text!r}")
    return Plugin(name, input_file(library))


def input_file_or_stdin(text: str) -> str:
    """``-`` (stdin), or an :func:`input_file`, as text."""
    return text if text == "-" else str(input_file(text))


def folder(text: str) -> Path:
    """A folder named on the command line that exists.

    Raises:
        argparse.ArgumentTypeError: missing or not a folder.
    """
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no folder at {text}")
    return path
