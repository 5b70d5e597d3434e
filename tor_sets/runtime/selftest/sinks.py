"""Where the self-test finds Falco's alerts, and how it knows one is the alert of a connection it made.

Exports the sinks (:class:`Sink`, :class:`FileSink`, :class:`HttpSink`, :func:`open_sink`), the matching
(:data:`CASE_RULES`, :class:`AlertWanted`, :func:`alerts_wanted`, :func:`alert_matches`) and the waiting
(:func:`wait_for_alerts`, :class:`CaseResult`).

:func:`wait_for_alerts` reads the sink — a file Falco appends JSON alerts to (:class:`FileSink`), or the
``tor-sets enrich --listen`` endpoint's ``GET /alerts`` (:class:`HttpSink`) — until an alert of the right rule with
the observed addresses and ports arrives for every connection, or the timeout passes. Alerts stay plain JSON
objects here (not :class:`tor_sets.falco.alerts.Alert`): what the enrich endpoint adds (``tor``, ``tor.*`` output
fields) must reach the caller.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

from tor_sets.errors import SanityError, TorSetsError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RELAY_RULE, OUTBOUND_RULE
from tor_sets.relays import IPAddress
from tor_sets.runtime.enrich.index import alert_addresses
from tor_sets.runtime.selftest.lab import Observed

__all__ = [
    "CASE_RULES",
    "AlertWanted",
    "CaseResult",
    "FileSink",
    "HttpSink",
    "Sink",
    "alert_matches",
    "alerts_wanted",
    "open_sink",
    "wait_for_alerts",
]

#: the rules each case must fire
CASE_RULES: dict[str, frozenset[str]] = {
    "outbound": frozenset({OUTBOUND_RULE, OUTBOUND_RELAY_RULE}),
    "inbound": frozenset({INBOUND_RULE}),
}


@dataclass(frozen=True, slots=True)
class AlertWanted:
    """The alert one observed connection must cause.

    Attributes:
        case: the case.
        rules: names of the rules that may report it.
        client, client_port, server, server_port: the tuple the alert must show.
        ts_ns: when the syscall the rule watches happened (connect for outbound, accept for inbound).
    """

    case: str
    rules: frozenset[str]
    client: IPAddress
    client_port: int
    server: IPAddress
    server_port: int
    ts_ns: int


def alerts_wanted(observed: Iterable[Observed]) -> tuple[AlertWanted, ...]:
    """The alert each observed connection must cause."""
    return tuple(
        AlertWanted(
            case=o.case,
            rules=CASE_RULES.get(o.case, frozenset()),
            client=o.client,
            client_port=o.client_port,
            server=o.server,
            server_port=o.server_port,
            ts_ns=o.connect_ts_ns if o.case.endswith("outbound") else o.accept_ts_ns,
        )
        for o in observed
    )


_NAME_PORTS = re.compile(r":(\d+)->.*:(\d+)$")


def _port(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def alert_matches(expected: AlertWanted, alert: Mapping[str, Any]) -> bool:
    """Whether ``alert`` (a Falco JSON alert) reports the connection ``expected`` describes.

    The rule must be one of ``expected.rules`` and ``fd.sip``/``fd.cip`` must be the server and client. Ports are
    compared from ``fd.sport``/``fd.cport``, else ``fd.lport``/``fd.rport`` (as a pair), else ``fd.name``, when
    the alert has them.
    """
    if alert.get("rule") not in expected.rules:
        return False
    addresses = alert_addresses(alert)
    if addresses.get("fd.sip") != str(expected.server) or addresses.get("fd.cip") != str(expected.client):
        return False
    fields = alert.get("output_fields")
    fields = fields if isinstance(fields, Mapping) else {}
    wanted = (expected.client_port, expected.server_port)
    sport, cport = _port(fields.get("fd.sport")), _port(fields.get("fd.cport"))
    if sport is not None and cport is not None:
        return (cport, sport) == wanted
    lport, rport = _port(fields.get("fd.lport")), _port(fields.get("fd.rport"))
    if lport is not None and rport is not None:
        return sorted((lport, rport)) == sorted(wanted)
    name = fields.get("fd.name")
    if isinstance(name, str):
        m = _NAME_PORTS.search(name)
        if m:
            return (int(m[1]), int(m[2])) == wanted
    return True


class Sink(Protocol):
    """Where Falco's alerts arrive."""

    def mark(self) -> None:
        """Remember where the sink ends now; :meth:`poll` returns only what arrives later."""

    def poll(self) -> list[dict[str, Any]]:
        """The alerts that arrived since the mark or the last poll."""

    def deliver(self, lines: Sequence[bytes]) -> None:
        """Hand alert lines to the sink as Falco would (used by :func:`simulate_alerts`)."""

    def describe(self) -> str:
        """The sink for reports."""


def _alerts_in(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    alerts = []
    for line in lines:
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict):
            alerts.append(doc)
    return alerts


