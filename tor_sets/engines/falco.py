"""Real Falco replaying capture files against rules files, as they are: the proof that counts.

Exports :class:`FalcoEngine` (the template), :class:`FalcoLocal` (``falco-local``: the runtime root that
``tor-sets engines install falco`` keeps in the cache, run directly through its own loader; no Docker, no root),
:class:`FalcoContainer` (``falco``: the image ``tor-sets/falco:VERSION`` — the official image re-tagged where it
could be pulled, else the one built from source — run with ``--network none``), :class:`Validation`,
:func:`falco_config` and :func:`filter_rules`.

Each run gets its own ``falco.yaml`` (passed with ``-c``), so nothing depends on the image's defaults::

    config_files: []            # no config.d drop-ins
    rules_files: [the files, in order]
    engine: {kind: replay, replay: {capture_file: ...}}
    load_plugins / plugins:     # only the plugins asked for
    json_output: true, rule_matching: all|first, append_output: [{extra_fields: [the fields asked for]}]
    stdout_output: on; syslog, webserver, config watching: off

Falco exits at the end of the capture. Alerts are labelled by their event's timestamp (``time``), the label every
engine shares. ``falco -V FILE`` validates a rules file without a capture.
"""

from __future__ import annotations

import abc
import contextlib
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tor_sets.engines import docker as _docker
from tor_sets.engines.base import (
    DEFAULT_FIELDS,
    NA,
    Engine,
    Match,
    Plugin,
    Replay,
    Run,
    Validation,
    Workspace,
    check_rule_matching,
    place,
    temporary_workspace,
)
from tor_sets.engines.paths import DEFAULT_FALCO_VERSION, FALCO_IMAGE_REPO, FalcoInstall, falco_installed
from tor_sets.engines.process import Completed, run_process
from tor_sets.errors import EngineError, EngineUnavailable, RuleError
from tor_sets.falco.alerts import Alert, parse_alerts

__all__ = [
    "FILTER_RULE",
    "FalcoContainer",
    "FalcoEngine",
    "FalcoLocal",
    "falco_config",
    "filter_rules",
]

FILTER_RULE = "tor-sets filter"
_INSTALL_HINT = "run `tor-sets engines install falco` as root"


def falco_config(
    rules: Sequence[str],
    *,
    capture: str | None,
    plugins: Sequence[tuple[str, str, str]] = (),
    fields: Sequence[str] = (),
    rule_matching: str = "all",
    extra: dict[str, Any] | None = None,
) -> str:
    """A complete ``falco.yaml`` for one run.

    Args:
        rules: rules files as Falco sees them, in load order.
        capture: the capture to replay, as Falco sees it (None: no engine settings, e.g. for ``-V``).
        plugins: ``(name, library_path, init_config)`` as Falco sees them.
        fields: fields every alert must carry in ``output_fields`` (``append_output: extra_fields``).
        rule_matching: ``all`` or ``first``.
        extra: more top-level settings (they win).

    >>> print(falco_config(["/cap/r.yaml"], capture="/cap/c.scap", fields=["fd.sip"]).splitlines()[3])
    rules_files: [/cap/r.yaml]
    """
    config: dict[str, Any] = {
        "config_files": [],
        "watch_config_files": False,
        "rules_files": list(rules),
        "load_plugins": [name for name, _, _ in plugins],
        "plugins": [{"name": n, "library_path": lib, "init_config": cfg} for n, lib, cfg in plugins],
        "json_output": True,
        "json_include_output_property": True,
        "json_include_tags_property": True,
        "json_include_output_fields_property": True,
        "rule_matching": rule_matching,
        "priority": "debug",
        "append_output": [{"extra_fields": list(fields)}] if fields else [],
        "stdout_output": {"enabled": True},
        "syslog_output": {"enabled": False},
        "file_output": {"enabled": False},
        "log_syslog": False,
        "log_stderr": True,
        "log_level": "info",
        "webserver": {"enabled": False},
    }
    if capture is not None:
        config["engine"] = {"kind": "replay", "replay": {"capture_file": capture}}
    config |= extra or {}
    return yaml.safe_dump(config, sort_keys=False, width=1 << 30, default_flow_style=None)


