"""Keep a deployed rules file fresh without ever losing the last good one.

Exports :func:`refresh` (one run: fetch → build → guard → validate → atomic swap → reload → state, under a lock),
:func:`run_every` (the long-lived loop), :func:`status` (what is deployed), :func:`validate_rules`,
:func:`check_guards`, :func:`check_falco_pid`, :func:`read_state`, the values :class:`RefreshOptions`,
:class:`Guards`, :class:`Reload`, :class:`State`, :class:`Deployed`, :class:`Failure`, :class:`Outcome`,
:class:`Status`, and :class:`Stop` / :class:`Stopped` (how SIGTERM and SIGINT end a run between steps).

One run, in order, each step able to stop it with the rules file untouched::

    lock PATH.lock      concurrent runs on one output wait (up to lock_timeout) or fail; they never interleave
    obtain              conditional GET (304: nothing new); no silent fallback to the cached or bundled snapshot;
                        data dated more than MAX_CLOCK_SKEW in the future is refused
    nothing new?        same data, same options, file as we left it: done (no build, no write, no reload)
    older?              data older than what is deployed is never deployed (no rollback); a state whose deployed
                        data is dated in the future (left by a version that accepted such data) is ignored, warned
    guard               too few relays, or entry/exit counts fell too far since the last good state (SanityError)
    build               too-wide networks and empty sets are refused by the build itself (SanityError)
    validate            YAML shape + every rule expands (load_rules), then each condition loads in an engine
    swap                write_file: temp file + fsync + rename, skipped when the bytes are the same
    reload              Falco's own file watch, SIGHUP to a pid (only a Falco's), or a command run without a shell
    state               JSON beside the rules (PATH.state.json): what is deployed, from which data, its sha256

The state file is the memory of the last good refresh: :func:`status` compares the rules file with it (a
different hash means someone edited the file), and the drop guard compares new counts with it. A failed run
records its error in the state and leaves everything else as it was.

Falco facts relied upon (Falco documentation: rules, hot reload): Falco watches its rules files and reloads on change,
SIGHUP also reloads, and Falco dry-runs new rules and keeps the old ones when they fail to load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any

import yaml

from tor_sets import __version__
from tor_sets.build import BuildOptions, Built, build
from tor_sets.errors import (
    FetchError,
    RuleError,
    SanityError,
    StaleDataError,
    TorSetsError,
    UsageError,
)
from tor_sets.falco.load import RuleSet, load_rules
from tor_sets.falco.model import CURRENT_FALCO, Profile, profile_for
from tor_sets.files import read_regular, remove_stale_temps, require_regular, write_file
from tor_sets.fleet import read_header
from tor_sets.onionoo import MAX_CLOCK_SKEW, FetchSettings, Obtained, obtain
from tor_sets.relays import Snapshot
from tor_sets.urls import redact_url
from tor_sets.verify import pick_validator, validate_text

__all__ = [
    "DROP_FLOOR",
    "FALCO_NAME",
    "STATE_SCHEMA",
    "VALIDATIONS",
    "Deployed",
    "Failure",
    "Guards",
    "Outcome",
    "RefreshOptions",
    "Reload",
    "State",
    "Status",
    "Stop",
    "Stopped",
    "check_falco_pid",
    "check_guards",
    "lock_path",
    "options_digest",
    "read_state",
    "refresh",
    "run_every",
    "state_path",
    "status",
    "status_document",
    "validate_rules",
]

log = logging.getLogger(__name__)

#: version of the state file's layout
STATE_SCHEMA = 1
#: how ``validate`` may be asked for; ``auto`` is ``engine`` when an engine is present, else ``yaml``
VALIDATIONS = ("auto", "none", "yaml", "engine")
#: counts below this in the last good state are not compared by the drop guard (3 → 1 is noise, not an outage)
DROP_FLOOR = 20
#: the counts the drop guard compares, with the words used in its message
GUARDED_COUNTS = (
    ("relays", "running relays"),
    ("entry_ipv4", "entry IPv4 addresses"),
    ("entry_ipv6", "entry IPv6 addresses"),
    ("exit_ipv4", "exit IPv4 addresses"),
    ("exit_ipv6", "exit IPv6 addresses"),
)
RELOAD_TIMEOUT_S = 120.0
#: the name (``/proc/PID/comm``, or the executable's) of the only processes ``--reload-pid`` signals
FALCO_NAME = "falco"
#: libyaml's safe loader when PyYAML was built with it (20x faster on a 120 kB rules file)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIME = "%Y-%m-%dT%H:%M:%SZ"
_PUBLISHED = "%Y-%m-%d %H:%M:%S"


# ---------------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Guards:
    """Sanity limits a new rules file must meet before it replaces the last good one.

    Attributes:
        min_relays: fewest running relays a document may list (the network has about 9,500-10,200; a document
            with far fewer is a broken or truncated answer, not a shrunken network).
        max_drop: largest allowed fall, as a fraction, of the relay count and of each entry/exit address count
            (per IP version) against the last good state; 1.0 switches the check off.
    """

    min_relays: int = 5000
    max_drop: float = 0.5


@dataclass(frozen=True, slots=True)
class Reload:
    """How Falco learns about a new rules file.

    With neither ``pid`` nor ``command``, nothing is done: Falco's own watch (``watch_config_files``, on by
    default) sees the rename and reloads.

    Attributes:
        pid: send SIGHUP to this process, checked to be Falco's (:func:`check_falco_pid`) before each signal.
        command: run this command (no shell) and require exit status 0, e.g. ``("systemctl", "reload", "falco")``.
        timeout: seconds the command may take.
    """

    pid: int | None = None
    command: tuple[str, ...] = ()
    timeout: float = RELOAD_TIMEOUT_S

    def describe(self) -> str:
        """One phrase for logs: ``falco's file watch``, ``SIGHUP to pid 42`` or ``command: ...``."""
        if self.pid is not None:
            return f"SIGHUP to pid {self.pid}"
        if self.command:
            return "command: " + " ".join(self.command)
        return "falco's file watch"


