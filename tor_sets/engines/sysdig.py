"""The sysdig engines: libsinsp as Debian ships it, driven through the tor-sets chisel.

Exports :class:`SysdigEngine` (the template every sysdig engine fills in: stage files, run one sysdig, parse the
chisel's output; it expands each rule with tor-sets' own loader), the chisel's helpers (:func:`chisel_source`,
:func:`write_spec`, :func:`parse_chisel_output`, :func:`filter_error`, :func:`raise_for_run`) and three engines
that differ only in where sysdig runs:

* :class:`SysdigModern` (``sysdig-modern``): sysdig 0.41.4 (libs 0.23, the line of current Falco) in a Debian sid
  root, entered with ``chroot``. Needs root. Fastest of the modern ones.
* :class:`SysdigModernDocker` (``sysdig-modern-docker``): the same root imported as the local image
  ``tor-sets/sysdig-modern``, run with ``docker run --network none``.
* :class:`SysdigLegacy` (``sysdig-legacy``): the host's sysdig 0.29.3 (libs of 2022-03, Debian 12). Its ``in``
  is an OR chain, it rejects IPv6 CIDRs, and it names some ``accept4`` events ``accept``.

Why a chisel: sysdig takes its filter as one command-line argument, and Linux caps one argument at 128 KiB
(``MAX_ARG_STRLEN``), while a full Tor relay list expanded into a condition is larger. The Lua chisel shipped in
``chisels/tor_sets_match.lua`` reads the condition from a file and installs it with ``chisel.set_filter()``, which
has no such limit, then prints one JSON line per matching event. Events are labelled by their timestamp
(``evt.rawtime`` split into ``.s`` and ``.ns``, because Lua holds numbers as doubles) since event numbers differ
between engines for the same capture.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import ClassVar

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
    first_match_only,
    place,
    temporary_workspace,
)
from tor_sets.engines.paths import LEGACY_SYSDIG, MODERN_IMAGE, modern_root
from tor_sets.engines.process import STDERR_TAIL_CHARS, Completed, run_process
from tor_sets.errors import EngineError, EngineUnavailable, RuleError

__all__ = [
    "CHISEL_NAME",
    "SysdigEngine",
    "SysdigLegacy",
    "SysdigModern",
    "SysdigModernDocker",
    "chisel_source",
    "filter_error",
    "parse_chisel_output",
    "raise_for_run",
    "write_spec",
]

#: where sysdig lives inside the sid root and the image
SYSDIG_INSIDE = "/usr/bin/sysdig"


CHISEL_NAME = "tor_sets_match.lua"


def chisel_source() -> bytes:
    """The bytes of the shipped Lua chisel."""
    return (resources.files("tor_sets.engines") / "chisels" / CHISEL_NAME).read_bytes()


def write_spec(path: Path, mode: str, fields: Sequence[str], condition: str) -> None:
    """Write the chisel's spec file: mode line, fields line, then the condition."""
    for name in fields:
        if not name or any(ch.isspace() for ch in name):
            raise RuleError(f"invalid field name {name!r}")
    path.write_text(f"{mode}\n{' '.join(fields)}\n{condition}", encoding="utf-8")