def filter_rules(condition: str, fields: Sequence[str]) -> str:
    """A rules file with one rule that prints ``fields`` for every event satisfying ``condition``."""
    output = "tor-sets match | " + " ".join(f"{name}=%{name}" for name in fields)
    rule = {"rule": FILTER_RULE, "desc": "tor-sets engine filter", "condition": condition}
    rule |= {"output": output, "priority": "DEBUG"}
    return yaml.safe_dump([rule], sort_keys=False, width=1 << 30)


def parse_validation(stdout: str, files: Sequence[Path], inside: Sequence[str]) -> tuple[Validation, ...]:
    """Per-file verdicts from ``falco -V`` run with ``json_output: true``, which prints one JSON document.

    Example (Falco 0.44.1, shortened)::

        {"falco_load_results":[{"errors":[],"name":"/cap/rules-0.yaml","schema_valid":true,"schema_warnings":[],
        "successful":true,"warnings":[]},{"errors":[{"code":"LOAD_ERR_COMPILE_OUTPUT","codedesc":"Error compiling
        output","context":{...,"snippet":"  output: ..."},"message":"unknown filter: unexpected token after '"}],
        "name":"/cap/rules-1.yaml","schema_valid":true,"schema_warnings":[],"successful":false,"warnings":[]}]}

    Raises:
        EngineError: no such document, or a file has no verdict in it.
    """
    results: list[Any] | None = None
    for line in stdout.splitlines():
        if '"falco_load_results"' in line:
            try:
                results = json.loads(line)["falco_load_results"]
            except (ValueError, KeyError, TypeError) as exc:
                raise EngineError(f"falco -V printed an unreadable result: {line[:200]}") from exc
    if not isinstance(results, list):
        raise EngineError(f"falco -V printed no result: {stdout.strip()[-300:]}")
    by_name = {str(r.get("name")): r for r in results if isinstance(r, dict)}
    verdicts = []
    for path, name in zip(files, inside, strict=True):
        result = by_name.get(name)
        if result is None:
            raise EngineError(f"falco -V gave no verdict for {path}")
        problems = [p for p in result.get("errors") or [] if isinstance(p, dict)]
        warnings = [p for p in result.get("warnings") or [] if isinstance(p, dict)]
        schema = [str(w) for w in result.get("schema_warnings") or []]

        message = "\n".join([*(_describe(p) for p in problems), *(_describe(w) for w in warnings), *schema]) or "Ok"
        verdicts.append(
            Validation(
                path,
                bool(result.get("successful")) and not problems,
                tuple(_describe(w) for w in warnings) + tuple(schema),
                message.replace(name, str(path)),
            )
        )
    return tuple(verdicts)


def _describe(problem: dict[str, Any]) -> str:
    """One error or warning of ``falco -V``'s JSON as ``CODE (description): message``."""
    return f"{problem.get('code', '?')} ({problem.get('codedesc', '')}): {problem.get('message', '')}"


