"""The engine contract and its one subprocess seam.

Exports :class:`Match` (one event that passed a condition), :class:`Run` (the result of one replay),
:class:`Engine` (the abstract engine: class settings plus hooks), :class:`SysdigEngine` (the template every
sysdig-based engine fills in: stage files, run one subprocess, parse its output), :class:`Completed` and
:func:`run_process` (the only place an engine starts a process and the only place its failures are
translated), and :data:`DEFAULT_FIELDS`.

Why a chisel: sysdig takes its filter as one command-line argument, and Linux caps one argument at 128 KiB
(``MAX_ARG_STRLEN``), while a full Tor relay list expanded into a condition is larger. The Lua chisel shipped in
``chisels/tor_sets_match.lua`` reads the condition from a file and installs it with ``chisel.set_filter()``, which
has no such limit, then prints one JSON line per matching event. Events are labelled by their timestamp
(``evt.rawtime`` split into ``.s`` and ``.ns``, because Lua holds numbers as doubles) since event numbers differ
between engines for the same capture.

See docs/verify.md and the module docstrings of tor_sets.provision and tor_sets.verify.capture.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

from tor_sets.errors import EngineError, EngineTimeout, EngineUnavailable, RuleError

__all__ = [
    "DEFAULT_FIELDS",
    "RULE_MATCHING",
    "Completed",
    "Engine",
    "Match",
    "Plugin",
    "Replay",
    "Run",
    "SysdigEngine",
    "Validation",
    "Workspace",
    "first_match_only",
    "raise_for_run",
    "run_process",
]

#: fields printed for every match unless the caller asks for others (all printable on both sysdig builds)
DEFAULT_FIELDS: tuple[str, ...] = (
    "evt.type",
    "evt.rawres",
    "proc.name",
    "fd.l4proto",
    "fd.cip",
    "fd.cport",
    "fd.sip",
    "fd.sport",
    "fd.lip",
    "fd.rip",
)

#: how sysdig prints a field without a value; the chisel prints JSON null, which becomes this
NA = "<NA>"
#: Falco's ``rule_matching`` settings: every matching rule alerts, or only the first in load order
RULE_MATCHING = ("all", "first")

CHISEL_NAME = "tor_sets_match.lua"
STDERR_TAIL_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Match:
    """One event that satisfied a condition.

    Attributes:
        ts_ns: the event's timestamp in nanoseconds since the epoch (the label shared by all engines).
        evt_type: the event type as the engine names it (``connect``, ``accept4``, ...).
        fields: every requested field, as printed; ``"<NA>"`` where the engine has no value.
    """

    ts_ns: int
    evt_type: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def __hash__(self) -> int:
        return hash((self.ts_ns, self.evt_type, tuple(sorted(self.fields.items()))))


@dataclass(frozen=True, slots=True)
class Run:
    """The result of one replay of a capture through an engine.

    Attributes:
        matches: the matching events in capture order.
        wall_s: wall-clock seconds of the engine process (staging excluded; container start included).
        max_rss_kb: peak resident set size of the engine process in KiB (0 when unknown).
        stderr_tail: the last few thousand characters the engine wrote to stderr.
        cpu_s: user + system CPU seconds of the engine process (steadier than wall time on a busy machine;
            for a Docker engine it is only the client's).
    """

    matches: tuple[Match, ...]
    wall_s: float
    max_rss_kb: int
    stderr_tail: str = ""
    cpu_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Plugin:
    """A plugin a replay loads (Falco's ``plugins:`` entry; sysdig's ``-H LIBRARY:CONFIG``).

    Attributes:
        name: the name compiled into the library (Falco's ``load_plugins`` names it).
        library: the shared library on this machine.
        init_config: the plugin's configuration (a JSON object).
        files: keys of ``init_config`` whose values are paths on this machine that the engine must be able to
            read: an engine that runs in a chroot or a container copies them into its scratch folder and
            rewrites the value.
    """

    name: str
    library: Path
    init_config: Mapping[str, object] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "init_config", MappingProxyType(dict(self.init_config)))

    def staged(self, directory: Path, inside: Callable[[str], str]) -> tuple[str, str]:
        """Copy the library and files into ``directory``; return the library's and config's view from the engine.

        Raises:
            EngineError: a file cannot be copied.
        """
        config = dict(self.init_config)
        try:
            library = directory / f"lib-{self.name}.so"
            shutil.copyfile(self.library, library)
            for key in self.files:
                source = Path(str(config[key]))
                target = directory / f"{self.name}-{key}{source.suffix}"
                shutil.copyfile(source, target)
                config[key] = inside(target.name)
        except OSError as exc:
            raise EngineError(f"cannot stage plugin {self.name}: {exc.strerror or exc}") from exc
        return inside(library.name), json.dumps(config, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Validation:
    """What an engine said of one rules file.

    Attributes:
        path: the file (as given).
        ok: the engine loads it.
        warnings: its warnings about it (Falco's ``LOAD_DEPRECATED_ITEM`` ...).
        message: its own words: each error and warning as ``CODE (description): message``, or ``Ok``.
    """

    path: Path
    ok: bool
    warnings: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True)
class Replay:
    """What one replay of a capture against rules files gave: the events each rule matched.

    Attributes:
        engine: the engine's name.
        hits: for every enabled syscall rule of the files, the events it matched, in capture order (``()``
            when it matched none).
        problems: rules the engine could not evaluate, and why (a sysdig engine cannot expand a condition).
        wall_s, cpu_s, max_rss_kb: measurements summed over the engine's processes.
        stderr_tail: the end of the engine's stderr (its warnings).
    """

    engine: str
    hits: Mapping[str, tuple[Match, ...]]
    problems: Mapping[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_kb: int = 0
    stderr_tail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hits", MappingProxyType(dict(self.hits)))
        object.__setattr__(self, "problems", MappingProxyType(dict(self.problems)))

    def fired(self, rule: str) -> frozenset[int]:
        """Timestamps of the events ``rule`` matched."""
        return frozenset(m.ts_ns for m in self.hits.get(rule, ()))


def first_match_only(hits: Mapping[str, Sequence[Match]], order: Sequence[str]) -> dict[str, tuple[Match, ...]]:
    """Falco's ``rule_matching: first``: each event stays only with the first rule (in ``order``) that matched it.

    >>> a, b = Match(1, "connect"), Match(2, "connect")
    >>> first_match_only({"r1": [a], "r2": [a, b]}, ["r1", "r2"])
    {'r1': (Match(ts_ns=1, evt_type='connect', fields=mappingproxy({})),), 'r2': (Match(ts_ns=2, evt_type='connect', \
fields=mappingproxy({})),)}
    """
    seen: set[int] = set()
    out: dict[str, tuple[Match, ...]] = {}
    for rule in order:
        kept = tuple(m for m in hits.get(rule, ()) if m.ts_ns not in seen)
        seen.update(m.ts_ns for m in kept)
        out[rule] = kept
    return out


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished process, as :func:`run_process` saw it."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    max_rss_kb: int
    cpu_s: float = 0.0

    @property
    def stderr_tail(self) -> str:
        """The last :data:`STDERR_TAIL_CHARS` characters of stderr."""
        return self.stderr[-STDERR_TAIL_CHARS:]


# The reaper: a small Python that forks the engine, waits for it and reports its rusage on a pipe.
# Why not wait4() on our own child: Linux charges a process's peak RSS with the RSS of the address space it
# had when it called execve(), and a child of this interpreter starts as a copy of it (vfork shares it), so
# ru_maxrss of a direct child is never below the RSS of the caller (tens to hundreds of MB here). Forked from
# the reaper (~5 MB), the engine starts small and ru_maxrss is its own peak.
_REAPER = """\
import os, sys, time
report = int(sys.argv[1])
os.set_inheritable(report, False)
start = time.monotonic_ns()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        os.write(report, b"exec-error %d\\n" % exc.errno)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic_ns() - start
cpu = int((usage.ru_utime + usage.ru_stime) * 1e9)
os.write(report, b"done %d %d %d %d\\n" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss, wall, cpu))
"""


def run_process(
    argv: Sequence[str],
    *,
    engine: str,
    timeout: float,
    on_timeout: Callable[[], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run one engine process to its end and measure it; the only subprocess seam of the engines.

    The process runs under a small reaper in a session of its own, so that a timeout kills both. The reaper
    reports the engine's exit status, peak RSS (``wait4`` rusage of the engine itself; ``chroot`` executes
    the engine in place) and wall time. A non-zero exit status is returned, not raised: what it means is the
    caller's business.

    Args:
        argv: the command line.
        engine: engine name for error messages.
        timeout: seconds before the process group is killed.
        on_timeout: called after the kill, e.g. to stop a container the client left running.
        env: environment for the child (default: inherited).

    Returns:
        The exit status, the decoded output and the measurements.

    Raises:
        EngineUnavailable: the program does not exist or may not be executed.
        EngineTimeout: the process ran longer than ``timeout``.
        EngineError: the reaper died without a report.
    """
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(read_fd, "rb") as report:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER, str(write_fd), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env=None if env is None else dict(env),
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # interrupted: take the engine down with us
            _kill_group(proc)
            raise
        else:
            timed_out = False
        if timed_out:
            _kill_group(proc)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", errors="replace")
        stderr = err.read().decode("utf-8", errors="replace")
        lines = report.read().decode("ascii", errors="replace").split()
    if timed_out:
        if on_timeout is not None:
            on_timeout()
        raise EngineTimeout(
            f"{engine}: no result within {timeout:g} s (killed)", engine=engine, stderr=stderr[-STDERR_TAIL_CHARS:]
        )
    if lines[:1] == ["exec-error"]:
        reason = os.strerror(int(lines[1]))
        raise EngineUnavailable(f"{engine}: cannot run {argv[0]}: {reason}", engine=engine)
    if lines[:1] != ["done"] or len(lines) != 5:
        raise EngineError(
            f"{engine}: the engine runner ended without a report (exit {proc.returncode})",
            engine=engine,
            returncode=proc.returncode,
            stderr=stderr[-STDERR_TAIL_CHARS:],
        )
    returncode, max_rss_kb, wall_ns, cpu_ns = (int(x) for x in lines[1:])
    return Completed(tuple(argv), returncode, stdout, stderr, wall_ns / 1e9, max_rss_kb, cpu_ns / 1e9)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of ``proc`` (the reaper and the engine) and reap the reaper."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Engine(abc.ABC):
    """A real rule engine that replays capture files.

    Subclasses set :attr:`name` and :attr:`description` and fill in the hooks. ``check()`` is cheap enough to
    call before every use; the other methods call it themselves.
    """

    #: the engine's key in :data:`tor_sets.engines.ENGINES`
    name: ClassVar[str]
    #: one line for ``tor-sets engines list``
    description: ClassVar[str]

    @abc.abstractmethod
    def check(self) -> None:
        """Verify the engine can run here.

        Raises:
            EngineUnavailable: with exactly what is missing and the command that provides it.
        """

    def available(self) -> bool:
        """Whether :meth:`check` passes."""
        try:
            self.check()
        except EngineUnavailable:
            return False
        return True

    @abc.abstractmethod
    def version(self) -> str:
        """The engine's version as it reports it (e.g. ``0.41.4+repack``)."""

    @abc.abstractmethod
    def filter(
        self, capture: Path, condition: str, fields: Sequence[str] = DEFAULT_FIELDS, *, timeout: float = 300
    ) -> Run:
        """Replay ``capture`` and return the events that satisfy ``condition``.

        Args:
            capture: a capture file (.scap, plain or gzip).
            condition: a filter condition with lists and macros already expanded; any length.
            fields: fields to print for each match (printable fields only: no ``*net`` fields).
            timeout: seconds before the engine is killed.

        Raises:
            RuleError: the engine rejects the condition.
            EngineError: the engine failed otherwise (``EngineUnavailable``, ``EngineTimeout``).
        """

    @abc.abstractmethod
    def compile(self, condition: str, *, timeout: float = 60) -> None:
        """Check that the engine loads ``condition``, without replaying anything.

        Raises:
            RuleError: with the engine's own message when the condition does not load.
            EngineError: the engine failed otherwise.
        """

    @abc.abstractmethod
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
        """Replay ``capture`` against rules files loaded in order, as Falco would; the events each rule matched.

        Falco engines run the files as they are; sysdig engines load them with tor-sets' own loader
        (:mod:`tor_sets.falco.load`) and replay each enabled syscall rule's expanded condition.

        Args:
            capture: a capture file (.scap, plain or gzip).
            rules: rules files, loaded in this order.
            fields: fields to report for each match (printable fields only: no ``*net`` fields).
            plugins: plugins to load.
            rule_matching: ``all`` (every rule that matches an event) or ``first`` (Falco's default: only the
                first in load order).
            timeout: seconds before each engine process is killed.

        Raises:
            RuleError: the rules do not load.
            EngineError: the engine failed otherwise (``EngineUnavailable``, ``EngineTimeout``).
        """

    @abc.abstractmethod
    def validate(
        self, rules: Sequence[Path], *, plugins: Sequence[Plugin] = (), timeout: float = 120
    ) -> tuple[Validation, ...]:
        """Load rules files together, in order, as Falco would at start; the engine's verdict on each file.

        Falco engines run ``falco -V``; sysdig engines load the files with tor-sets' loader and compile each enabled
        rule's expanded condition, and judge the files as a whole (every file gets the same verdict).

        Raises:
            EngineError: the engine failed in a way that is no verdict (it could not start).
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@dataclass(frozen=True, slots=True)
class Workspace:
    """A scratch folder the engine can read: ``host`` as we see it, ``inside`` as the engine sees it."""

    host: Path
    inside: str

    def path(self, name: str) -> str:
        """The engine's view of ``name`` inside the workspace."""
        return f"{self.inside.rstrip('/')}/{name}"


def chisel_source() -> bytes:
    """The bytes of the shipped Lua chisel."""
    return (resources.files("tor_sets.engines") / "chisels" / CHISEL_NAME).read_bytes()


def write_spec(path: Path, mode: str, fields: Sequence[str], condition: str) -> None:
    """Write the chisel's spec file: mode line, fields line, then the condition."""
    for name in fields:
        if not name or any(ch.isspace() for ch in name):
            raise RuleError(f"invalid field name {name!r}")
    path.write_text(f"{mode}\n{' '.join(fields)}\n{condition}", encoding="utf-8")


def place(capture: Path, directory: Path) -> Path:
    """Hard-link (or copy) ``capture`` into ``directory`` and return the new path.

    Raises:
        EngineError: the capture cannot be read.
    """
    target = directory / "capture.scap"
    try:
        try:
            os.link(capture, target)
        except OSError:
            shutil.copyfile(capture, target)
    except OSError as exc:
        raise EngineError(f"cannot stage capture {capture}: {exc.strerror or exc}") from exc
    return target


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

        if rule_matching not in RULE_MATCHING:
            raise RuleError(f"rule_matching must be one of {', '.join(RULE_MATCHING)}, not {rule_matching!r}")
        ruleset = load_rules(*rules)
        hits: dict[str, tuple[Match, ...]] = {}
        problems: dict[str, str] = {}
        wall = cpu = 0.0
        rss = 0
        tails = []
        for rule in ruleset.rules.values():
            if not rule.enabled or rule.source != "syscall":
                continue
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
            for rule in ruleset.rules.values():
                if not rule.enabled or rule.source != "syscall":
                    continue
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


@contextlib.contextmanager
def temporary_workspace(parent: Path | None, inside: Callable[[Path], str]) -> Iterator[Workspace]:
    """A ``tor-sets-XXXX`` folder under ``parent`` (default: the system temp folder), removed afterwards.

    Args:
        parent: where to make the folder.
        inside: maps the host path of the folder to the engine's view of it.

    Raises:
        EngineError: the folder cannot be made.
    """
    try:
        host = Path(tempfile.mkdtemp(prefix="tor-sets-", dir=parent))
    except OSError as exc:
        raise EngineError(f"cannot make a scratch folder in {parent or tempfile.gettempdir()}: {exc.strerror}") from exc
    try:
        host.chmod(0o755)
        yield Workspace(host, inside(host))
    finally:
        shutil.rmtree(host, ignore_errors=True)
