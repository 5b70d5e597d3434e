"""How Falco learns about a new rules file: its own file watch, SIGHUP to its pid, or a command.

Exports :class:`Reload` (the choice), :func:`reload_falco` (do it) and :func:`check_falco_pid` (refuse a pid that
is not Falco's, checked before each signal). Falco watches its rules files and reloads on change, SIGHUP also
reloads, and Falco dry-runs new rules and keeps the old ones when they fail to load (Falco documentation: rules,
hot reload).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tor_sets.errors import TorSetsError

__all__ = ["Reload", "check_falco_pid", "reload_falco"]

#: the name (``/proc/PID/comm``, or the executable's) of the only processes ``reload.pid`` signals
_FALCO_NAME = "falco"
_RELOAD_TIMEOUT_S = 120.0


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
    timeout: float = _RELOAD_TIMEOUT_S

    def describe(self) -> str:
        """One phrase for logs: ``falco's file watch``, ``SIGHUP to pid 42`` or ``command: ...``."""
        if self.pid is not None:
            return f"SIGHUP to pid {self.pid}"
        if self.command:
            return "command: " + " ".join(self.command)
        return "falco's file watch"


def check_falco_pid(pid: int) -> None:
    """Refuse ``pid`` unless it is a Falco process: its ``/proc/PID/comm`` or its executable's name is ``falco``.

    Raises:
        TorSetsError: there is no such process, or it is not Falco (exit 3; the message names ``reload.pid``).
    """
    proc = Path(f"/proc/{pid}")
    try:
        comm = (proc / "comm").read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        raise TorSetsError(f"no process with pid {pid} (reload.pid)") from None
    except OSError as exc:
        raise TorSetsError(f"cannot look at pid {pid} (reload.pid): {exc.strerror or exc}") from exc
    try:
        exe = os.path.basename(os.readlink(proc / "exe")).removesuffix(" (deleted)")  # Falco upgraded under it
    except OSError:
        exe = ""  # not allowed to look (another user's process): its name decides
    if _FALCO_NAME not in (comm, exe):
        raise TorSetsError(f"pid {pid} is not a Falco process (its name is {comm!r}); not sending SIGHUP (reload.pid)")


def reload_falco(reload: Reload) -> str | None:
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


def _sighup_falco(pid: int) -> None:
    """Send SIGHUP to ``pid`` after :func:`check_falco_pid`, through a pidfd so that a reused pid is never hit.

    Raises:
        TorSetsError: not Falco, gone, or the signal failed.
    """
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        raise TorSetsError(f"no process with pid {pid} (reload.pid)") from None
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