def parse_chisel_output(stdout: str, fields: Sequence[str], *, engine: str) -> tuple[tuple[Match, ...], int]:
    """Parse the chisel's JSON lines into matches; also return the peak RSS it reported (-1: unknown).

    Example input (fields ``evt.type fd.sip proc.name``)::

        ["1506127469", "904933216", "accept", "192.168.0.3", null]
        {"end": 1, "vmhwm_kb": 26876}

    Raises:
        EngineError: the output is cut short or not what the chisel writes.
    """
    matches: list[Match] = []
    trailer: dict[str, int] | None = None
    for line in stdout.splitlines():
        if not line.startswith(("[", "{")):
            continue  # anything else on stdout is the engine talking, not our chisel
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EngineError(f"{engine}: unreadable chisel output line: {line[:200]}", engine=engine) from exc
        if isinstance(doc, dict):
            if "end" in doc:
                trailer = doc
            continue
        if not isinstance(doc, list) or len(doc) != len(fields) + 2 or doc[0] is None or doc[1] is None:
            raise EngineError(f"{engine}: unexpected chisel output line: {line[:200]}", engine=engine)
        values = {name: NA if value is None else str(value) for name, value in zip(fields, doc[2:], strict=True)}
        ts_ns = int(doc[0]) * 1_000_000_000 + int(doc[1])
        matches.append(Match(ts_ns, values.get("evt.type", NA), values))
    if trailer is None:
        raise EngineError(f"{engine}: output ended before the end of the capture", engine=engine)
    if trailer["end"] != len(matches):
        raise EngineError(
            f"{engine}: chisel printed {trailer['end']} matches but {len(matches)} arrived", engine=engine
        )
    return tuple(matches), int(trailer.get("vmhwm_kb", -1))


def filter_error(stderr: str) -> str | None:
    """The engine's message for a condition it rejected, or None if the failure is something else.

    Example stderr (sysdig 0.29 and 0.41)::

        invalid filter in chisel /tmp/tor-sets-x/tor_sets_match.lua: filter error at position 43: unrecognized ...
        invalid filter in chisel /tmp/tor-sets-x/tor_sets_match.lua: unrecognized IPv4 address 1.2.3.4/24
    """
    marker = "invalid filter in chisel "
    for line in stderr.splitlines():
        if marker in line:
            rest = line.split(marker, 1)[1]
            return rest.split(": ", 1)[1] if ": " in rest else rest
    return None


