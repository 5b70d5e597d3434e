"""Falco itself, in its official container, replaying a capture file against a rules file.

Exports :class:`FalcoDocker` (``falco-docker``), :class:`Alert`, :func:`falco_command` (the command line per
Falco version), :func:`parse_alerts` (Falco's JSON output → alerts) and :func:`parse_time`.

Falco takes a rules file rather than a condition, so the main entry point is :meth:`FalcoDocker.alerts`;
:meth:`FalcoDocker.filter` wraps a condition into a one-rule file. Images come from Docker Hub
(``falcosecurity/falco:<ver>``, or ``falcosecurity/falco-no-driver:<ver>`` up to 0.39), which this project's
machines cannot reach: :meth:`FalcoDocker.check` says so. Pulling is opt-in (``pull=True``).

Command lines (Falco facts note): ≥ 0.38 ``falco -r RULES -o engine.kind=replay
-o engine.replay.capture_file=CAP -o json_output=true -o rule_matching=all -U``; before 0.38 ``falco -r RULES
-e CAP ...``. Replay needs no driver and Falco exits at the end of the file.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from tor_sets.engines import docker as _docker
from tor_sets.engines.base import (
    DEFAULT_FIELDS,
    NA,
    Completed,
    Engine,
    Match,
    Run,
    place,
    run_process,
    temporary_workspace,
)
from tor_sets.errors import EngineError, EngineUnavailable, RuleError

__all__ = ["DEFAULT_FALCO_VERSION", "Alert", "FalcoDocker", "falco_command", "parse_alerts", "parse_time"]

DEFAULT_FALCO_VERSION = "0.42.1"
FILTER_RULE = "tor-sets filter"

_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?")


@dataclass(frozen=True, slots=True)
class Alert:
    """One Falco alert.

    Attributes:
        rule: the rule's name.
        priority: lower case (``warning``, ``notice``, ...).
        ts_ns: the event's timestamp in ns since the epoch, from the alert's ``time``.
        output: the formatted output line.
        output_fields: every ``%field`` of the output, as text; ``"<NA>"`` for null.
        source: the event source (``syscall``).
        tags: the rule's tags.
    """

    rule: str
    priority: str
    ts_ns: int
    output: str
    output_fields: Mapping[str, str] = field(default_factory=dict)
    source: str = "syscall"
    tags: tuple[str, ...] = ()

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


def _text(value: object) -> str:
    """A JSON value as sysdig would print it."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_alerts(stdout: str) -> tuple[Alert, ...]:
    """Parse the JSON alerts in Falco's stdout; other lines (statistics, banners) are skipped.

    Example input line (Falco 0.42, ``json_output=true``)::

        {"hostname":"h","output":"00:44:29.904933216: Warning Tor | connection=...","output_fields":
        {"evt.time":1506127469904933216,"fd.name":"192.168.0.1:44434->192.168.0.3:80"},"priority":"Warning",
        "rule":"Tor","source":"syscall","tags":["network"],"time":"2017-09-23T00:44:29.904933216Z"}

    Raises:
        EngineError: a line that looks like an alert cannot be read.
    """
    alerts = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc: Any = json.loads(line)
            fields = doc.get("output_fields") or {}
            alerts.append(
                Alert(
                    rule=str(doc["rule"]),
                    priority=str(doc["priority"]).lower(),
                    ts_ns=parse_time(str(doc["time"])),
                    output=str(doc.get("output", "")),
                    output_fields={str(k): _text(v) for k, v in fields.items()},
                    source=str(doc.get("source", "syscall")),
                    tags=tuple(str(t) for t in doc.get("tags") or ()),
                )
            )
        except (json.JSONDecodeError, KeyError, ValueError, AttributeError, TypeError) as exc:
            raise EngineError(f"falco-docker: unreadable alert: {line[:200]}", engine="falco-docker") from exc
    return tuple(alerts)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def falco_image(version: str) -> str:
    """The official image of a Falco release.

    >>> falco_image("0.42.1"), falco_image("0.36.2")
    ('falcosecurity/falco:0.42.1', 'falcosecurity/falco-no-driver:0.36.2')
    """
    if _version_tuple(version) >= (0, 40):
        return f"falcosecurity/falco:{version}"
    return f"falcosecurity/falco-no-driver:{version}"


def falco_command(version: str, rules: str, capture: str) -> list[str]:
    """The command that replays ``capture`` against ``rules`` inside a Falco image of ``version``.

    >>> " ".join(falco_command("0.42.1", "/cap/r.yaml", "/cap/c.scap"))
    '/usr/bin/falco -r /cap/r.yaml -o engine.kind=replay -o engine.replay.capture_file=/cap/c.scap \
-o json_output=true -o rule_matching=all -U'
    >>> " ".join(falco_command("0.36.2", "/cap/r.yaml", "/cap/c.scap"))
    '/usr/bin/falco -r /cap/r.yaml -e /cap/c.scap -o json_output=true -o rule_matching=all -U'
    """
    if _version_tuple(version) >= (0, 38):
        source = ["-o", "engine.kind=replay", "-o", f"engine.replay.capture_file={capture}"]
    else:
        source = ["-e", capture]
    matching = ["-o", "rule_matching=all"] if _version_tuple(version) >= (0, 35) else []
    return ["/usr/bin/falco", "-r", rules, *source, "-o", "json_output=true", *matching, "-U"]


def filter_rules(condition: str, fields: Sequence[str]) -> str:
    """A rules file with one rule that prints ``fields`` for every event satisfying ``condition``."""
    output = "tor-sets match | " + " ".join(f"{name}=%{name}" for name in fields)
    rule = {"rule": FILTER_RULE, "desc": "tor-sets engine filter", "condition": condition}
    rule |= {"output": output, "priority": "DEBUG"}
    return yaml.safe_dump([rule], sort_keys=False, width=1 << 30)


