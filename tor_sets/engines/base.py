"""The engine contract: one seam, :meth:`Engine.replay` (a capture and rules files in, per rule the events it
matched out), and the values engines return.

Exports :class:`Engine` (the abstract engine: class settings plus hooks), :class:`Match`, :class:`Run`,
:class:`Replay`, :class:`Plugin`, :class:`Validation`, :class:`Workspace`, :func:`temporary_workspace`,
:func:`place`, :func:`first_match_only`, :func:`check_rule_matching`, :data:`DEFAULT_FIELDS`, :data:`RULE_MATCHING`
and :data:`NA`. The only
place an engine starts a process is :mod:`tor_sets.engines.process`; the sysdig template is in
:mod:`tor_sets.engines.sysdig`, the Falco one in :mod:`tor_sets.engines.falco`.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

from tor_sets.errors import EngineError, EngineUnavailable, RuleError

__all__ = [
    "DEFAULT_FIELDS",
    "NA",
    "RULE_MATCHING",
    "Engine",
    "Match",
    "Plugin",
    "Replay",
    "Run",
    "Validation",
    "Workspace",
    "check_rule_matching",
    "first_match_only",
    "place",
    "temporary_workspace",
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


def check_rule_matching(value: str) -> None:
    """Refuse a ``rule_matching`` that is not one of :data:`RULE_MATCHING` (every engine's ``replay`` does).

    Raises:
        RuleError: naming the settings there are.
    """
    if value not in RULE_MATCHING:
        raise RuleError(f"rule_matching must be one of {', '.join(RULE_MATCHING)}, not {value!r}")


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