class SysdigEngine(Engine):
    """Template of the sysdig engines: stage files → run one sysdig → parse the chisel's output.

    Subclasses say where the scratch folder lives and how the engine sees it (:meth:`_workspace`), how sysdig
    is invoked (:meth:`_argv`), and whether the RSS measured on the child is the engine's own
    (:attr:`rss_from_child`).
    """

    #: False when the child is only a client (docker): then the chisel's own VmHWM is used
    rss_from_child: ClassVar[bool] = True

    def __init__(self) -> None:
        self._version: str | None = None

    @abc.abstractmethod
    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        """A fresh scratch folder, removed afterwards."""

    @abc.abstractmethod
    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        """The full command line running ``sysdig SYSDIG_ARGS`` with ``workspace`` visible."""

    def _capture_path(self, capture: Path, workspace: Workspace) -> str:
        """Make ``capture`` readable by the engine and return its path as the engine sees it."""
        place(capture, workspace.host)
        return workspace.path("capture.scap")

    def _on_timeout(self, argv: Sequence[str]) -> None:
        """Clean up after a killed run (e.g. a container that outlives its client)."""

    def version(self) -> str:
        """The version sysdig prints, e.g. ``0.29.3`` or ``0.41.4+repack``.

        Raises:
            EngineError: sysdig cannot tell.
        """
        if self._version is None:
            self.check()
            done = run_process(self._argv(["--version"], None), engine=self.name, timeout=60)
            text = done.stdout.strip()
            if done.returncode != 0 or not text:
                raise EngineError(
                    f"{self.name}: `sysdig --version` failed (exit {done.returncode})",
                    engine=self.name,
                    returncode=done.returncode,
                    stderr=done.stderr_tail,
                )
            self._version = text.rsplit(" ", 1)[-1]
        return self._version

    #: whether this sysdig can load plugins (``-H``; plugin API 3.3 and later)
    supports_plugins: ClassVar[bool] = True

    def filter(
        self,
        capture: Path,
        condition: str,
        fields: Sequence[str] = DEFAULT_FIELDS,
        *,
        timeout: float = 300,
        plugins: Sequence[Plugin] = (),
    ) -> Run:
        """Replay ``capture`` through sysdig with the chisel (and ``plugins`` loaded); see :meth:`Engine.filter`."""
        self.check()
        if not capture.is_file():
            raise EngineError(f"{self.name}: capture {capture} is not a file", engine=self.name)
        fields = tuple(fields)
        with self._workspace() as ws:
            capture_path = self._capture_path(capture, ws)
            done = self._run_chisel(ws, capture_path, "filter", fields, condition, timeout, plugins)
        matches, vmhwm_kb = parse_chisel_output(done.stdout, fields, engine=self.name)
        rss = done.max_rss_kb if self.rss_from_child or vmhwm_kb < 0 else vmhwm_kb
        return Run(matches, done.wall_s, rss, done.stderr_tail, done.cpu_s)

    def compile(self, condition: str, *, timeout: float = 60) -> None:
        """Load ``condition`` in the chisel's ``on_init`` and exit before reading events."""
        self.check()
        with self._workspace() as ws:
            (ws.host / "empty.scap").write_bytes(b"")  # sysdig opens the capture only after on_init
            done = self._run_chisel(ws, ws.path("empty.scap"), "compile", (), condition, timeout)
        if '{"compiled": true}' not in done.stdout:
            raise EngineError(
                f"{self.name}: the condition check did not finish (exit {done.returncode})",
                engine=self.name,
                returncode=done.returncode,
                stderr=done.stderr_tail,
            )

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
        """Load ``rules`` with tor-sets' loader and replay each enabled syscall rule's expanded condition.

        A rule whose condition cannot be expanded is reported in :attr:`Replay.problems`, not replayed.
        """
        from tor_sets.falco.load import load_rules  # the loader sits above the engines in the package

        check_rule_matching(rule_matching)
        ruleset = load_rules(*rules)
        hits: dict[str, tuple[Match, ...]] = {}
        problems: dict[str, str] = {}
        wall = cpu = 0.0
        rss = 0
        tails = []
        for rule in ruleset.syscall_rules:
            if not rule.complete:
                problems[rule.name] = f"cannot expand: {', '.join(rule.unresolved)}"
                continue
            run = self.filter(capture, rule.expanded, fields, timeout=timeout, plugins=plugins)
            hits[rule.name] = run.matches
            wall += run.wall_s
            cpu += run.cpu_s
            rss = max(rss, run.max_rss_kb)
            tails.append(run.stderr_tail)
        if rule_matching == "first":
            hits = first_match_only(hits, list(hits))
        return Replay(self.name, hits, problems, wall, cpu, rss, "".join(tails)[-STDERR_TAIL_CHARS:])

    def validate(
        self, rules: Sequence[Path], *, plugins: Sequence[Plugin] = (), timeout: float = 120
    ) -> tuple[Validation, ...]:
        """tor-sets' loader, then each enabled syscall rule's expanded condition compiled by this sysdig."""
        from tor_sets.falco.load import load_rules  # the loader sits above the engines in the package

        try:
            ruleset = load_rules(*rules)
            for rule in ruleset.syscall_rules:
                if not rule.complete:
                    raise RuleError(f"rule {rule.name!r}: cannot expand {', '.join(rule.unresolved)}")
                try:
                    self.compile(rule.expanded, timeout=timeout)
                except RuleError as exc:
                    raise RuleError(f"rule {rule.name!r}: {exc}") from exc
        except RuleError as exc:
            return tuple(Validation(path, False, (), str(exc)) for path in rules)
        warnings = tuple(ruleset.warnings)
        return tuple(Validation(path, True, warnings, "Ok") for path in rules)

    def _run_chisel(
        self,
        ws: Workspace,
        capture: str,
        mode: str,
        fields: Sequence[str],
        condition: str,
        timeout: float,
        plugins: Sequence[Plugin] = (),
    ) -> Completed:
        (ws.host / CHISEL_NAME).write_bytes(chisel_source())
        write_spec(ws.host / "spec", mode, fields, condition)
        if plugins and not self.supports_plugins:
            raise EngineUnavailable(f"{self.name}: this sysdig cannot load plugins", engine=self.name)
        loads = []
        for plugin in plugins:
            library, config = plugin.staged(ws.host, ws.path)
            loads += ["-H", f"{library}:{config}"]
        args = [*loads, "-r", capture, "-c", ws.path(CHISEL_NAME), ws.path("spec")]
        argv = self._argv(args, ws)
        done = run_process(argv, engine=self.name, timeout=timeout, on_timeout=lambda: self._on_timeout(argv))
        what = "sysdig with plugins" if plugins else "sysdig"
        raise_for_run(self.name, done, what=what, prefer="plugin" if plugins else None)
        return done