@dataclass(frozen=True, slots=True)
class RefreshOptions:
    """Everything one refresh needs.

    Attributes:
        output: the rules file to keep fresh.
        build: what the rules contain.
        settings: how to fetch (URL, timeouts, retries, size cap, download cache).
        input_path: read this details document instead of fetching.
        offline: do not fetch; only meaningful with ``allow_fallback`` (cached download, else bundled snapshot).
        allow_fallback: when the live fetch fails, use the cached download, else the bundled snapshot. Off by
            default: the bundled snapshot can be months old and would roll the rules back.
        validate: one of :data:`VALIDATIONS`.
        engine: the engine name for ``validate="engine"`` (None: the best one present for the rules' profile).
        guards: the sanity limits.
        reload: how Falco is told.
        state: the state file (None: ``PATH.state.json`` beside the rules).
        lock: the lock file (None: ``PATH.lock`` beside the rules).
        lock_timeout: seconds to wait for another refresh of the same output.
        max_age: the newest good data may be at most this old (:attr:`Outcome.stale` says when it is older).
    """

    output: Path
    build: BuildOptions = field(default_factory=BuildOptions)
    settings: FetchSettings = field(default_factory=FetchSettings)
    input_path: Path | None = None
    offline: bool = False
    allow_fallback: bool = False
    validate: str = "auto"
    engine: str | None = None
    guards: Guards = field(default_factory=Guards)
    reload: Reload = field(default_factory=Reload)
    state: Path | None = None
    lock: Path | None = None
    lock_timeout: float = 60.0
    max_age: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Deployed:
    """What the last good refresh put in place.

    Attributes:
        sha256: hex digest of the rules file as written.
        size: its size in bytes.
        relays_published: the data's date (UTC, naive, as Onionoo writes it).
        relays: running relays in that data.
        counts: addresses per role and family (``entry_ipv4`` ...).
        origin: ``live``, ``not-modified``, ``cache``, ``bundled`` or ``file``.
        source: the URL or path the data came from.
        validated: what validated it (``engine sysdig-modern 0.41.4``, ``yaml``, ``none``).
        options: digest of the build options (:func:`options_digest`).
        changed_at: when the file was last replaced (UTC).
        checked_at: when a refresh last succeeded, changed or not (UTC).
    """

    sha256: str
    size: int
    relays_published: datetime
    relays: int
    counts: Mapping[str, int]
    origin: str
    source: str
    validated: str
    options: str
    changed_at: datetime
    checked_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", MappingProxyType(dict(self.counts)))


@dataclass(frozen=True, slots=True)
class Failure:
    """The last failed refresh: when, its exit code and its one-line message."""

    at: datetime
    exit_code: int
    message: str


