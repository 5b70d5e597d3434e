"""How tor-sets writes the files others read (rules, plugin table, caches, state) and reads back its own.

Exports :func:`write_file` (the ``-o`` policy), :func:`open_output` (the same policy for a long-lived stream),
:func:`atomic_write` (the atomic replace alone), :func:`read_regular` (reads nothing but a regular file),
:func:`require_regular`, :func:`require_folder`, :func:`remove_stale_temps`, :func:`process_alive` and
:class:`NotRegularFile`.

The policy, for a target that exists (docs/operations.md, "Where tor-sets writes")::

    target                                  stream outputs (build, plugin table, enrich)   kept files (refresh:
                                                                                           rules, state, lock, cache)
    missing, or a regular file              atomic replace: a temp file in the target's folder, renamed over it;
                                            through symbolic links (the link stays); mode and owner kept
    /dev/stdout, /dev/fd/N, /proc/self/fd/N written to that descriptor (like -o -)        refused
    character device (/dev/null), FIFO      written through, never read; a FIFO that no    refused
                                            process reads is an error, not a hang
    directory, socket, block device         refused                                         refused

Refusals raise :class:`~tor_sets.errors.TorSetsError` (exit 3) with one line. The "unchanged, leave it alone"
comparison reads only regular files, and nothing is ever opened in a way that can block on a FIFO.

Temporary files are named ``.NAME.PID.XXXXXXXX.tmp``; a writer killed half-way leaves one behind, and the next
write to the same target removes it once its writer is gone (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import BinaryIO

from tor_sets.errors import TorSetsError

__all__ = [
    "TEMP_GRACE_S",
    "TEMP_MAX_AGE_S",
    "NotRegularFile",
    "atomic_write",
    "open_output",
    "process_alive",
    "read_regular",
    "remove_stale_temps",
    "require_folder",
    "require_regular",
    "write_file",
]

log = logging.getLogger(__name__)

#: a temp file younger than this is never removed (its writer may live in another pid namespace)
TEMP_GRACE_S = 60.0
#: a temp file older than this is removed whatever the pid in its name (that pid was reused)
TEMP_MAX_AGE_S = 86400.0

# /proc/self/fd/N, /proc/thread-self/fd/N (both resolve to /proc/PID/...), /dev/fd/N (a link to /proc/self/fd)
_DESCRIPTOR = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd/(\d+)")
_STREAM_FLAGS = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """``path`` exists and is not a regular file (nor a link to one); ``strerror`` says what it is."""

    def __init__(self, path: Path | str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"it is {kind}, not a regular file", str(path))
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _kind(mode: int) -> str:
    """What a file of this mode is, in words.

    >>> _kind(stat.S_IFIFO | 0o644), _kind(stat.S_IFREG | 0o644)
    ('a FIFO', 'a regular file')
    """
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((words for test, words in _KINDS if test(mode)), "a special file")


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` (through links), None when nothing is there (a missing file or a dangling link)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _descriptor(path: Path) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout``, ``/dev/fd/3``), if it names one.

    Follows the links one by one, as the kernel would, and stops at ``/proc/OURPID/fd/N``: that link's target
    (``pipe:[1234]``, a socket, a file opened for appending) is the open descriptor, not a path to replace.
    """
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links in a path
        folder, name = os.path.split(current)
        current = os.path.join(os.path.realpath(folder), name)  # /dev/fd/1 -> /proc/PID/fd/1
        match = _DESCRIPTOR.fullmatch(current)
        if match and int(match[1]) == os.getpid():
            return int(match[2])
        if not os.path.islink(current):
            return None
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _set_blocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def _open_stream(path: Path, flags: int = 0) -> int:
    """Open a character device or FIFO for writing without blocking; a FIFO that nobody reads is an error.

    Raises:
        OSError: ENXIO with "no process is reading the FIFO", or the open failed.
        NotRegularFile: ``path`` turned into something else than a device or FIFO while being opened.
    """
    try:
        fd = os.open(path, _STREAM_FLAGS | flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "no process is reading the FIFO", str(path)) from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            raise NotRegularFile(path, _kind(mode))
        _set_blocking(fd)  # from here on a full pipe waits for its reader, as with -o -
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str) -> bytes:
    """The bytes of ``path``, which must be a regular file (through links); nothing else is ever opened.

    Raises:
        FileNotFoundError: nothing is there.
        NotRegularFile: it is a FIFO, a device, a folder or a socket (it was not opened).
        OSError: it cannot be read.
    """
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path, _kind(mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)  # swapped for a FIFO: no wait
    with os.fdopen(fd, "rb") as src:
        mode = os.fstat(src.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, _kind(mode))
        return src.read()