class FalcoEngine(Engine):
    """Template of the Falco engines: stage files, write a ``falco.yaml``, run Falco once, parse its JSON.

    Subclasses say where the scratch folder lives and how Falco sees it (:meth:`_workspace`), and how Falco is
    started (:meth:`_argv`).
    """

    def __init__(self, falco_version: str | None = None) -> None:
        self.falco_version = falco_version

    @abc.abstractmethod
    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        """A fresh scratch folder Falco can read, removed afterwards."""

    @abc.abstractmethod
    def _argv(self, falco_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        """The full command line running ``falco FALCO_ARGS`` with ``workspace`` visible."""

    def _on_timeout(self, argv: Sequence[str]) -> None:
        """Clean up after a killed run."""

    def _run(self, argv: list[str], timeout: float) -> Completed:
        return run_process(argv, engine=self.name, timeout=timeout, on_timeout=lambda: self._on_timeout(argv))

    def _stage(
        self, ws: Workspace, rules: Sequence[Path], plugins: Sequence[Plugin]
    ) -> tuple[list[str], list[tuple[str, str, str]]]:
        inside = []
        for number, path in enumerate(rules):
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise RuleError(f"{self.name}: cannot read rules file {path}: {exc.strerror}", path=str(path)) from exc
            name = f"rules-{number}.yaml"
            (ws.host / name).write_bytes(text)
            inside.append(ws.path(name))
        loads = []
        for plugin in plugins:
            library, config = plugin.staged(ws.host, ws.path)
            loads.append((plugin.name, library, config))
        return inside, loads

    def replay(
        self,
        capture: Path,
        rules: Sequence[Path],
        *,
        fields: Sequence[str] = DEFAULT_FIELDS,
        plugins: Sequence[Plugin] = (),
        rule_matching: str = "all",
        timeout: float = 600,
    ) -> Replay:
        """Falco runs the files as they are; see :meth:`Engine.replay`. Every enabled rule that exists in the
        files gets an entry in :attr:`Replay.hits` (Falco reports only rules that fired; the others are empty)."""
        alerts, done = self.alerts(
            capture, rules, fields=fields, plugins=plugins, rule_matching=rule_matching, timeout=timeout
        )
        from tor_sets.falco.load import load_rules  # the loader sits above the engines in the package

        enabled = [r.name for r in load_rules(*rules).syscall_rules]
        hits: dict[str, list[Match]] = {name: [] for name in enabled}
        for alert in alerts:
            values = {f: alert.output_fields.get(f, NA) for f in fields}
            hits.setdefault(alert.rule, []).append(Match(alert.ts_ns, values.get("evt.type", NA), values))
        return Replay(
            self.name,
            {k: tuple(v) for k, v in hits.items()},
            {},
            done.wall_s,
            done.cpu_s,
            done.max_rss_kb,
            done.stderr_tail,
        )

    def alerts(
        self,
        capture: Path,
        rules: Sequence[Path],
        *,
        fields: Sequence[str] = (),
        plugins: Sequence[Plugin] = (),
        rule_matching: str = "all",
        timeout: float = 600,
        extra: dict[str, Any] | None = None,
    ) -> tuple[tuple[Alert, ...], Completed]:
        """Replay ``capture`` against ``rules`` and return Falco's alerts as it wrote them, and the run.

        Raises:
            RuleError: Falco does not load the rules.
            EngineError: Falco failed otherwise.
        """
        check_rule_matching(rule_matching)
        if not capture.is_file():
            raise EngineError(f"{self.name}: capture {capture} is not a file", engine=self.name)
        self.check()
        with self._workspace() as ws:
            place(capture, ws.host)
            inside, loads = self._stage(ws, rules, plugins)
            config = falco_config(
                inside,
                capture=ws.path("capture.scap"),
                plugins=loads,
                fields=fields,
                rule_matching=rule_matching,
                extra=extra,
            )
            (ws.host / "falco.yaml").write_text(config, encoding="utf-8")
            argv = self._argv(["-c", ws.path("falco.yaml")], ws)
            done = self._run(argv, timeout)
        self._raise_for(done, "replay", dict(zip(inside, (str(p) for p in rules), strict=True)))
        return parse_alerts(done.stdout, engine=self.name), done

    def validate(
        self, rules: Sequence[Path], *, plugins: Sequence[Plugin] = (), timeout: float = 120
    ) -> tuple[Validation, ...]:
        """``falco -V`` on each file (all loaded together, in order, with ``plugins``): Falco's verdict per file.

        Raises:
            EngineError: Falco failed in a way that is no verdict (it could not start).
        """
        self.check()
        with self._workspace() as ws:
            inside, loads = self._stage(ws, rules, plugins)
            (ws.host / "falco.yaml").write_text(falco_config([], capture=None, plugins=loads), encoding="utf-8")
            # with json_output, -V prints one JSON document of per-file results
            args = ["-c", ws.path("falco.yaml")]
            for path in inside:
                args += ["-V", path]
            done = self._run(self._argv(args, ws), timeout)
        if done.returncode != 0 and '"falco_load_results"' not in done.stdout:
            problem = load_error(done.stdout + "\n" + done.stderr)  # refused before loading: a plugin requirement
            if problem is not None:
                return tuple(Validation(path, False, (), problem) for path in rules)
        return parse_validation(done.stdout, list(rules), inside)

    def filter(
        self, capture: Path, condition: str, fields: Sequence[str] = DEFAULT_FIELDS, *, timeout: float = 600
    ) -> Run:
        """Replay with a one-rule file made from ``condition``; see :meth:`Engine.filter`."""
        fields = tuple(fields)
        with temporary_workspace(None, str) as ws:
            rules = ws.host / "filter.yaml"
            rules.write_text(filter_rules(condition, fields), encoding="utf-8")
            try:
                alerts, done = self.alerts(capture, [rules], fields=fields, timeout=timeout)
            except RuleError as exc:
                detail = str(exc).split("rules do not load: ", 1)[-1].replace(f"{rules}: ", "")
                raise RuleError(f"{self.name}: invalid condition: {detail}") from exc
        matches = tuple(
            Match(a.ts_ns, a.output_fields.get("evt.type", NA), {f: a.output_fields.get(f, NA) for f in fields})
            for a in alerts
            if a.rule == FILTER_RULE
        )
        return Run(matches, done.wall_s, done.max_rss_kb, done.stderr_tail, done.cpu_s)

    def compile(self, condition: str, *, timeout: float = 120) -> None:
        """Validate a one-rule file made from ``condition`` with ``falco -V``."""
        with temporary_workspace(None, str) as ws:
            rules = ws.host / "filter.yaml"
            rules.write_text(filter_rules(condition, ("evt.type",)), encoding="utf-8")
            (result,) = self.validate([rules], timeout=timeout)
        if not result.ok:
            raise RuleError(f"{self.name}: invalid condition: {result.message.splitlines()[0][:300]}")

    def _raise_for(self, done: Completed, what: str, names: dict[str, str] | None = None) -> None:
        if done.returncode == 0:
            return
        text = done.stdout + "\n" + done.stderr
        problem = load_error(text)
        if problem is not None:
            for inside, path in (names or {}).items():
                problem = problem.replace(inside, path)
            raise RuleError(f"{self.name}: rules do not load: {problem}")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if "rror" in line or "plugin" in line.lower()]
        last = (errors or lines or ["no message"])[-1][:300]
        raise EngineError(
            f"{self.name}: falco {what} failed (exit {done.returncode}): {last}",
            engine=self.name,
            returncode=done.returncode,
            stderr=done.stderr_tail,
        )