def raise_for_run(engine: str, done: Completed, *, what: str = "sysdig", prefer: str | None = None) -> None:
    """Map a finished sysdig run with the chisel to our errors; return quietly when it succeeded.

    Args:
        engine: engine name for messages.
        done: the finished run.
        what: how to name the run in the message (``sysdig``, ``sysdig with the plugin``).
        prefer: quote the first stderr line containing this word, when there is one (e.g. ``plugin``).

    Raises:
        RuleError: the engine rejected the condition or a field.
        EngineError: the engine failed otherwise.
    """
    message = filter_error(done.stderr)
    if message is not None:
        raise RuleError(f"{engine}: invalid condition: {message}")
    unknown = re.search(r"chisel requesting nonexistent field (\S+)", done.stderr)
    if unknown:
        raise RuleError(f"{engine}: unknown field {unknown[1]}")
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        preferred = [line for line in lines if prefer and prefer in line]
        first = (preferred or lines or ["no message"])[0]
        raise EngineError(
            f"{engine}: {what} failed (exit {done.returncode}): {first[:300]}",
            engine=engine,
            returncode=done.returncode,
            stderr=done.stderr_tail,
        )


class SysdigLegacy(SysdigEngine):
    """The host's sysdig 0.29.3 (Debian 12)."""

    name = "sysdig-legacy"
    description = "host sysdig 0.29.3 (Debian 12, libs 2022-03)"
    supports_plugins = False  # it predates the plugin API the tor-sets plugin needs

    def __init__(self, binary: Path = LEGACY_SYSDIG) -> None:
        super().__init__()
        self.binary = binary

    def check(self) -> None:
        """Raises EngineUnavailable when the host has no sysdig."""
        if not os.access(self.binary, os.X_OK):
            raise EngineUnavailable(
                f"{self.name}: {self.binary} not found; run `tor-sets engines install legacy` as root",
                engine=self.name,
            )

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        return temporary_workspace(None, str)

    def _capture_path(self, capture: Path, workspace: Workspace) -> str:
        return str(capture.resolve())  # same filesystem view: no copy needed

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return [str(self.binary), *sysdig_args]