def _is_rules_problem(line: str) -> bool:
    """Whether a line of Falco's output reports rules that do not load.

    Examples: ``LOAD_ERR_COMPILE_CONDITION (Error compiling condition): ...``, ``/cap/rules.yaml: Invalid``,
    ``Error: Could not load rules file /cap/rules.yaml: ...``.
    """
    return "LOAD_ERR" in line or line.endswith(": Invalid") or ("Error" in line and "rule" in line.lower())


class FalcoDocker(Engine):
    """Falco ``VERSION`` in its official image, in replay mode, without network."""

    name = "falco-docker"
    description = "Falco in its official image (falcosecurity/falco), replay mode, via docker"

    def __init__(self, version: str = DEFAULT_FALCO_VERSION, *, pull: bool = False) -> None:
        self.falco_version = version
        self.pull = pull

    @property
    def image(self) -> str:
        """The image reference for :attr:`falco_version`."""
        return falco_image(self.falco_version)

    def check(self) -> None:
        """Raises EngineUnavailable when Docker or the image is missing (and, with ``pull``, cannot be pulled)."""
        self._check(self.falco_version)

    def _check(self, version: str) -> None:
        image = falco_image(version)
        _docker.require_daemon(self.name)
        if _docker.image_present(image, self.name):
            return
        if not self.pull:
            raise EngineUnavailable(
                f"{self.name}: image {image} not present and cannot be pulled: pulling is off "
                f"(FalcoDocker(pull=True)); on a machine that reaches Docker Hub run `docker pull {image}`",
                engine=self.name,
            )
        _docker.pull(image, self.name)

    def version(self) -> str:
        """The Falco release this engine runs (the image tag)."""
        return self.falco_version

    def alerts(
        self, capture: Path, rules: Path, *, version: str | None = None, timeout: float = 600
    ) -> tuple[Alert, ...]:
        """Replay ``capture`` through Falco with only ``rules`` loaded; every matching rule alerts.

        Args:
            capture: the capture file.
            rules: a Falco rules file (self-contained: the stock rules are not loaded).
            version: Falco release (default: this engine's).
            timeout: seconds before the container is killed.

        Raises:
            RuleError: Falco does not load ``rules``.
            EngineError: Falco failed otherwise.
        """
        try:
            text = rules.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleError(f"{self.name}: cannot read rules file {rules}: {exc}", path=str(rules)) from exc
        alerts, _ = self._replay(capture, text, version or self.falco_version, timeout)
        return alerts

    def filter(
        self, capture: Path, condition: str, fields: Sequence[str] = DEFAULT_FIELDS, *, timeout: float = 600
    ) -> Run:
        """Replay with a one-rule file made from ``condition``; see :meth:`Engine.filter`."""
        fields = tuple(fields)
        alerts, done = self._replay(capture, filter_rules(condition, fields), self.falco_version, timeout)
        matches = tuple(
            Match(a.ts_ns, a.output_fields.get("evt.type", NA), {f: a.output_fields.get(f, NA) for f in fields})
            for a in alerts
            if a.rule == FILTER_RULE
        )
        return Run(matches, done.wall_s, 0, done.stderr_tail)

    def compile(self, condition: str, *, timeout: float = 120) -> None:
        """Validate a one-rule file made from ``condition`` with ``falco -V``."""
        self._check(self.falco_version)
        docker = _docker.docker_cli(self.name)
        with temporary_workspace(None, lambda host: _docker.MOUNT) as ws:
            (ws.host / "rules.yaml").write_text(filter_rules(condition, ("evt.type",)), encoding="utf-8")
            argv = _docker.run_argv(
                docker,
                self.image,
                ws.host,
                ["/usr/bin/falco", "-V", ws.path("rules.yaml")],
                name=_docker.container_name(),
            )
            done = self._run(argv, timeout)
        self._raise_for(done, "rules validation")

    def _replay(
        self, capture: Path, rules_text: str, version: str, timeout: float
    ) -> tuple[tuple[Alert, ...], Completed]:
        self._check(version)
        docker = _docker.docker_cli(self.name)
        with temporary_workspace(None, lambda host: _docker.MOUNT) as ws:
            place(capture, ws.host)
            (ws.host / "rules.yaml").write_text(rules_text, encoding="utf-8")
            command = falco_command(version, ws.path("rules.yaml"), ws.path("capture.scap"))
            argv = _docker.run_argv(docker, falco_image(version), ws.host, command, name=_docker.container_name())
            done = self._run(argv, timeout)
        self._raise_for(done, "replay")
        return parse_alerts(done.stdout), done

    def _run(self, argv: list[str], timeout: float) -> Completed:
        return run_process(
            argv,
            engine=self.name,
            timeout=timeout,
            on_timeout=lambda: _docker.kill_container(argv[0], argv[argv.index("--name") + 1]),
        )

    def _raise_for(self, done: Completed, what: str) -> None:
        if done.returncode == 0:
            return
        text = done.stdout + "\n" + done.stderr
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        problems = [line for line in lines if _is_rules_problem(line)]
        if problems:
            raise RuleError(f"{self.name}: rules do not load: {problems[0][:300]}")
        raise EngineError(
            f"{self.name}: falco {what} failed (exit {done.returncode}): {(lines or ['no message'])[-1][:300]}",
            engine=self.name,
            returncode=done.returncode,
            stderr=done.stderr_tail,
        )