def require_regular(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is missing or a regular file (through links): for files tor-sets reads back.

    Raises:
        TorSetsError: ``"{what} PATH is a FIFO, not a regular file"`` (exit 3).
    """
    descriptor = _descriptor(path)
    if descriptor is not None:
        raise TorSetsError(f"{what} {path} is descriptor {descriptor} of this process, not a regular file")
    try:
        found = _stat(path)
    except OSError as exc:
        raise TorSetsError(f"cannot use {path} as {what}: {exc.strerror or exc}") from exc
    if found is not None and not stat.S_ISREG(found.st_mode):
        raise TorSetsError(f"{what} {path} is {_kind(found.st_mode)}, not a regular file")


def require_folder(path: Path) -> None:
    """Refuse ``path`` (an output folder) unless it is missing or a folder (through links).

    Raises:
        TorSetsError: ``"cannot write into PATH: it is a FIFO, not a folder"`` (exit 3).
    """
    try:
        found = _stat(path)
    except OSError as exc:
        raise TorSetsError(f"cannot write into {path}: {exc.strerror or exc}") from exc
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise TorSetsError(f"cannot write into {path}: it is {_kind(found.st_mode)}, not a folder")


def _temp_name(target: str) -> re.Pattern[str]:
    """Our temp files for ``target``: ``.NAME.PID.XXXXXXXX.tmp`` (and ``.NAME.XXXXXXXX.tmp`` of older versions).

    >>> [bool(_temp_name("r.yaml").fullmatch(n)) for n in (".r.yaml.42.0a1b2c3d.tmp", ".r.yaml.x.tmp")]
    [True, False]
    """
    return re.compile(re.escape(f".{target}.") + r"(?:(\d{1,9})\.)?[a-z0-9_]{8}\.tmp")


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 checks without signalling; 0 and below name no single process)."""
    if pid < 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def remove_stale_temps(target: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temp files that writers of ``target``, killed half-way, left in its folder; return them.

    Only files of our exact naming for this target are considered. One is stale when it is older than
    :data:`TEMP_GRACE_S` and its writer (the pid in its name) is no longer running, or its name holds no pid (older
    versions), or it is older than :data:`TEMP_MAX_AGE_S` (the pid was reused). A live writer's file stays.
    """
    now = time.time() if now is None else now
    target = Path(os.path.realpath(target))  # where atomic_write puts them: beside the link's target
    pattern = _temp_name(target.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        with contextlib.suppress(OSError):
            found = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(found.st_mode):
                continue
            age = now - found.st_mtime
            pid = int(match[1]) if match[1] else 0
            writer_gone = not process_alive(pid)
            if age >= TEMP_MAX_AGE_S or (age >= TEMP_GRACE_S and writer_gone):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
                log.info("removed %s, left by an interrupted write", entry.path)
    return removed


def _create_temp(target: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))


def _keep_owner(fd: int, old: os.stat_result, target: Path) -> None:
    """Give the temp file ``old``'s owner and group; without the right to, keep what can be kept and say so."""
    new = os.fstat(fd)
    if (new.st_uid, new.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
        return
    except PermissionError:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, old.st_gid)
    new = os.fstat(fd)
    log.warning(
        "could not keep the owner %d:%d of %s (not allowed to); the new file is owned by %d:%d",
        old.st_uid,
        old.st_gid,
        target,
        new.st_uid,
        new.st_gid,
    )


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace the regular file ``path`` (or create it) so that a reader sees the old file or the new one, never a mix.

    A symbolic link is written through: its final target is replaced, the link stays. The bytes go to a temporary
    file in the target's folder, are flushed and fsynced, get the old file's owner, group and mode (a new file:
    ``mode``), and the temp file is renamed over the target and the folder fsynced. A process killed half-way
    leaves at most a ``.NAME.PID.XXXXXXXX.tmp`` file, which a later write removes; on an error the temp file is
    removed.

    Raises:
        NotRegularFile: the target exists and is not a regular file (it is left alone).
        OSError: the folder cannot be created or written.
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    old = _stat(target)
    if old is not None and not stat.S_ISREG(old.st_mode):
        raise NotRegularFile(path, _kind(old.st_mode))
    remove_stale_temps(target)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if old is not None:
                _keep_owner(out.fileno(), old, target)
            os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode) if old is not None else mode)
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_file(path: Path | str, data: bytes, *, mode: int = 0o644, stream: bool = True) -> bool:
    """Write ``data`` to ``path`` by the ``-o`` policy; return False (touching nothing) when it already holds them.

    Args:
        path: the target.
        data: the bytes.
        mode: the mode of a new file (an existing file keeps its own).
        stream: write a character device, a FIFO or a descriptor of ours (``/dev/stdout``) through, as ``-o -``
            does; False refuses them (files tor-sets reads back: refresh's rules, state and lock).

    Raises:
        TorSetsError: the target is refused, or cannot be written (one line, exit 3).
    """
    path = Path(path)
    try:
        descriptor = _descriptor(path)
        if descriptor is not None:
            if not stream:
                raise NotRegularFile(path, f"descriptor {descriptor} of this process")
            _write_all(descriptor, data)
            return True
        found = _stat(path)
        if found is not None and not stat.S_ISREG(found.st_mode):
            if not (stream and (stat.S_ISCHR(found.st_mode) or stat.S_ISFIFO(found.st_mode))):
                raise NotRegularFile(path, _kind(found.st_mode))
            fd = _open_stream(path)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            return True
        if found is not None and found.st_size == len(data):
            with contextlib.suppress(FileNotFoundError):
                if read_regular(path) == data:
                    return False
        atomic_write(path, data, mode=mode)
    except OSError as exc:
        raise TorSetsError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return True