class SysdigModern(SysdigEngine):
    """Sysdig 0.41.4 in the cached Debian sid root, through ``chroot``.

    Files for a run go to ``ROOT/tmp/tor-sets-XXXX`` and are removed afterwards. Nothing is mounted in the root:
    replaying a capture needs no ``/proc``.
    """

    name = "sysdig-modern"
    description = "sysdig 0.41.4 (libs 0.23) in a Debian sid root via chroot"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__()
        self.root = root if root is not None else modern_root()

    def check(self) -> None:
        """Raises EngineUnavailable when the root is missing, we are not root, or there is no ``chroot``."""
        try:
            present = (self.root / SYSDIG_INSIDE.lstrip("/")).exists()
        except OSError as exc:  # EACCES: another user's cache (root's, read as a non-root user)
            raise EngineUnavailable(
                f"{self.name}: cannot read the engine root {self.root}: {exc.strerror or exc}", engine=self.name
            ) from exc
        if not present:
            raise EngineUnavailable(
                f"{self.name}: no engine root at {self.root}; run `tor-sets engines install modern` as root",
                engine=self.name,
            )
        if os.geteuid() != 0:
            raise EngineUnavailable(f"{self.name}: chroot needs root; run tor-sets as root", engine=self.name)
        if shutil.which("chroot") is None:
            raise EngineUnavailable(f"{self.name}: the chroot command (coreutils) is missing", engine=self.name)

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        tmp = self.root / "tmp"
        return temporary_workspace(tmp, lambda host: "/tmp/" + host.name)

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        chroot = shutil.which("chroot") or "chroot"
        return [chroot, str(self.root), SYSDIG_INSIDE, *sysdig_args]

    def count_instructions(self, capture: Path | None, condition: str, *, timeout: float = 3600) -> int:
        """Instructions the engine executes to load ``condition`` and replay ``capture`` (None: load only).

        Counted by valgrind's callgrind inside the root: the same for the same binary and inputs to within about
        0.1 % (only scratch-folder names differ), so unlike CPU time it does not move with a busy machine.
        Valgrind needs ``/proc``; it is mounted in a private mount namespace (``unshare --mount``) that
        disappears with the process, so nothing is ever left mounted in the root.

        Raises:
            EngineUnavailable: valgrind is not in the root (``tor-sets engines install bench``).
            EngineError: the run failed or printed no count.
        """
        self.check()
        if not (self.root / "usr/bin/valgrind").exists():
            raise EngineUnavailable(
                f"{self.name}: valgrind is not in {self.root}; run `tor-sets engines install bench` as root",
                engine=self.name,
            )
        with self._workspace() as ws:
            (ws.host / CHISEL_NAME).write_bytes(chisel_source())
            fields: tuple[str, ...]
            if capture is None:
                (ws.host / "empty.scap").write_bytes(b"")
                target, mode, fields = ws.path("empty.scap"), "compile", ()
            else:
                target, mode, fields = self._capture_path(capture, ws), "filter", ("evt.type",)
            write_spec(ws.host / "spec", mode, fields, condition)
            script = (
                'mount -t proc proc "$0/proc" && exec chroot "$0" valgrind --tool=callgrind '
                '--callgrind-out-file=/dev/null "$@"'
            )
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                str(self.root),
                SYSDIG_INSIDE,
                "-r",
                target,
                "-c",
                ws.path(CHISEL_NAME),
                ws.path("spec"),
            ]
            done = run_process(argv, engine=self.name, timeout=timeout)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            first = next((line for line in done.stderr.splitlines() if line.strip()), "no message")
            raise EngineError(
                f"{self.name}: callgrind printed no count (exit {done.returncode}): {first[:300]}",
                engine=self.name,
                returncode=done.returncode,
                stderr=done.stderr_tail,
            )
        return int(found[1])


class SysdigModernDocker(SysdigEngine):
    """Sysdig 0.41.4 in the local image imported from the sid root, run without network.

    The scratch folder is mounted read-only at ``/cap``. The peak RSS is the one the chisel reads from
    ``/proc/self/status`` inside the container, since the measured child is only the docker client.
    """

    name = "sysdig-modern-docker"
    description = "sysdig 0.41.4 (libs 0.23) in the local image tor-sets/sysdig-modern via docker"
    rss_from_child = False

    def __init__(self, image: str = MODERN_IMAGE) -> None:
        super().__init__()
        self.image = image

    def check(self) -> None:
        """Raises EngineUnavailable when the client, the daemon or the image is missing."""
        _docker.require_image(self.image, self.name, "run `tor-sets engines install docker` as root")

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        return temporary_workspace(None, lambda host: _docker.MOUNT)

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return _docker.run_argv(
            _docker.docker_cli(self.name),
            self.image,
            None if workspace is None else workspace.host,
            [SYSDIG_INSIDE, *sysdig_args],
            name=_docker.container_name(),
        )

    def _on_timeout(self, argv: Sequence[str]) -> None:
        _docker.kill_container(argv[0], argv[argv.index("--name") + 1])
