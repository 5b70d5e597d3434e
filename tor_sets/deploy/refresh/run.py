"""One refresh of a deployed rules file, and the long-lived loop that repeats it.

Exports :func:`refresh` (one run, under the lock), :func:`run_every` (the loop), the values
:class:`RefreshOptions` and :class:`Outcome`, and :class:`Stop` / :class:`Stopped` (how SIGTERM and SIGINT end a
run between steps, never inside the swap). The steps are described in :mod:`tor_sets.deploy.refresh`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType

from tor_sets.build import BuildOptions, build
from tor_sets.deploy.refresh.guards import Guards, check_guards, future_reason, rollback_reason, stale_reason
from tor_sets.deploy.refresh.lock import hold_lock, lock_path
from tor_sets.deploy.refresh.reload import Reload, reload_falco
from tor_sets.deploy.refresh.state import (
    Deployed,
    Failure,
    State,
    adopt_legacy_state,
    file_sha256,
    options_digest,
    read_state,
    save_state,
    state_path,
    utcnow,
)
from tor_sets.deploy.refresh.validate import validate_rules
from tor_sets.errors import StaleDataError, TorSetsError, UsageError
from tor_sets.files import remove_stale_temps, require_regular, write_file
from tor_sets.onionoo import FetchSettings, Obtained, obtain
from tor_sets.relays import format_age

__all__ = ["Outcome", "RefreshOptions", "Stop", "Stopped", "refresh", "run_every"]

log = logging.getLogger(__name__)


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
        validate: one of :data:`~tor_sets.deploy.refresh.validate.VALIDATIONS`.
        engine: the engine name for ``validate="engine"`` (None: the best one present for the rules' profile).
        guards: the sanity limits.
        reload: how Falco is told.
        state: the state file (None: :func:`~tor_sets.deploy.refresh.state.state_path`, outside the rules folder).
        lock: the lock file (None: :func:`~tor_sets.deploy.refresh.lock.lock_path`, beside the state).
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


# ---------------------------------------------------------------------------------------------------- refresh


def refresh(options: RefreshOptions, *, stop: Stop | None = None, now: Callable[[], datetime] = utcnow) -> Outcome:
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
        UsageError: ``offline`` without ``allow_fallback`` or ``input_path``, or an unknown ``validate`` (exit 2).
        TorSetsError: the lock, a file, the engine or the reload failed (exit 3).
        Stopped: a stop was requested.
    """
    stop = stop or Stop()
    output = options.output
    path = state_path(output, options.state)
    require_regular(output, "the rules file")  # refresh reads both back: a FIFO or a device cannot serve
    require_regular(path, "the state file")
    with hold_lock(lock_path(output, options.lock), options.lock_timeout):
        if options.state is None:
            adopt_legacy_state(output)
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
            stale = stale_reason(_current_deployed(path), options.max_age, now())
            if stale:
                raise StaleDataError(f"{stale}; this refresh failed: {exc}") from exc
            raise
    stale = stale_reason(outcome.state.deployed, options.max_age, now())
    return dataclasses.replace(outcome, stale=stale) if stale else outcome


def _current_deployed(path: Path) -> Deployed | None:
    with contextlib.suppress(TorSetsError):
        state = read_state(path)
        return state.deployed if state else None
    return None


def _record_failure(path: Path, output: Path, exc: TorSetsError, at: datetime) -> None:
    """Add the failure to the state file as it is now on disk (never rolling its other fields back)."""
    try:
        current = read_state(path)
    except TorSetsError:
        current = None
    message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    base = current if current is not None else State(rules=str(output.absolute()))
    try:
        save_state(path, dataclasses.replace(base, last_failure=Failure(at, exc.exit_code, message)))
    except TorSetsError as write_error:
        log.warning("could not record the failure in %s: %s", path, write_error)


def _obtain(options: RefreshOptions) -> Obtained:
    """The relay data for this run: the input file, else the live directory, else (only if allowed) a fallback.

    Raises:
        FetchError, DocumentError: the live directory failed and no fallback is allowed.
        UsageError: ``offline`` without ``allow_fallback`` or an input file.
    """
    if options.offline and not options.allow_fallback and options.input_path is None:
        raise UsageError("offline mode needs allow_fallback (it uses the cached download or the bundled snapshot)")
    return obtain(
        input_path=options.input_path,
        settings=options.settings,
        offline=options.offline,
        fallback=options.allow_fallback,
    )


def _refresh_locked(
    options: RefreshOptions, path: Path, previous: State | None, stop: Stop, now: Callable[[], datetime]
) -> Outcome:
    output = options.output
    stop.checkpoint()
    obtained = _obtain(options)
    snapshot = obtained.snapshot
    warnings = [w for w in (obtained.warning, snapshot.dropped_summary()) if w]
    deployed = previous.deployed if previous else None
    if deployed is not None and (future := future_reason(deployed, now())):
        warnings.append(future)
        deployed = None
    reload_pending = previous.reload_pending if previous else False
    current_sha, _ = file_sha256(output)
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
        older = rollback_reason(published, obtained.origin, deployed)
        if same or older:
            if older:
                warnings.append(older)
            with stop.critical():
                reloaded = reload_falco(options.reload) if reload_pending else None
                state = State(str(output.absolute()), dataclasses.replace(deployed, checked_at=now()))
                save_state(path, state)
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
                save_state(path, State(str(output.absolute()), record, reload_pending=True))  # owed until it succeeds
            reloaded = reload_falco(options.reload)
        state = State(str(output.absolute()), record)
        save_state(path, state)
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
    on_failure: Callable[[TorSetsError], None] | None = None,
    iterations: int | None = None,
) -> None:
    """Refresh every ``every`` (± ``jitter``) until a stop is requested.

    A failed run is handed to ``on_failure`` (by default logged as one line) and the loop goes on; a stop request
    ends it between steps (the function returns). Nothing is held between runs: the lock is taken per run.

    Args:
        options: as for :func:`refresh`.
        every: the period.
        stop: where SIGTERM/SIGINT land.
        jitter: fraction of ``every`` by which each wait varies (0.1: ±10 %), so that many hosts spread out.
        rng: the random source of the jitter.
        on_outcome: called with each successful run's outcome.
        on_failure: called with each failed run's error (None: logged, ``refresh failed (exit N): ...``).
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
                if on_failure is not None:
                    on_failure(exc)
                else:
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
            log.info("next refresh in %s", format_age(timedelta(seconds=delay)))
            stop.sleep(delay)
    except Stopped as stopped:
        log.info("stopped by %s between steps; the rules are whole", signal.Signals(stopped.signum).name)