def open_output(path: Path | str, *, append: bool = False) -> BinaryIO:
    """Open ``path`` for a long stream of writes (enrich's alerts) by the ``-o`` policy of :func:`write_file`.

    A regular file is truncated (``append``: appended to) in place, not replaced; a missing one is created with
    mode 0644; ``/dev/stdout`` and the like are a duplicate of that descriptor; a character device or a FIFO is
    written through (a FIFO that nobody reads is an error, not a hang); anything else is refused.

    Raises:
        TorSetsError: refused, or cannot be opened (one line, exit 3).
    """
    path = Path(path)
    try:
        descriptor = _descriptor(path)
        if descriptor is not None:
            return os.fdopen(os.dup(descriptor), "wb")
        found = _stat(path)
        if found is not None and not stat.S_ISREG(found.st_mode):
            if not (stat.S_ISCHR(found.st_mode) or stat.S_ISFIFO(found.st_mode)):
                raise NotRegularFile(path, _kind(found.st_mode))
            return os.fdopen(_open_stream(path), "wb")
        flags = os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        fd = os.open(path, _STREAM_FLAGS | flags, 0o644)  # non-blocking: a FIFO put there meanwhile cannot hang it
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFile(path, _kind(mode))
            _set_blocking(fd)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "wb")
    except OSError as exc:
        raise TorSetsError(f"cannot write {path}: {exc.strerror or exc}") from exc
