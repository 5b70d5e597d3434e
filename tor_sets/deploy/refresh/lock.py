"""The lock that keeps two refreshes of one rules file from interleaving.

Exports :func:`lock_path` (where the lock of a rules file lives), :func:`hold_lock` (``fcntl.flock`` with a
deadline) and :func:`flock_holders` (who holds a flock, from ``/proc/locks``).

A waiter names the process that holds the lock. The kernel knows it: ``/proc/locks`` lists every lock with its
holder's pid and the locked file's device and inode. The pid a holder writes into the file is only a fallback
where ``/proc/locks`` cannot be read, and only while that process lives: a finished refresh leaves its pid
behind, and the lock may be held by a process that writes none.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from tor_sets.deploy.refresh.state import state_dir, state_stem
from tor_sets.errors import TorSetsError
from tor_sets.files import process_alive, require_regular

__all__ = ["flock_holders", "hold_lock", "lock_path"]

#: the kernel's table of file locks (proc(5))
PROC_LOCKS = Path("/proc/locks")

log = logging.getLogger(__name__)


def lock_path(output: Path, lock: Path | None = None) -> Path:
    """``lock`` if given, else ``STATE_DIR/NAME-DIGEST.lock`` beside the state: the lock every refresh of ``output``
    holds (never in the rules folder, which Falco before 0.41 reads whole)."""
    return lock if lock is not None else state_dir() / f"{state_stem(output)}.lock"


@contextlib.contextmanager
def hold_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``path`` (created if missing), waiting up to ``timeout`` seconds.

    The holder writes its pid into the file so that a waiter can name it. The file is never deleted (deleting a
    lock file lets two processes lock two different files).

    Raises:
        TorSetsError: the lock could not be had in time (the message names ``lock_timeout``), or the file cannot be
            opened or is not a regular file.
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
                    f"gave up waiting after {timeout:g} s (lock_timeout)"
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


def flock_holders(proc_locks: str, device: int, inode: int) -> list[int]:
    """The pids holding a ``flock`` on the file of ``device`` and ``inode``, from the text of ``/proc/locks``.

    Waiters (``->`` lines) and POSIX or OFD locks are left out. A pid of 0 or -1 is a holder this process cannot
    see (another pid namespace, or an owner gone while its descriptor lives on in a child).

    >>> text = ("1: FLOCK  ADVISORY  WRITE 4242 08:02:131090 0 EOF\\n"
    ...         "1: -> FLOCK  ADVISORY  WRITE 4343 08:02:131090 0 EOF\\n"
    ...         "2: POSIX  ADVISORY  WRITE 4444 08:02:131090 0 EOF\\n")
    >>> flock_holders(text, os.makedev(8, 2), 131090), flock_holders(text, os.makedev(8, 3), 131090)
    ([4242], [])
    """
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    holders = []
    for line in proc_locks.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 08:02:131090 0 EOF" (device major:minor in hex, inode in decimal)
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            with contextlib.suppress(ValueError):
                holders.append(int(fields[4]))
    return holders


def _lock_holder(fd: int) -> str:
    """`` (pid N)`` for the process holding the flock on ``fd``'s file, or "" when it cannot be told."""
    status = os.fstat(fd)
    try:
        holders: list[int] | None = flock_holders(
            PROC_LOCKS.read_text(encoding="ascii", errors="replace"), status.st_dev, status.st_ino
        )
    except OSError:
        holders = None  # no /proc here: the pid in the file, if that process lives
    if holders is not None:  # the kernel's word; none visible: a holder in another pid namespace, or just gone
        visible = [pid for pid in holders if pid > 0]
        return f" (pid {visible[0]})" if visible else ""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit() and process_alive(int(text)):
            return f" (pid {text})"
    return ""
