"""Atomic file replacement, the one way tor-sets writes a file others read (rules, plugin table, caches, state).

Exports :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one, never a mix.

    The bytes go to a temporary file in the same folder, are flushed and fsynced and given ``mode``; the file is
    renamed over ``path`` and the folder fsynced. A process killed half-way leaves at most a ``.NAME.*.tmp`` file,
    never a half-written ``path``; on an error the temporary file is removed.

    Raises:
        OSError: the folder cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
