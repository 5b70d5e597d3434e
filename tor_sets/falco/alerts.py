"""Falco's JSON alerts, in one home: reading them (from an engine's stdout, a file output, the enrich endpoint) and
writing them (what a Falco running given rules would have written, for sinks and tests).

Exports :class:`Alert`, :func:`parse_alert` (one JSON object → :class:`Alert`), :func:`parse_alerts` (Falco's
stdout → alerts; other lines skipped), :func:`parse_time` (Falco's ``time``), :func:`format_time` and
:func:`alert_json` (the document Falco writes for one event).

Falco's JSON alert (``json_output: true``)::

    {"hostname":"h","output":"00:44:29.904933216: Warning Tor | connection=...","output_fields":
    {"evt.time":1506127469904933216,"fd.name":"192.168.0.1:44434->192.168.0.3:80"},"priority":"Warning",
    "rule":"Tor","source":"syscall","tags":["network"],"time":"2017-09-23T00:44:29.904933216Z"}
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from tor_sets.errors import EngineError

__all__ = [
    "NA",
    "Alert",
    "alert_json",
    "format_time",
    "output_fields",
    "parse_alert",
    "parse_alerts",
    "parse_time",
]

#: how Falco (and sysdig) print a field without a value
NA = "<NA>"

_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?")
#: ``%fd.name``, ``%proc.aname[2]``, ``%(proc.cmdline)``
_OUTPUT_FIELD = re.compile(r"%\(?([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+(?:\[[^\]]*\])?)\)?")


@dataclass(frozen=True, slots=True)
class Alert:
    """One Falco alert.

    Attributes:
        rule: the rule's name.
        priority: lower case (``warning``, ``notice``, ...).
        ts_ns: the event's timestamp in ns since the epoch, from the alert's ``time``.
        output: the formatted output line.
        output_fields: every field of the output (and of ``append_output``), as text; ``"<NA>"`` for null.
        source: the event source (``syscall``).
        tags: the rule's tags.
        hostname: the host Falco ran on.
    """

    rule: str
    priority: str
    ts_ns: int
    output: str
    output_fields: Mapping[str, str] = field(default_factory=dict)
    source: str = "syscall"
    tags: tuple[str, ...] = ()
    hostname: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_fields", MappingProxyType(dict(self.output_fields)))

    def __hash__(self) -> int:
        return hash((self.rule, self.ts_ns, self.output))


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from Falco's ``time`` (RFC 3339, up to ns precision).

    >>> parse_time("2017-09-23T00:44:29.904933216Z")
    1506127469904933216
    >>> parse_time("2017-09-23T02:44:29.5+02:00")
    1506127469500000000

    Raises:
        ValueError: not such a time.
    """
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m[8] or "Z"
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * 1_000_000_000 + int((m[7] or "0").ljust(9, "0"))


def format_time(ts_ns: int) -> str:
    """Falco's ``time`` for a timestamp.

    >>> format_time(1506127469904933216)
    '2017-09-23T00:44:29.904933216Z'
    """
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def _text(value: object) -> str:
    """A JSON value as Falco prints it in an output line."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_alert(doc: Mapping[str, Any]) -> Alert:
    """One alert from its JSON object.

    Raises:
        ValueError: a required key is missing or malformed.
    """
    try:
        fields = doc.get("output_fields") or {}
        if not isinstance(fields, Mapping):
            raise ValueError("output_fields is not an object")
        return Alert(
            rule=str(doc["rule"]),
            priority=str(doc["priority"]).lower(),
            ts_ns=parse_time(str(doc["time"])),
            output=str(doc.get("output", "")),
            output_fields={str(k): _text(v) for k, v in fields.items()},
            source=str(doc.get("source", "syscall")),
            tags=tuple(str(t) for t in doc.get("tags") or ()),
            hostname=str(doc.get("hostname", "")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a Falco alert: {exc}") from exc


def parse_alerts(stdout: str, *, engine: str = "falco") -> tuple[Alert, ...]:
    """Parse the JSON alerts in Falco's stdout; other lines (banners, statistics, logs) are skipped.

    Raises:
        EngineError: a line that looks like an alert cannot be read.
    """
    alerts = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            alerts.append(parse_alert(doc))
        except ValueError as exc:
            raise EngineError(f"{engine}: unreadable alert: {line[:200]}", engine=engine) from exc
    return tuple(alerts)


def output_fields(output: str) -> list[str]:
    """The fields an output format names, in order, each once.

    >>> output_fields("Tor | connection=%fd.cip:%fd.cport->%fd.sip:%fd.sport user=%user.name again=%fd.cip")
    ['fd.cip', 'fd.cport', 'fd.sip', 'fd.sport', 'user.name']
    """
    return list(dict.fromkeys(_OUTPUT_FIELD.findall(output)))


def alert_json(
    *,
    rule: str,
    priority: str,
    output: str,
    values: Mapping[str, str],
    ts_ns: int,
    hostname: str,
    source: str = "syscall",
    tags: Sequence[str] = (),
    numeric: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The JSON document Falco writes for one event that ``rule`` matched.

    Args:
        rule, priority, output, source, tags: the rule's (``output`` with its ``%field`` references).
        values: the event's field values as text (``"<NA>"`` for none).
        ts_ns: the event's timestamp.
        hostname: Falco's host.
        numeric: fields Falco prints as JSON numbers.
    """
    fields: dict[str, Any] = {"evt.time": ts_ns}
    for name in output_fields(output):
        value = values.get(name, NA)
        if value == NA:
            fields[name] = None
        elif name in numeric and value.lstrip("-").isdigit():
            fields[name] = int(value)
        else:
            fields[name] = value

    def text(m: re.Match[str]) -> str:
        value = fields.get(m[1])
        return NA if value is None else str(value)

    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    clock = f"{datetime.fromtimestamp(seconds, UTC):%H:%M:%S}.{nanos:09d}"
    return {
        "hostname": hostname,
        "output": f"{clock}: {priority} {_OUTPUT_FIELD.sub(text, output)}",
        "output_fields": fields,
        "priority": priority,
        "rule": rule,
        "source": source,
        "tags": list(tags),
        "time": format_time(ts_ns),
    }