class FileSink:
    """A file Falco appends JSON alerts to (``file_output`` with ``json_output: true``).

    Reading starts at the end the file had at :meth:`mark`; a file that is replaced (another inode) or truncated
    is read again from its start; a line still being written is kept until its newline arrives.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""

    def describe(self) -> str:
        """``file:PATH``."""
        return f"file:{self.path}"

    def mark(self) -> None:
        """Remember the file's current end (nothing yet if it does not exist)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._offset, self._inode = 0, None
        except OSError as exc:
            raise TorSetsError(f"cannot read the sink {self.path}: {exc.strerror or exc}") from exc
        else:
            self._offset, self._inode = st.st_size, st.st_ino
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        """New complete lines since the last call, as alerts (lines that are no JSON object are skipped)."""
        try:
            with self.path.open("rb") as src:
                st = os.fstat(src.fileno())
                if self._inode is not None and (st.st_ino != self._inode or st.st_size < self._offset):
                    self._offset, self._partial = 0, b""
                self._inode = st.st_ino
                src.seek(self._offset)
                data = src.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TorSetsError(f"cannot read the sink {self.path}: {exc.strerror or exc}") from exc
        self._offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        return _alerts_in(complete.split(b"\n")) if complete else []

    def deliver(self, lines: Sequence[bytes]) -> None:
        """Append lines to the file (one ``write`` each, as Falco's file output does)."""
        try:
            with self.path.open("ab") as out:
                for line in lines:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    out.flush()
        except OSError as exc:
            raise TorSetsError(f"cannot write the sink {self.path}: {exc.strerror or exc}") from exc


class HttpSink:
    """A ``tor-sets enrich --listen`` endpoint on loopback: alerts are read from its ``GET /alerts``.

    Args:
        url: ``http://127.0.0.1:PORT`` (or ``[::1]`` / ``localhost``); nothing else is contacted.
        timeout: seconds per request.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "http" or not parts.port:
            raise SanityError(f"sink URL must be http://HOST:PORT on loopback, got {url!r}")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SanityError(f"sink URL must be on loopback (127.0.0.1, ::1, localhost), got {host!r}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self._after = 0
        self._session = requests.Session()

    def describe(self) -> str:
        """The endpoint's URL."""
        return self.url

    def _get(self, after: int) -> dict[str, Any]:
        try:
            response = self._session.get(f"{self.url}/alerts", params={"after": after}, timeout=self.timeout)
            response.raise_for_status()
            doc = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise TorSetsError(f"cannot read alerts from {self.url}/alerts: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("next"), int) or not isinstance(doc.get("alerts"), list):
            raise TorSetsError(f"{self.url}/alerts did not answer like tor-sets enrich")
        return doc

    def mark(self) -> None:
        """Remember the number of the endpoint's newest alert."""
        self._after = int(self._get(1 << 62)["next"])

    def poll(self) -> list[dict[str, Any]]:
        """Alerts the endpoint received since the last call."""
        doc = self._get(self._after)
        self._after = int(doc["next"])
        return [a for a in doc["alerts"] if isinstance(a, dict)]

    def deliver(self, lines: Sequence[bytes]) -> None:
        """POST each line, as Falco's ``http_output`` does."""
        for line in lines:
            try:
                response = self._session.post(
                    self.url + "/",
                    data=line.rstrip(b"\n"),
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout,
                )
                response.raise_for_status()
            except requests.RequestException as exc:
                raise TorSetsError(f"cannot post an alert to {self.url}: {exc}") from exc


def open_sink(spec: str) -> FileSink | HttpSink:
    """``http://...`` → :class:`HttpSink`, anything else → :class:`FileSink`."""
    if spec.startswith(("http://", "https://")):
        return HttpSink(spec)
    return FileSink(Path(spec))


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What became of one case.

    Attributes:
        observed: the connection made.
        ok: an alert for it arrived in time.
        rule: the rule of that alert.
        alert_after_s: seconds from the syscall to the alert being read from the sink.
        alert_time: the alert's own ``time``.
    """

    observed: Observed
    ok: bool
    rule: str | None = None
    alert_after_s: float | None = None
    alert_time: str | None = None

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        return {
            **self.observed.to_json(),
            "ok": self.ok,
            "rule": self.rule,
            "alert_after_s": None if self.alert_after_s is None else round(self.alert_after_s, 3),
            "alert_time": self.alert_time,
        }


def wait_for_alerts(
    sink: Sink,
    observed: Sequence[Observed],
    *,
    timeout: float,
    interval: float = 0.2,
) -> tuple[CaseResult, ...]:
    """Poll ``sink`` until each observed connection has its alert, or ``timeout`` seconds pass.

    Returns:
        One result per connection, in order; ``ok`` False for those whose alert did not arrive.
    """
    wanted = alerts_wanted(observed)
    found: dict[int, tuple[dict[str, Any], int]] = {}
    deadline = time.monotonic() + timeout
    while True:
        alerts = sink.poll()
        now_ns = time.time_ns()
        for alert in alerts:
            for number, expected in enumerate(wanted):
                if number not in found and alert_matches(expected, alert):
                    found[number] = (alert, now_ns)
        if len(found) == len(wanted) or time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(deadline - time.monotonic(), 0)))
    results = []
    for number, (obs, expected) in enumerate(zip(observed, wanted, strict=True)):
        if number not in found:
            results.append(CaseResult(obs, ok=False))
            continue
        alert, seen_ns = found[number]
        alert_time = alert.get("time")
        results.append(
            CaseResult(
                obs,
                ok=True,
                rule=str(alert.get("rule")),
                alert_after_s=max(seen_ns - expected.ts_ns, 0) / 1e9,
                alert_time=alert_time if isinstance(alert_time, str) else None,
            )
        )
    return tuple(results)
