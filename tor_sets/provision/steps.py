"""What every install step shares: running a command with its output kept, root checks, apt, the lock, mounts.

Exports :class:`Step` (one step of an install, with its time), :func:`step` (run and time one step),
:func:`run` (the only way provisioning runs a command: output to the debug log and, when asked, to a log file
that the error message names), :func:`need_root`, :func:`apt_install`, :func:`lock` (one install at a time),
:func:`mounts_under`, :func:`require_unmounted` and :func:`discard` (never delete or archive through a mount).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tor_sets.engines.paths import cache_dir
from tor_sets.errors import EngineError, EngineUnavailable

__all__ = [
    "CHROOT_PATH",
    "Step",
    "apt_install",
    "chroot_apt_install",
    "discard",
    "lock",
    "mounts_under",
    "need_root",
    "require_unmounted",
    "run",
    "step",
]

log = logging.getLogger(__name__)

#: PATH inside a Debian root entered with chroot
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of an install.

    Attributes:
        part: the part it belongs to (``legacy``, ``modern``, ``docker``, ``bench``, ``falco``).
        name: what the step provides (``sysdig``, ``sid root``, ``dockerd``, ``compile`` ...).
        done: True if it ran now, False if it was already in place.
        detail: one line about the result.
        seconds: how long the step took.
    """

    part: str
    name: str
    done: bool
    detail: str
    seconds: float


def step(part: str, name: str, action: Callable[[], tuple[bool, str]]) -> Step:
    """Run one step (``action`` returns whether it did something, and what), time it and log one line.

    A failure propagates with the step's name prepended, so the message says which step failed.
    """
    start = time.monotonic()
    log.info("%s: %s ...", part, name)
    try:
        done, detail = action()
    except EngineError as exc:
        if not str(exc).startswith(f"{part}: {name}"):
            exc.args = (f"{part}: step '{name}' failed after {time.monotonic() - start:.0f} s: {exc}", *exc.args[1:])
        raise
    result = Step(part, name, done, detail, time.monotonic() - start)
    if done:
        log.info("%s: %s: %s (%.1f s)", part, name, detail, result.seconds)
    else:
        log.info("%s: %s: %s", part, name, detail)
    return result


def run(
    argv: Sequence[str],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    cwd: Path | None = None,
    capture: bool = False,
) -> str:
    """Run an install command to its end; return its output (the last 60 lines, or all with ``capture``).

    Args:
        argv: the command.
        what: how to name it in messages.
        env: variables added to this process's environment.
        log_file: where to append the whole output (stdout and stderr); the error message names it.
        cwd: working folder.
        capture: return the whole output, not only its end (for output that is data, such as ``ldd``'s).

    Raises:
        EngineUnavailable: the program is missing.
        EngineError: it failed; the message carries its last line and the log file.
    """
    log.debug("running: %s", " ".join(argv))
    sink = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (closed below)
    try:
        if sink is not None:
            sink.write(f"\n$ {' '.join(argv)}\n".encode())
            sink.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise EngineUnavailable(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
        tail: collections.deque[str] = collections.deque(maxlen=None if capture else 60)
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                if sink is not None:
                    sink.write(raw)
                line = raw.decode("utf-8", errors="replace").rstrip()
                tail.append(line)
                log.debug("  %s", line)
        returncode = proc.wait()
    finally:
        if sink is not None:
            sink.close()
    if returncode != 0:
        last = next((line for line in reversed(tail) if line.strip()), "no message")
        where = f" (log: {log_file})" if log_file is not None else ""
        raise EngineError(
            f"{what} failed (exit {returncode}): {last[:300]}{where}", returncode=returncode, stderr="\n".join(tail)
        )
    return "\n".join(tail)


def need_root(what: str) -> None:
    """Raises EngineUnavailable when this process is not root."""
    if os.geteuid() != 0:
        raise EngineUnavailable(f"{what} needs root: run `tor-sets engines install` as root")


def _apt_lists_empty() -> bool:
    lists = Path("/var/lib/apt/lists")
    return not any(lists.glob("*_Packages*"))


def apt_install(packages: Sequence[str], what: str) -> None:
    """``apt-get install -y PACKAGES`` on this machine, updating the lists first only when empty or after a failure.

    Raises:
        EngineUnavailable: not root, or no apt-get.
        EngineError: the install failed twice.
    """
    need_root(what)
    if shutil.which("apt-get") is None:
        raise EngineUnavailable(f"{what}: apt-get is missing; install {' '.join(packages)} by hand")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if _apt_lists_empty():
        run(["apt-get", "update"], f"{what}: apt-get update", env=env)
    try:
        run(["apt-get", "install", "-y", *packages], f"{what}: apt-get install", env=env)
    except EngineError:
        log.info("%s: install failed; updating package lists and retrying", what)
        run(["apt-get", "update"], f"{what}: apt-get update", env=env)
        run(["apt-get", "install", "-y", *packages], f"{what}: apt-get install", env=env)


def chroot_apt_install(root: Path, packages: Sequence[str], what: str, *, log_file: Path | None = None) -> None:
    """``apt-get install -y --no-install-recommends PACKAGES`` inside a Debian root, updating once on failure."""
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": CHROOT_PATH}
    install_cmd = ["chroot", str(root), "apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        run(install_cmd, f"{what}: apt-get install in the root", env=env, log_file=log_file)
    except EngineError:
        run(
            ["chroot", str(root), "apt-get", "update"],
            f"{what}: apt-get update in the root",
            env=env,
            log_file=log_file,
        )
        run(install_cmd, f"{what}: apt-get install in the root", env=env, log_file=log_file)
    run(["chroot", str(root), "apt-get", "clean"], f"{what}: apt-get clean", env=env, log_file=log_file)


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """Hold the install lock (``cache_dir()/install.lock``) so concurrent installs do not collide."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / "install.lock", "a+b")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise EngineUnavailable(f"cannot use the engine cache {directory}: {exc.strerror or exc}") from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `tor-sets engines install` to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from ``/proc/self/mountinfo``), deepest first."""
    base = os.path.realpath(path)
    found = []
    with contextlib.suppress(FileNotFoundError), open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            # "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw": field 5 is the mount point
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def require_unmounted(path: Path, doing: str) -> None:
    """Unmount anything below ``path``; refuse to go on if something stays mounted.

    Raises:
        EngineError: a mount could not be removed.
    """
    for point in mounts_under(path):
        log.info("unmounting %s", point)
        with contextlib.suppress(EngineError):
            run(["umount", point], f"umount {point}")
    left = mounts_under(path)
    if left:
        raise EngineError(f"refusing to {doing} {path}: still mounted inside: {', '.join(left)}")


def discard(path: Path) -> None:
    """Delete a half-made root or tree, never through a mount point."""
    if not path.exists():
        return
    require_unmounted(path, "delete")
    shutil.rmtree(path, ignore_errors=True)