@dataclass(frozen=True, slots=True)
class State:
    """The state file: what is deployed, the last failure, and whether a reload is still owed.

    Attributes:
        rules: the rules file this state belongs to.
        deployed: the last good refresh (None before the first one).
        last_failure: the latest failure since the last success (None when the last run succeeded).
        reload_pending: the file was replaced but telling Falco failed; the next run tries again.
    """

    rules: str
    deployed: Deployed | None = None
    last_failure: Failure | None = None
    reload_pending: bool = False

    def to_json(self) -> str:
        """The state as a JSON document with sorted keys."""
        doc: dict[str, Any] = {
            "schema": STATE_SCHEMA,
            "tor_sets": __version__,
            "rules": self.rules,
            "reload_pending": self.reload_pending,
            "deployed": None,
            "last_failure": None,
        }
        if self.deployed is not None:
            d = self.deployed
            doc["deployed"] = {
                "sha256": d.sha256,
                "size": d.size,
                "relays_published": d.relays_published.strftime(_PUBLISHED),
                "relays": d.relays,
                "counts": dict(d.counts),
                "origin": d.origin,
                "source": d.source,
                "validated": d.validated,
                "options": d.options,
                "changed_at": d.changed_at.strftime(_TIME),
                "checked_at": d.checked_at.strftime(_TIME),
            }
        if self.last_failure is not None:
            f = self.last_failure
            doc["last_failure"] = {"at": f.at.strftime(_TIME), "exit_code": f.exit_code, "message": f.message}
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one successful refresh did.

    Attributes:
        action: ``wrote`` (the file was replaced), ``unchanged`` (nothing new) or ``kept`` (the data obtained was
            older than the deployed data, which stays).
        state: the state after the run.
        origin: where this run's data came from.
        relays_published: the date of this run's data.
        validated: what validated the new text this time (None when nothing needed validating).
        reloaded: how Falco was told (None when there was nothing to tell).
        warnings: lines worth a warning (fallback used, entries dropped, file edited by hand ...).
        stale: why the newest good data is older than ``max_age`` (None when it is fresh enough or unchecked).
    """

    action: str
    state: State
    origin: str
    relays_published: datetime
    validated: str | None = None
    reloaded: str | None = None
    warnings: tuple[str, ...] = ()
    stale: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """What :func:`status` found.

    Attributes:
        rules: the rules file.
        state_path: the state file looked at.
        sha256, size: of the rules file (None when it does not exist).
        state: the state (None when missing or unreadable; see ``state_error``).
        state_error: why the state could not be read.
        header_published: the data date written in the rules file's header.
        matches: whether the file is byte for byte what the last refresh wrote (None without a state).
        age: how old the deployed data is at ``now`` (negative: dated in the future).
    """

    rules: Path
    state_path: Path
    sha256: str | None
    size: int | None
    state: State | None
    state_error: str | None
    header_published: datetime | None
    matches: bool | None
    age: timedelta | None

    @property
    def exists(self) -> bool:
        return self.sha256 is not None

    @property
    def future(self) -> bool:
        """The deployed data is dated more than :data:`~tor_sets.onionoo.MAX_CLOCK_SKEW` ahead of ``now``."""
        return self.age is not None and -self.age > MAX_CLOCK_SKEW


# ---------------------------------------------------------------------------------------------------- stopping


class Stopped(BaseException):
    """A stop was requested (SIGTERM, SIGINT); raised between steps, never inside the swap.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Stop:
    """A stop request, set from a signal handler and honoured between steps.

    Install :meth:`handle` as the handler of SIGTERM and SIGINT. Outside a critical section the handler raises
    :class:`Stopped` at once (interrupting a fetch, an engine run or the sleep of the loop); inside one (the
    swap, the reload, the state) it only records the request, and the next :meth:`checkpoint` raises.
    """

    __slots__ = ("_critical", "signum")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._critical = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """Signal handler: record the request; raise :class:`Stopped` unless inside a critical section."""
        self.signum = signum
        if self._critical == 0:
            raise Stopped(signum)

    def checkpoint(self) -> None:
        """Raise :class:`Stopped` if a stop was requested."""
        if self.signum is not None:
            raise Stopped(self.signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a signal must not cut: the request waits for its end."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1

    def sleep(self, seconds: float) -> None:
        """Sleep, unless or until a stop is requested (then raise :class:`Stopped`)."""
        self.checkpoint()
        time.sleep(seconds)
        self.checkpoint()


# ---------------------------------------------------------------------------------------------------- files


def lock_path(output: Path, lock: Path | None = None) -> Path:
    """``lock`` if given, else ``PATH.lock``: the lock every refresh of ``output`` holds."""
    return lock if lock is not None else output.with_name(output.name + ".lock")


def state_path(output: Path, state: Path | None = None) -> Path:
    """``state`` if given, else ``PATH.state.json`` beside the rules."""
    return state if state is not None else output.with_name(output.name + ".state.json")


@contextlib.contextmanager
def hold_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``path`` (created if missing), waiting up to ``timeout`` seconds.

    The holder writes its pid into the file so that a waiter can name it. The file is never deleted (deleting a
    lock file lets two processes lock two different files).

    Raises:
        TorSetsError: the lock could not be had in time, or the file cannot be opened or is not a regular file.
    """
    require_regular(path, "the lock file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise TorSetsError(f"cannot open the lock file {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # put there since the check: never lock or write it
        os.close(fd)
        raise TorSetsError(f"the lock file {path} is not a regular file")
    try:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise TorSetsError(f"cannot lock {path}: {exc.strerror or exc}") from exc
            holder = _lock_holder(fd)
            if time.monotonic() >= deadline:
                raise TorSetsError(
                    f"another refresh of this output is running{holder} and holds {path}; "
                    f"gave up waiting after {timeout:g} s (--lock-timeout)"
                )
            if not waiting:
                log.info("waiting for another refresh%s that holds %s", holder, path)
                waiting = True
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


def _file_sha256(path: Path) -> tuple[str | None, int | None]:
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise TorSetsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return hashlib.sha256(data).hexdigest(), len(data)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _parse_utc(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError("not a time")
    return datetime.strptime(text, _TIME).replace(tzinfo=UTC)


def _state_from_doc(doc: object) -> State:
    if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA or not isinstance(doc.get("rules"), str):
        raise ValueError(f"not a tor-sets state document of schema {STATE_SCHEMA}")
    deployed = None
    if doc.get("deployed") is not None:
        d = doc["deployed"]
        counts = d["counts"]
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            raise ValueError("counts must map names to integers")
        deployed = Deployed(
            sha256=str(d["sha256"]),
            size=int(d["size"]),
            relays_published=datetime.strptime(str(d["relays_published"]), _PUBLISHED),
            relays=int(d["relays"]),
            counts={str(k): int(v) for k, v in counts.items()},
            origin=str(d["origin"]),
            source=redact_url(str(d["source"])),  # a state written before URLs were redacted is cleaned on save
            validated=str(d["validated"]),
            options=str(d["options"]),
            changed_at=_parse_utc(d["changed_at"]),
            checked_at=_parse_utc(d["checked_at"]),
        )
    failure = None
    if doc.get("last_failure") is not None:
        f = doc["last_failure"]
        failure = Failure(_parse_utc(f["at"]), int(f["exit_code"]), str(f["message"]))
    return State(
        rules=doc["rules"], deployed=deployed, last_failure=failure, reload_pending=bool(doc.get("reload_pending"))
    )


def read_state(path: Path) -> State | None:
    """The state file at ``path``, or None when there is none.

    Raises:
        TorSetsError: the file exists but cannot be read or is not a state document.
    """
    try:
        text = read_regular(path).decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise TorSetsError(f"cannot read the state file {path}: {reason}") from exc
    try:
        return _state_from_doc(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise TorSetsError(f"unreadable state file {path}: {exc}") from exc


def _save_state(path: Path, state: State) -> None:
    write_file(path, state.to_json().encode(), stream=False)


# ---------------------------------------------------------------------------------------------------- steps


def options_digest(options: BuildOptions) -> str:
    """A stable digest of the build options and the tor-sets version (same digest: same text for same data).

    >>> options_digest(BuildOptions()) == options_digest(BuildOptions())
    True
    """
    doc = {"tor_sets": __version__, "options": _canonical(options)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _canonical(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, frozenset | set):
        return sorted(json.dumps(_canonical(v), sort_keys=True) for v in value)
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # addresses and networks


def _obtain(options: RefreshOptions) -> Obtained:
    """The relay data for this run: the input file, else the live directory, else (only if allowed) a fallback.

    Raises:
        FetchError, DocumentError: the live directory failed and no fallback is allowed.
    """
    if options.offline and not options.allow_fallback and options.input_path is None:
        raise FetchError("offline mode needs allow_fallback (it uses the cached download or the bundled snapshot)")
    return obtain(
        input_path=options.input_path,
        settings=options.settings,
        offline=options.offline,
        fallback=options.allow_fallback,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]


def check_guards(snapshot: Snapshot, built: Built | None, guards: Guards, previous: Deployed | None) -> None:
    """Refuse data that would make rules silently stop detecting.

    Args:
        snapshot: the new data.
        built: the rules built from it (None: only the relay count is checked).
        guards: the limits.
        previous: the last good state to compare counts with (None: no drop check).

    Raises:
        SanityError: too few relays, or counts fell by more than ``guards.max_drop``.

    >>> from datetime import datetime
    >>> check_guards(Snapshot(datetime(2026, 1, 1), ()), None, Guards(min_relays=10), None)
    Traceback (most recent call last):
    ...
    tor_sets.errors.SanityError: only 0 running relays in the data (at least 10 required, --min-relays)
    """
    relays = len(snapshot.relays)
    if relays < guards.min_relays:
        raise SanityError(
            f"only {relays} running relays in the data (at least {guards.min_relays} required, --min-relays)"
        )
    if built is None or previous is None or guards.max_drop >= 1.0:
        return
    new = {"relays": relays, **built.sets.counts()}
    old = {"relays": previous.relays, **previous.counts}
    falls = []
    for key, words in GUARDED_COUNTS:
        before, after = old.get(key, 0), new.get(key, 0)
        if before >= DROP_FLOOR and after < before * (1 - guards.max_drop):
            falls.append(f"{words} {before} -> {after} (-{(before - after) * 100 / before:.0f} %)")
    if falls:
        raise SanityError(
            f"{', '.join(falls)} since the last good refresh (data of "
            f"{previous.relays_published:%Y-%m-%d %H:%M} UTC): more than the allowed drop of "
            f"{guards.max_drop * 100:g} % (--max-drop)"
        )


def _check_yaml(text: str) -> RuleSet:
    try:
        doc = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise RuleError(f"the new rules are not valid YAML: {_first_line(exc)}") from exc
    if not isinstance(doc, list) or not doc:
        raise RuleError("the new rules are not a YAML sequence of items")
    rules = 0
    for number, item in enumerate(doc, 1):
        if not isinstance(item, dict):
            raise RuleError(f"item {number} of the new rules is not a mapping")
        if "list" in item and not isinstance(item.get("items"), list):
            raise RuleError(f"list {str(item['list'])[:80]!r}: 'items' is not a sequence")
        if "rule" in item and not {"append", "override"} & item.keys():
            missing = [k for k in ("desc", "condition", "output", "priority") if item.get(k) in (None, "")]
            if missing:
                raise RuleError(f"rule {str(item['rule'])[:80]!r}: missing {', '.join(missing)}")
            rules += 1
    if not rules:
        raise RuleError("the new rules file holds no rule")
    ruleset = load_rules(text)
    for rule in ruleset.rules.values():
        if not rule.complete:
            raise RuleError(f"rule {rule.name!r}: cannot resolve {', '.join(rule.unresolved)}")
    return ruleset


def validate_rules(text: str, how: str = "auto", *, engine: str | None = None, profile: Profile | None = None) -> str:
    """Check that a rules text loads, before it replaces the deployed file.

    ``yaml``: it parses, is a sequence of items, every list's ``items`` is a sequence, every rule has desc,
    condition, output and priority, and :func:`~tor_sets.falco.load.load_rules` expands every rule completely.
    ``engine``: that, and a real engine loads it (:meth:`~tor_sets.engines.Engine.validate`: ``falco -V`` on real
    Falco; ``engine`` by name, else the best present for ``profile``). ``auto``: ``engine`` when an engine is
    present, else ``yaml``. ``none``: nothing.

    Returns:
        What was done: ``none``, ``yaml`` or ``engine NAME VERSION``.

    Raises:
        UsageError: ``how`` is not one of :data:`VALIDATIONS`.
        RuleError: the rules do not load.
        EngineError: the engine failed otherwise (``EngineUnavailable`` when ``engine`` was required).
    """
    if how not in VALIDATIONS:
        raise UsageError(f"validate must be one of {', '.join(VALIDATIONS)}")
    if how == "none":
        return "none"
    try:
        _check_yaml(text)
    except RuleError as exc:
        raise RuleError(f"the new rules failed validation: {exc}") from exc
    if how == "yaml":
        return "yaml"
    chosen = pick_validator(engine, profile=profile or profile_for(CURRENT_FALCO), required=how == "engine")
    if chosen is None:
        return "yaml"
    try:
        validate_text(text, chosen)
    except RuleError as exc:
        raise RuleError(f"the new rules failed validation on {exc}") from exc
    return f"engine {chosen.name} {chosen.version()}"


def check_falco_pid(pid: int) -> None:
    """Refuse ``pid`` unless it is a Falco process: its ``/proc/PID/comm`` or its executable's name is ``falco``.

    Raises:
        TorSetsError: there is no such process, or it is not Falco (exit 3).
    """
    proc = Path(f"/proc/{pid}")
    try:
        comm = (proc / "comm").read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        raise TorSetsError(f"no process with pid {pid} (--reload-pid)") from None
    except OSError as exc:
        raise TorSetsError(f"cannot look at pid {pid} (--reload-pid): {exc.strerror or exc}") from exc
    try:
        exe = os.path.basename(os.readlink(proc / "exe")).removesuffix(" (deleted)")  # Falco upgraded under it
    except OSError:
        exe = ""  # not allowed to look (another user's process): its name decides
    if FALCO_NAME not in (comm, exe):
        raise TorSetsError(
            f"pid {pid} is not a Falco process (its name is {comm!r}); not sending SIGHUP (--reload-pid)"
        )


def _sighup_falco(pid: int) -> None:
    """Send SIGHUP to ``pid`` after :func:`check_falco_pid`, through a pidfd so that a reused pid is never hit.

    Raises:
        TorSetsError: not Falco, gone, or the signal failed.
    """
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        raise TorSetsError(f"no process with pid {pid} (--reload-pid)") from None
    except OSError:
        pidfd = None  # a kernel without pidfd (before 5.3)
    try:
        check_falco_pid(pid)  # the pidfd's process, unless it died: then the signal below fails, never hits another
        if pidfd is None:
            os.kill(pid, signal.SIGHUP)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGHUP)
    except OSError as exc:
        raise TorSetsError(f"cannot send SIGHUP to pid {pid}: {exc.strerror or exc}") from exc
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _reload(reload: Reload) -> str | None:
    """Tell Falco; return how, or None when its file watch does it.

    Raises:
        TorSetsError: the signal or the command failed, or the pid is not Falco's (checked before each signal).
    """
    if reload.pid is not None:
        _sighup_falco(reload.pid)
        return reload.describe()
    if reload.command:
        try:
            done = subprocess.run(
                list(reload.command),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=reload.timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise TorSetsError(f"reload command {reload.command[0]!r} failed: {reason}") from exc
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            tail = f": {lines[-1][:200]}" if lines else ""
            raise TorSetsError(f"reload command {reload.command[0]!r} exited with status {done.returncode}{tail}")
        return reload.describe()
    return None


# ---------------------------------------------------------------------------------------------------- refresh


def refresh(options: RefreshOptions, *, stop: Stop | None = None, now: Callable[[], datetime] = _utcnow) -> Outcome:
    """Refresh the rules file once, under its lock; never leave it worse than it was.

    On any failure the rules file is untouched (or, if the reload failed, already replaced by valid rules), the
    error is recorded in the state file, and raised.

    Args:
        options: what to do.
        stop: where SIGTERM/SIGINT requests land (:class:`Stop`); checked between steps.
        now: the clock (UTC, aware), for tests.

    Returns:
        What the run did; :attr:`Outcome.stale` tells whether the newest good data is older than ``max_age``.

    Raises:
        FetchError, DocumentError: the upstream failed (exit 4).
        SanityError: a guard tripped (exit 5).
        RuleError: the new rules do not validate (exit 6).
        StaleDataError: the run failed and the deployed data is also older than ``max_age`` (exit 7).
        TorSetsError: the lock, a file, the engine or the reload failed (exit 3).
        Stopped: a stop was requested.
    """
    stop = stop or Stop()
    output = options.output
    path = state_path(output, options.state)
    require_regular(output, "the rules file")  # refresh reads both back: a FIFO or a device cannot serve
    require_regular(path, "the state file")
    with hold_lock(lock_path(output, options.lock), options.lock_timeout):
        for target in (output, path):
            remove_stale_temps(target)
        previous: State | None = None
        try:
            try:
                previous = read_state(path)
            except TorSetsError as exc:
                log.warning("%s; starting a new one (the drop guard has nothing to compare with this time)", exc)
            outcome = _refresh_locked(options, path, previous, stop, now)
        except TorSetsError as exc:
            with stop.critical():
                _record_failure(path, output, exc, now())
            deployed = _current_deployed(path)
            stale = _stale(deployed, options.max_age, now())
            if stale:
                raise StaleDataError(f"{stale}; this refresh failed: {exc}") from exc
            raise
    stale = _stale(outcome.state.deployed, options.max_age, now())
    return dataclasses.replace(outcome, stale=stale) if stale else outcome


def _current_deployed(path: Path) -> Deployed | None:
    with contextlib.suppress(TorSetsError):
        state = read_state(path)
        return state.deployed if state else None
    return None


def _stale(deployed: Deployed | None, max_age: timedelta | None, now: datetime) -> str | None:
    if max_age is None or deployed is None:
        return None
    age = now.replace(tzinfo=None) - deployed.relays_published
    if age <= max_age:
        return None
    return (
        f"the newest good relay data (of {deployed.relays_published:%Y-%m-%d %H:%M} UTC) is {_format_age(age)} "
        f"old, older than the allowed {_format_age(max_age)} (--max-age)"
    )


def _format_age(delta: timedelta) -> str:
    """``42 min``, ``5.5 h`` or ``12 days``.

    >>> _format_age(timedelta(minutes=42)), _format_age(timedelta(hours=5.5)), _format_age(timedelta(days=12))
    ('42 min', '5.5 h', '12 days')
    """
    seconds = delta.total_seconds()
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _record_failure(path: Path, output: Path, exc: TorSetsError, at: datetime) -> None:
    """Add the failure to the state file as it is now on disk (never rolling its other fields back)."""
    try:
        current = read_state(path)
    except TorSetsError:
        current = None
    message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    base = current if current is not None else State(rules=str(output.absolute()))
    try:
        _save_state(path, dataclasses.replace(base, last_failure=Failure(at, exc.exit_code, message)))
    except TorSetsError as write_error:
        log.warning("could not record the failure in %s: %s", path, write_error)


def _refresh_locked(
    options: RefreshOptions, path: Path, previous: State | None, stop: Stop, now: Callable[[], datetime]
) -> Outcome:
    output = options.output
    stop.checkpoint()
    obtained = _obtain(options)
    snapshot = obtained.snapshot
    warnings = [w for w in (obtained.warning, snapshot.dropped_summary()) if w]
    deployed = previous.deployed if previous else None
    if deployed is not None and deployed.relays_published - now().replace(tzinfo=None) > MAX_CLOCK_SKEW:
        # accepted by an earlier version: kept, it would refuse every genuine document as a rollback, forever
        warnings.append(
            f"the state records relay data of {deployed.relays_published:%Y-%m-%d %H:%M} UTC, in the future; "
            "ignoring it for the rollback and drop checks"
        )
        deployed = None
    reload_pending = previous.reload_pending if previous else False
    current_sha, _ = _file_sha256(output)
    intact = deployed is not None and current_sha == deployed.sha256
    if deployed is not None and current_sha is not None and not intact:
        warnings.append(
            f"{output} was changed since the last refresh (its sha256 differs from the state); replacing it"
        )
    digest = options_digest(options.build)
    published = snapshot.relays_published

    # nothing new (a 304, or the same data again), or data older than what is deployed: keep the file as it is
    if deployed is not None and intact:
        same = published == deployed.relays_published and digest == deployed.options
        older = published < deployed.relays_published
        if same or older:
            if older:
                warnings.append(
                    f"the relay data obtained ({obtained.origin}, of {published:%Y-%m-%d %H:%M} UTC) is older than "
                    f"the deployed data of {deployed.relays_published:%Y-%m-%d %H:%M} UTC; keeping the deployed rules"
                )
            with stop.critical():
                reloaded = _reload(options.reload) if reload_pending else None
                state = State(str(output.absolute()), dataclasses.replace(deployed, checked_at=now()))
                _save_state(path, state)
            return Outcome(
                "unchanged" if same else "kept", state, obtained.origin, published, None, reloaded, tuple(warnings)
            )

    # guards: the relay count first (cheap, and clearer than the build's "no entry relay" for an empty document)
    check_guards(snapshot, None, options.guards, deployed)
    stop.checkpoint()
    built = build(snapshot, options.build)  # refuses too-wide networks and empty sets itself
    check_guards(snapshot, built, options.guards, deployed)
    data = built.text.encode()
    new_sha = hashlib.sha256(data).hexdigest()
    stop.checkpoint()
    # validate, unless these are the very bytes validated when they were written
    if current_sha == new_sha and deployed is not None and deployed.sha256 == new_sha:
        validated, how = deployed.validated, None
    else:
        how = validate_rules(
            built.text,
            options.validate,
            engine=options.engine,
            profile=options.build.rules.profile,
        )
        validated = how
    stop.checkpoint()
    # swap, reload, state: one section that a signal does not cut
    with stop.critical():
        changed = write_file(output, data, stream=False)
        at = now()
        record = Deployed(
            sha256=new_sha,
            size=len(data),
            relays_published=published,
            relays=len(snapshot.relays),
            counts=built.sets.counts(),
            origin=obtained.origin,
            source=snapshot.source,
            validated=validated,
            options=digest,
            changed_at=at if changed or deployed is None else deployed.changed_at,
            checked_at=at,
        )
        reloaded = None
        if changed or reload_pending:
            if options.reload.pid is not None or options.reload.command:
                _save_state(path, State(str(output.absolute()), record, reload_pending=True))  # owed until it succeeds
            reloaded = _reload(options.reload)
        state = State(str(output.absolute()), record)
        _save_state(path, state)
    return Outcome(
        "wrote" if changed else "unchanged", state, obtained.origin, published, how, reloaded, tuple(warnings)
    )


# ---------------------------------------------------------------------------------------------------- the loop


def run_every(
    options: RefreshOptions,
    every: timedelta,
    *,
    stop: Stop,
    jitter: float = 0.1,
    rng: random.Random | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    iterations: int | None = None,
) -> None:
    """Refresh every ``every`` (± ``jitter``) until a stop is requested.

    Each failure is logged as one line and the loop goes on; a stop request ends it between steps (the function
    returns). Nothing is held between runs: the lock is taken per run.

    Args:
        options: as for :func:`refresh`.
        every: the period.
        stop: where SIGTERM/SIGINT land.
        jitter: fraction of ``every`` by which each wait varies (0.1: ±10 %), so that many hosts spread out.
        rng: the random source of the jitter.
        on_outcome: called with each successful run's outcome.
        iterations: stop after this many runs (tests); None runs until stopped.

    Raises:
        StaleDataError: the newest good data became older than ``options.max_age``.
    """
    rng = rng or random.Random()
    done = 0
    try:
        while True:
            try:
                outcome = refresh(options, stop=stop)
            except StaleDataError:
                raise
            except TorSetsError as exc:
                log.error("refresh failed (exit %d): %s", exc.exit_code, exc)
            else:
                if on_outcome is not None:
                    on_outcome(outcome)
                if outcome.stale:
                    raise StaleDataError(outcome.stale)
            done += 1
            if iterations is not None and done >= iterations:
                return
            delay = every.total_seconds() * rng.uniform(1 - jitter, 1 + jitter)
            log.info("next refresh in %s", _format_age(timedelta(seconds=delay)))
            stop.sleep(delay)
    except Stopped as stopped:
        log.info("stopped by %s between steps; the rules are whole", signal.Signals(stopped.signum).name)


# ---------------------------------------------------------------------------------------------------- status


def status(rules: Path, state: Path | None = None, *, now: datetime | None = None) -> Status:
    """What is deployed at ``rules``: its hash, the state of the last refresh, and whether they agree.

    Never raises on a missing or broken file: that is what it reports.
    """
    now = now or _utcnow()
    path = state_path(rules, state)
    sha: str | None
    size: int | None
    header: datetime | None = None
    try:
        sha, size = _file_sha256(rules)
        if sha is not None:
            header = read_header(rules.read_text(encoding="utf-8", errors="replace")).relays_published
    except (TorSetsError, OSError):
        sha, size = None, None
    loaded: State | None = None
    error: str | None = None
    try:
        loaded = read_state(path)
        if loaded is None:
            error = f"no state file at {path} (not deployed by `tor-sets refresh`?)"
    except TorSetsError as exc:
        error = str(exc)
    deployed = loaded.deployed if loaded else None
    matches = None if deployed is None else sha == deployed.sha256
    published = deployed.relays_published if deployed else (header.replace(tzinfo=None) if header else None)
    age = now.replace(tzinfo=None) - published if published else None
    return Status(rules, path, sha, size, loaded, error, header, matches, age)


def status_document(found: Status, max_age: timedelta | None = None) -> dict[str, Any]:
    """The ``status --json`` document (schema 1)."""
    state = json.loads(found.state.to_json()) if found.state else None
    return {
        "schema": STATE_SCHEMA,
        "rules": str(found.rules),
        "state_file": str(found.state_path),
        "exists": found.exists,
        "sha256": found.sha256,
        "size": found.size,
        "matches_state": found.matches,
        "age_seconds": int(found.age.total_seconds()) if found.age is not None else None,
        "future": found.future,
        "stale": bool(max_age is not None and found.age is not None and found.age > max_age),
        "state": state,
        "state_error": found.state_error,
    }