def load_error(text: str) -> str | None:
    """One line saying why Falco did not load its rules, from its error report; None when there is none.

    Example input (Falco 0.44.1, stderr)::

        Error: /cap/rules-0.yaml: Invalid
        1 Errors:
        In rules content: (/cap/rules-0.yaml:0:0)
            rule 'x': (/cap/rules-0.yaml:0:2)
            rule output: (/cap/rules-0.yaml:3:10)
        ------
          output: "m | fd.nosuchfield=%fd.nosuchfield"
                  ^
        ------
        LOAD_ERR_COMPILE_OUTPUT (Error compiling output): unknown filter: unexpected token after '

    gives ``/cap/rules-0.yaml: rule 'x': LOAD_ERR_COMPILE_OUTPUT (Error compiling output): unknown filter:
    unexpected token after ' (at: output: "m | fd.nosuchfield=%fd.nosuchfield")``.
    """
    lines = text.splitlines()
    codes = [i for i, line in enumerate(lines) if line.strip().startswith("LOAD_ERR")]
    if not codes:
        # "Error: Plugin requirement not satisfied, must load one of: torsets (>= 0.1.0)" (no JSON, no LOAD_ERR)
        requirement = next((line.strip() for line in lines if "Plugin requirement not satisfied" in line), None)
        invalid = next((line.strip() for line in lines if line.strip().endswith(": Invalid")), None)
        return (requirement or invalid or "").removeprefix("Error: ") or None
    index = codes[0]
    block = lines[:index]
    start = max((i for i, line in enumerate(block) if line.strip().endswith(": Invalid")), default=-1)
    block = block[start + 1 :]
    where = next((m[1] for line in block if (m := re.search(r"\((\S+?):\d+:\d+\)", line))), "")
    item = next((m[0] for line in reversed(block) if (m := re.match(r"\s*(rule|macro|list) '[^']*'", line))), "")
    dashes = [i for i, line in enumerate(block) if line.strip() == "------"]
    snippet = block[dashes[0] + 1].strip() if len(dashes) >= 2 and dashes[1] > dashes[0] + 1 else ""
    parts = [p for p in (where, item.strip()) if p]
    prefix = ": ".join(parts) + ": " if parts else ""
    at = f" (at: {snippet[:200]})" if snippet else ""
    return f"{prefix}{lines[index].strip()}{at}"


