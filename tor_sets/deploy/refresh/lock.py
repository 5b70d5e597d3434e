"""The lock that keeps two refreshes of one rules file from interleaving.

Exports :func:`lock_path` (where the lock of a rules file lives) and :func:`hold_lock` (``fcntl.flock`` with a
deadline; the holder's pid in the file so that a waiter can name it).
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
from tor_sets.files import require_regular

__all__ = ["hold_lock", "lock_path"]

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


def _lock_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""
