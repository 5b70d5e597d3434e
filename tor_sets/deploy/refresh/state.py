"""The state file of a rules file: the memory of the last good refresh, and what ``tor-sets status`` reports.

Exports the values :class:`State`, :class:`Deployed`, :class:`Failure` and :class:`DeploymentStatus`;
:func:`state_path`, :func:`read_state`, :func:`save_state` (the file), :func:`deployment_status` and
:func:`status_document` (what is deployed, as a value and as the ``status --json`` document), :func:`options_digest`
(the build options as the state records them), :func:`file_sha256` and :func:`utcnow`.

The state file (:func:`state_path`, outside the rules folder; JSON with sorted keys, ``schema`` 1) holds what is
deployed, from which data, and its sha256: :func:`deployment_status` compares the rules file with it (a different
hash means someone edited the file), and the drop guard compares new counts with it. A failed run records its
error in it and leaves everything else as it was.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tor_sets import __version__
from tor_sets.build import BuildOptions
from tor_sets.errors import TorSetsError
from tor_sets.falco.header import read_header
from tor_sets.files import read_regular, write_file
from tor_sets.onionoo import MAX_CLOCK_SKEW
from tor_sets.urls import redact_url

log = logging.getLogger(__name__)

__all__ = [
    "Deployed",
    "DeploymentStatus",
    "Failure",
    "State",
    "deployment_status",
    "file_sha256",
    "options_digest",
    "read_state",
    "save_state",
    "state_path",
    "status_document",
    "utcnow",
]

#: version of the state file's layout
_STATE_SCHEMA = 1
_TIME = "%Y-%m-%dT%H:%M:%SZ"
_PUBLISHED = "%Y-%m-%d %H:%M:%S"


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
            "schema": _STATE_SCHEMA,
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


# ---------------------------------------------------------------------------------------------------- the file


#: overrides where the state and the lock of a refresh live by default
STATE_DIR_ENV = "TOR_SETS_STATE_DIR"


def state_dir() -> Path:
    """Where a refresh keeps its state and lock unless told: ``$TOR_SETS_STATE_DIR``, else ``/var/lib/tor-sets`` for
    root, else ``${XDG_STATE_HOME:-~/.local/state}/tor-sets``. Never beside the rules: Falco before 0.41 loads every
    file of its rules folder, and a state or lock file there would break its start."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/var/lib/tor-sets")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tor-sets"


def state_stem(output: Path) -> str:
    """The name the state and lock of ``output`` share: its file name and a digest of its absolute path, so that
    two rules files of one name in different folders never share a state.

    >>> state_stem(Path("/etc/falco/rules.d/tor_rules.yaml"))
    'tor_rules.yaml-297da912'
    """
    digest = hashlib.sha256(str(output.absolute()).encode()).hexdigest()[:8]
    return f"{output.name}-{digest}"


def state_path(output: Path, state: Path | None = None) -> Path:
    """``state`` if given, else ``STATE_DIR/NAME-DIGEST.state.json`` (see :func:`state_dir`, :func:`state_stem`)."""
    return state if state is not None else state_dir() / f"{state_stem(output)}.state.json"


def legacy_state_path(output: Path) -> Path:
    """Where versions before 0.2 kept the state by default: ``PATH.state.json`` beside the rules."""
    return output.with_name(output.name + ".state.json")


def adopt_legacy_state(output: Path) -> None:
    """Move a state an older version left beside the rules to :func:`state_path`, once, saying so.

    Only when the default state does not exist yet and the old one is a readable tor-sets state of ``output``.
    The old lock beside the rules (``PATH.lock``) is left alone: it holds nothing, and the folder's owner may remove it.
    """
    new, old = state_path(output), legacy_state_path(output)
    if new.exists() or not old.is_file():
        return
    try:
        state = read_state(old)
    except TorSetsError:
        return  # not ours, or broken: leave it, and start afresh
    if state is None or state.rules != str(output.absolute()):
        return
    save_state(new, state)
    old.unlink(missing_ok=True)
    log.warning(
        "moved the refresh state from %s to %s: Falco before 0.41 loads every file of a rules folder (remove %s too)",
        old,
        new,
        output.with_name(output.name + ".lock"),
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
    except (TorSetsError, ValueError, KeyError, TypeError) as exc:
        raise TorSetsError(f"unreadable state file {path}: {exc}") from exc


def save_state(path: Path, state: State) -> None:
    """Write the state file atomically (see :func:`tor_sets.files.write_file`).

    Raises:
        TorSetsError: the file cannot be written.
    """
    write_file(path, state.to_json().encode(), stream=False)


def _parse_utc(text: object) -> datetime:
    # "2026-03-01T12:00:00Z"
    if not isinstance(text, str):
        raise TorSetsError("not a time")
    return datetime.strptime(text, _TIME).replace(tzinfo=UTC)


def _state_from_doc(doc: object) -> State:
    # {"schema": 1, "rules": "...", "deployed": {...} | null, "last_failure": {...} | null, "reload_pending": false}
    if not isinstance(doc, dict) or doc.get("schema") != _STATE_SCHEMA or not isinstance(doc.get("rules"), str):
        raise TorSetsError(f"not a tor-sets state document of schema {_STATE_SCHEMA}")
    deployed = None
    if doc.get("deployed") is not None:
        d = doc["deployed"]
        counts = d["counts"]
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            raise TorSetsError("counts must map names to integers")
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


def file_sha256(path: Path) -> tuple[str | None, int | None]:
    """The sha256 (hex) and size of the regular file at ``path``; ``(None, None)`` when it does not exist.

    Raises:
        TorSetsError: it exists but cannot be read (or is not a regular file).
    """
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise TorSetsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return hashlib.sha256(data).hexdigest(), len(data)


def utcnow() -> datetime:
    """This host's clock, UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


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


# ---------------------------------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    """What :func:`deployment_status` found.

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


def deployment_status(rules: Path, state: Path | None = None, *, now: datetime | None = None) -> DeploymentStatus:
    """What is deployed at ``rules``: its hash, the state of the last refresh, and whether they agree.

    Never raises on a missing or broken file: that is what it reports.
    """
    now = now or utcnow()
    path = state_path(rules, state)
    if state is None and not path.exists() and legacy_state_path(rules).is_file():
        path = legacy_state_path(rules)  # an older version's, until the next refresh moves it
    sha: str | None
    size: int | None
    header: datetime | None = None
    try:
        sha, size = file_sha256(rules)
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
    return DeploymentStatus(rules, path, sha, size, loaded, error, header, matches, age)


def status_document(found: DeploymentStatus, max_age: timedelta | None = None) -> dict[str, Any]:
    """The ``status --json`` document (schema 1)."""
    state = json.loads(found.state.to_json()) if found.state else None
    return {
        "schema": _STATE_SCHEMA,
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