class FalcoLocal(FalcoEngine):
    """The Falco runtime root in the cache, run on this machine through its own loader (no chroot, no Docker)."""

    name = "falco-local"
    description = "Falco built from source (or exported from its image), run directly from the engine cache"

    def install(self) -> FalcoInstall:
        """The runtime root this engine runs.

        Raises:
            EngineUnavailable: none in the cache.
        """
        try:
            found = falco_installed(self.falco_version)
        except EngineUnavailable as exc:
            raise EngineUnavailable(f"{self.name}: {exc}", engine=self.name) from exc
        if found is None:
            wanted = f"Falco {self.falco_version}" if self.falco_version else "Falco"
            raise EngineUnavailable(f"{self.name}: {wanted} is not installed; {_INSTALL_HINT}", engine=self.name)
        return found

    def check(self) -> None:
        """Raises EngineUnavailable when no Falco runtime root is in the cache."""
        self.install()

    def version(self) -> str:
        """The Falco release of the runtime root."""
        return self.install().version

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        return temporary_workspace(None, str)

    def _argv(self, falco_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return self.install().command(falco_args)

    def count_instructions(
        self, capture: Path, rules: Sequence[Path], *, plugins: Sequence[Plugin] = (), timeout: float = 3600
    ) -> int:
        """Instructions Falco executes to start, load ``rules`` and replay ``capture``, counted by callgrind.

        The same count, to within about 0.1 %, for the same binary and inputs whatever else the machine does
        (unlike CPU time). The difference between two captures of different length is the per-event cost.

        Raises:
            EngineUnavailable: no valgrind on this machine.
            EngineError: the run failed or printed no count.
        """
        valgrind = shutil.which("valgrind")
        if valgrind is None:
            raise EngineUnavailable(f"{self.name}: valgrind is missing (apt-get install valgrind)", engine=self.name)
        self.check()
        with self._workspace() as ws:
            place(capture, ws.host)
            inside, loads = self._stage(ws, rules, plugins)
            config = falco_config(inside, capture=ws.path("capture.scap"), plugins=loads, rule_matching="all")
            (ws.host / "falco.yaml").write_text(config, encoding="utf-8")
            argv = [
                valgrind,
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                *self._argv(["-c", ws.path("falco.yaml")], ws),
            ]
            done = self._run(argv, timeout)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            self._raise_for(done, "replay under callgrind")
            raise EngineError(f"{self.name}: callgrind printed no count: {done.stderr_tail[-300:]}", engine=self.name)
        return int(found[1])


class FalcoContainer(FalcoEngine):
    """Falco in the local image ``tor-sets/falco:VERSION``, without network; the scratch folder read-only at /cap."""

    name = "falco"
    description = "Falco in its container image (tor-sets/falco: official image or built from source), via docker"

    def __init__(self, falco_version: str | None = None) -> None:
        super().__init__(falco_version)

    @property
    def image(self) -> str:
        """The image this engine runs."""
        if self.falco_version:
            return f"{FALCO_IMAGE_REPO}:{self.falco_version}"
        try:
            installed = falco_installed()
        except EngineUnavailable:  # another user's cache: the image of the default release may still be there
            installed = None
        return f"{FALCO_IMAGE_REPO}:{installed.version if installed else DEFAULT_FALCO_VERSION}"

    def check(self) -> None:
        """Raises EngineUnavailable when the client, the daemon or the image is missing."""
        _docker.require_image(self.image, self.name, _INSTALL_HINT)

    def version(self) -> str:
        """The Falco release of the image (its tag)."""
        return self.image.rsplit(":", 1)[1]

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        return temporary_workspace(None, lambda host: _docker.MOUNT)

    def _argv(self, falco_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return _docker.run_argv(
            _docker.docker_cli(self.name),
            self.image,
            None if workspace is None else workspace.host,
            ["/usr/bin/falco", *falco_args],
            name=_docker.container_name(),
        )

    def _on_timeout(self, argv: Sequence[str]) -> None:
        _docker.kill_container(argv[0], argv[argv.index("--name") + 1])
