"""Keep a deployed rules file fresh without ever losing the last good one.

Exports :func:`refresh` (one run: fetch → build → guard → validate → atomic swap → reload → state, under a lock),
:func:`run_every` (the long-lived loop), :func:`deployment_status` and :func:`status_document` (what is deployed),
:func:`validate_rules`, :func:`check_guards`, :func:`check_falco_pid`, :func:`read_state`, the values
:class:`RefreshOptions`, :class:`Guards`, :class:`Reload`, :class:`State`, :class:`Deployed`, :class:`Failure`,
:class:`Outcome`, :class:`DeploymentStatus`, and :class:`Stop` / :class:`Stopped` (how SIGTERM and SIGINT end a run
between steps). One module per job: ``run`` (the run and the loop), ``state`` (the state file and the status),
``lock``, ``guards``, ``validate`` and ``reload``.

One run, in order, each step able to stop it with the rules file untouched::

    lock                concurrent runs on one output wait (up to lock_timeout) or fail; they never interleave
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
    state               JSON outside the rules folder (state_path): what is deployed, from which data, its sha256

The state file is the memory of the last good refresh: :func:`deployment_status` compares the rules file with it (a
different hash means someone edited the file), and the drop guard compares new counts with it. A failed run
records its error in the state and leaves everything else as it was. Messages name the option fields
(``min_relays``, ``max_drop``, ``max_age``, ``lock_timeout``, ``reload.pid``); the command line shows its flags.
"""

from __future__ import annotations

from tor_sets.deploy.refresh.guards import Guards, check_guards
from tor_sets.deploy.refresh.reload import Reload, check_falco_pid
from tor_sets.deploy.refresh.run import Outcome, RefreshOptions, Stop, Stopped, refresh, run_every
from tor_sets.deploy.refresh.state import (
    Deployed,
    DeploymentStatus,
    Failure,
    State,
    deployment_status,
    read_state,
    status_document,
)
from tor_sets.deploy.refresh.validate import VALIDATIONS, validate_rules

__all__ = [
    "VALIDATIONS",
    "Deployed",
    "DeploymentStatus",
    "Failure",
    "Guards",
    "Outcome",
    "RefreshOptions",
    "Reload",
    "State",
    "Stop",
    "Stopped",
    "check_falco_pid",
    "check_guards",
    "deployment_status",
    "read_state",
    "refresh",
    "run_every",
    "status_document",
    "validate_rules",
]
