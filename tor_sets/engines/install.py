"""Setting the engines up on this machine, idempotently.

Exports :func:`install` (parts ``legacy``, ``modern``, ``docker``; each step is skipped when already done),
:func:`status` (every engine, present or not, with its version), :func:`start_docker` / :func:`stop_docker`
(a background ``dockerd`` that tor-sets started and only that one), :func:`docker_state`, and the values
:class:`Step`, :class:`EngineStatus`, :class:`DockerState`.

What each part does (Debian packages and a debootstrap root; see docs/verify.md):

* ``legacy``: ``apt-get install -y sysdig`` when ``/usr/bin/sysdig`` is missing (``apt-get update`` first only
  when the package lists are empty or the install fails).
* ``modern``: ``debootstrap --variant=minbase sid`` into a temporary folder beside the final one, then
  ``chroot TMP apt-get install -y --no-install-recommends sysdig libfalcosecurity0-dev``, then a rename into
  place: the root either exists complete or not at all. A lock file keeps two installs apart.
* ``docker``: ``apt-get install -y docker.io`` if missing; ``dockerd`` started in the background if no daemon
  answers (own data root, log in the cache, a state file recording that we started it); then the sid root is
  imported as ``tor-sets/sysdig-modern:<sysdig version>`` (and ``:latest``) if that image is missing.

Nothing is ever mounted inside the root, and a root with anything mounted inside is neither archived nor
deleted.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tor_sets.engines import ENGINES, get_engine
from tor_sets.engines import docker as _docker
from tor_sets.engines.paths import LEGACY_SYSDIG, MODERN_IMAGE, MODERN_IMAGE_REPO, cache_dir, docker_dir, modern_root
from tor_sets.errors import EngineError, EngineUnavailable
from tor_sets.files import atomic_write, read_regular

__all__ = [
    "PARTS",
    "DockerState",
    "EngineStatus",
    "Step",
    "docker_state",
    "install",
    "start_docker",
    "status",
    "stop_docker",
]

log = logging.getLogger(__name__)

#: the installable parts, in the order ``all`` installs them
PARTS: tuple[str, ...] = ("legacy", "modern", "docker")
#: parts only ``tor-sets bench`` needs, not included in ``all``
EXTRA_PARTS: tuple[str, ...] = ("bench",)
BENCH_PACKAGES: tuple[str, ...] = ("valgrind",)
#: what the modern root gets beyond the minimal base
MODERN_PACKAGES: tuple[str, ...] = ("sysdig", "libfalcosecurity0-dev")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STATE_FILE = "dockerd-state.json"
DOCKERD_READY_S = 60.0
DOCKERD_STOP_S = 30.0


@dataclass(frozen=True, slots=True)
class Step:
    """One step of an install.

    Attributes:
        part: ``legacy``, ``modern`` or ``docker``.
        name: what the step provides (``sysdig``, ``sid root``, ``docker.io``, ``dockerd``, ``image``).
        done: True if it ran now, False if it was already in place.
        detail: one line about the result.
        seconds: how long the step took.
    """

    part: str
    name: str
    done: bool
    detail: str
    seconds: float


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """Whether one engine can run here.

    Attributes:
        name: the engine's name.
        description: the engine's one-line description.
        present: whether its ``check()`` passes.
        version: what it reports, when present.
        reason: why not, when absent.
    """

    name: str
    description: str
    present: bool
    version: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DockerState:
    """The Docker daemon tor-sets started (read from the state file)."""

    pid: int
    data_root: str
    log: str
    started_at: float


# --- running install commands --------------------------------------------------------------------------


def _run(argv: Sequence[str], what: str, *, env: Mapping[str, str] | None = None) -> str:
    """Run an install command, echo its output at debug level, return it.

    Raises:
        EngineUnavailable: the program is missing.
        EngineError: it failed; the message carries its last line.
    """
    log.debug("running: %s", " ".join(argv))
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise EngineUnavailable(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
    tail: collections.deque[str] = collections.deque(maxlen=60)
    assert proc.stdout is not None
    with proc.stdout:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            tail.append(line)
            log.debug("  %s", line)
    returncode = proc.wait()
    if returncode != 0:
        last = next((line for line in reversed(tail) if line.strip()), "no message")
        raise EngineError(
            f"{what} failed (exit {returncode}): {last[:300]}", returncode=returncode, stderr="\n".join(tail)
        )
    return "\n".join(tail)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise EngineUnavailable(f"{what} needs root: run `tor-sets engines install` as root")


def _apt_lists_empty() -> bool:
    lists = Path("/var/lib/apt/lists")
    return not any(lists.glob("*_Packages*"))


def _apt_install(packages: Sequence[str], what: str) -> None:
    """``apt-get install -y PACKAGES``, updating the lists first only when empty or after a failure."""
    _need_root(what)
    if shutil.which("apt-get") is None:
        raise EngineUnavailable(f"{what}: apt-get is missing; install {' '.join(packages)} by hand")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if _apt_lists_empty():
        _run(["apt-get", "update"], f"{what}: apt-get update", env=env)
    try:
        _run(["apt-get", "install", "-y", *packages], f"{what}: apt-get install", env=env)
    except EngineError:
        log.info("%s: install failed; updating package lists and retrying", what)
        _run(["apt-get", "update"], f"{what}: apt-get update", env=env)
        _run(["apt-get", "install", "-y", *packages], f"{what}: apt-get install", env=env)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Hold the install lock (``cache_dir()/install.lock``) so concurrent installs do not collide."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "install.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `tor-sets engines install` to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _step(part: str, name: str, action: Callable[[], tuple[bool, str]]) -> Step:
    """Run one step (``action`` returns whether it did something, and what) and time it."""
    start = time.monotonic()
    done, detail = action()
    step = Step(part, name, done, detail, time.monotonic() - start)
    if done:
        log.info("%s: %s: %s (%.1f s)", part, name, detail, step.seconds)
    else:
        log.info("%s: %s: %s", part, name, detail)
    return step


# --- mounts -------------------------------------------------------------------------------------------


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


def _require_unmounted(path: Path, doing: str) -> None:
    """Unmount anything below ``path``; refuse to go on if something stays mounted.

    Raises:
        EngineError: a mount could not be removed.
    """
    for point in mounts_under(path):
        log.info("unmounting %s", point)
        with contextlib.suppress(EngineError):
            _run(["umount", point], f"umount {point}")
    left = mounts_under(path)
    if left:
        raise EngineError(f"refusing to {doing} {path}: still mounted inside: {', '.join(left)}")


def _discard(path: Path) -> None:
    """Delete a half-made root, never through a mount point."""
    if not path.exists():
        return
    _require_unmounted(path, "delete")
    shutil.rmtree(path, ignore_errors=True)


# --- the parts ----------------------------------------------------------------------------------------


def _legacy() -> tuple[bool, str]:
    if os.access(LEGACY_SYSDIG, os.X_OK):
        return False, f"present ({LEGACY_SYSDIG})"
    _apt_install(["sysdig"], "legacy")
    if not os.access(LEGACY_SYSDIG, os.X_OK):
        raise EngineError(f"legacy: apt-get installed sysdig but {LEGACY_SYSDIG} is missing")
    return True, f"installed {LEGACY_SYSDIG}"


def _modern(root: Path) -> tuple[bool, str]:
    if (root / "usr/bin/sysdig").exists():
        return False, f"present ({root})"
    if root.exists():
        raise EngineError(f"modern: {root} exists but holds no sysdig; remove it and run the install again")
    _need_root("modern")
    if shutil.which("debootstrap") is None:
        _apt_install(["debootstrap"], "modern")
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f"{root.name}.tmp-*"):
        log.info("modern: removing an unfinished root from an earlier attempt: %s", stale)
        _discard(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # the root's "/": apt drops to the _apt user, which must traverse it
        log.info("modern: debootstrap sid into %s (a few minutes)", tmp)
        _run(["debootstrap", "--variant=minbase", "sid", str(tmp)], "modern: debootstrap")
        _require_unmounted(tmp, "finish")  # debootstrap unmounts its /proc itself; make sure
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": CHROOT_PATH}
        install_cmd = ["apt-get", "install", "-y", "--no-install-recommends", *MODERN_PACKAGES]
        _run(["chroot", str(tmp), *install_cmd], "modern: apt-get install in the root", env=env)
        _run(["chroot", str(tmp), "apt-get", "clean"], "modern: apt-get clean", env=env)
        _require_unmounted(tmp, "finish")
        os.rename(tmp, root)
    except BaseException:
        _discard(tmp)
        raise
    return True, f"installed sysdig {root_sysdig_version(root)} in {root}"


def _bench_tools(root: Path) -> tuple[bool, str]:
    """valgrind inside the sid root: the benchmark counts the engine's instructions with callgrind."""
    if (root / "usr/bin/valgrind").exists():
        return False, "valgrind present in the sid root"
    _need_root("bench")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": CHROOT_PATH}
    install_cmd = ["chroot", str(root), "apt-get", "install", "-y", "--no-install-recommends", *BENCH_PACKAGES]
    try:
        _run(install_cmd, "bench: apt-get install in the root", env=env)
    except EngineError:
        _run(["chroot", str(root), "apt-get", "update"], "bench: apt-get update in the root", env=env)
        _run(install_cmd, "bench: apt-get install in the root", env=env)
    _run(["chroot", str(root), "apt-get", "clean"], "bench: apt-get clean", env=env)
    return True, f"installed valgrind in {root}"


def root_sysdig_version(root: Path) -> str:
    """The upstream version of sysdig in a root, from its dpkg database (no chroot needed).

    Raises:
        EngineError: the root has no installed sysdig package.
    """
    try:
        text = (root / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise EngineError(f"cannot read the dpkg database of {root}: {exc.strerror}") from exc
    for paragraph in text.split("\n\n"):
        if re.search(r"^Package: sysdig$", paragraph, re.M) and "install ok installed" in paragraph:
            found = re.search(r"^Version: (?:\d+:)?(\d+(?:\.\d+)*)", paragraph, re.M)
            if found:
                return found[1]
    raise EngineError(f"no installed sysdig package in {root}")


def _docker_packages() -> tuple[bool, str]:
    if shutil.which("dockerd") and shutil.which("docker"):
        return False, f"present ({shutil.which('dockerd')})"
    _apt_install(["docker.io"], "docker")
    return True, "installed docker.io"


def _docker_daemon() -> tuple[bool, str]:
    if _docker.daemon_running("docker"):
        state = docker_state()
        return False, "running" + (f" (started by tor-sets, pid {state.pid})" if state else "")
    state = start_docker()
    return True, f"started dockerd (pid {state.pid}, log {state.log})"


def _docker_image(root: Path) -> tuple[bool, str]:
    if _docker.image_present(MODERN_IMAGE, "docker"):
        return False, f"present ({MODERN_IMAGE})"
    version = root_sysdig_version(root)
    tagged = f"{MODERN_IMAGE_REPO}:{version}"
    if not _docker.image_present(tagged, "docker"):
        _import_root(root, tagged)
    _run([_docker.docker_cli(), "tag", tagged, MODERN_IMAGE], "docker: tag image")
    return True, f"imported {root} as {tagged} and {MODERN_IMAGE}"


def _import_root(root: Path, image: str) -> None:
    """``tar -C ROOT -c . | docker import - IMAGE``, without the root's /tmp and never with mounts inside.

    Raises:
        EngineError: the archive or the import failed.
    """
    _require_unmounted(root, "archive")
    log.info("docker: importing %s as %s", root, image)
    tar_argv = ["tar", "-C", str(root), "--exclude=./tmp/*", "-c", "."]
    import_argv = [_docker.docker_cli(), "import", "-", image]
    try:
        tar = subprocess.Popen(tar_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise EngineUnavailable("docker: tar is missing") from exc
    assert tar.stdout is not None
    with tar.stdout:
        imported = subprocess.run(import_argv, stdin=tar.stdout, capture_output=True, check=False)
    tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
    if tar.stderr:
        tar.stderr.close()
    tar_rc = tar.wait()
    if tar_rc != 0:
        raise EngineError(f"docker: tar of {root} failed (exit {tar_rc}): {tar_err.strip()[-300:]}")
    if imported.returncode != 0:
        message = imported.stderr.decode(errors="replace").strip()
        raise EngineError(f"docker: docker import failed (exit {imported.returncode}): {message[-300:]}")


# --- public API ---------------------------------------------------------------------------------------


def install(names: Iterable[str], *, root: Path | None = None) -> tuple[Step, ...]:
    """Set up the named parts (``legacy``, ``modern``, ``docker`` or ``all``); skip what is in place.

    ``docker`` needs the modern root (it imports it) and installs it first if missing.

    Args:
        names: parts to install.
        root: the modern root (default :func:`~tor_sets.engines.paths.modern_root`).

    Returns:
        Every step, done or skipped, in order.

    Raises:
        EngineUnavailable: root rights or a tool are missing (the message says which).
        EngineError: a step failed.
    """
    wanted: set[str] = set()
    for name in names:
        if name == "all":
            wanted.update(PARTS)
        elif name in PARTS or name in EXTRA_PARTS:
            wanted.add(name)
        else:
            raise EngineUnavailable(
                f"unknown engine part {name!r} (choose from {', '.join((*PARTS, *EXTRA_PARTS))}, all)"
            )
    root = root if root is not None else modern_root()
    steps: list[Step] = []
    with _lock():
        if "legacy" in wanted:
            steps.append(_step("legacy", "sysdig", _legacy))
        if wanted & {"modern", "docker", "bench"}:
            steps.append(_step("modern", "sid root", lambda: _modern(root)))
        if "bench" in wanted:
            steps.append(_step("bench", "valgrind in the sid root", lambda: _bench_tools(root)))
        if "docker" in wanted:
            steps.append(_step("docker", "docker.io", _docker_packages))
            steps.append(_step("docker", "dockerd", _docker_daemon))
            steps.append(_step("docker", "image", lambda: _docker_image(root)))
    return tuple(steps)


def status() -> tuple[EngineStatus, ...]:
    """Every engine of :data:`~tor_sets.engines.ENGINES`, present or not, with its version or the reason."""
    found = []
    for name in ENGINES:
        engine = get_engine(name)
        try:
            engine.check()
            version = engine.version()
        except EngineError as exc:  # EngineUnavailable, or a version query that failed
            found.append(EngineStatus(name, engine.description, False, reason=str(exc)))
            continue
        found.append(EngineStatus(name, engine.description, True, version=version))
    return tuple(found)


def docker_state() -> DockerState | None:
    """The daemon tor-sets started, if its state file exists and its process is still a dockerd."""
    path = docker_dir() / STATE_FILE
    try:
        doc = json.loads(read_regular(path))
        state = DockerState(int(doc["pid"]), str(doc["data_root"]), str(doc["log"]), float(doc["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if _is_dockerd(state.pid) else None


def _is_dockerd(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    running = stat.rsplit(")", 1)[-1].split()[0] != "Z"
    return running and bool(cmdline) and os.path.basename(cmdline[0]) == b"dockerd"


def start_docker() -> DockerState:
    """Start ``dockerd`` in the background with its data root, pid file and log under :func:`docker_dir`.

    The daemon runs in its own session (``setsid -f``), outliving this process; the state file records its pid
    so that :func:`stop_docker` stops it, and only it.

    Returns:
        The started daemon.

    Raises:
        EngineUnavailable: not root, or ``dockerd`` missing.
        EngineError: the daemon did not come up (the message carries its last log line).
    """
    _need_root("starting dockerd")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable("dockerd is missing; run `tor-sets engines install docker` as root")
    directory = docker_dir()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    pidfile = directory / "dockerd.pid"
    logfile = directory / "dockerd.log"
    pidfile.unlink(missing_ok=True)
    argv = ["setsid", "-f", dockerd, "--data-root", str(directory / "data"), "--pidfile", str(pidfile)]
    with open(logfile, "ab") as out:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EngineError(f"cannot start dockerd: {exc}") from exc
    deadline = time.monotonic() + DOCKERD_READY_S
    pid = 0
    while time.monotonic() < deadline:
        if not pid:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
        if pid and not _is_dockerd(pid):
            break
        if pid and _docker.daemon_running("docker"):
            state = DockerState(pid, str(directory / "data"), str(logfile), time.time())
            _write_state(state)
            return state
        time.sleep(0.3)
    last = (logfile.read_text(errors="replace").strip().splitlines() or ["empty log"])[-1]
    if pid and _is_dockerd(pid):
        os.kill(pid, signal.SIGTERM)
    raise EngineError(f"dockerd did not come up within {DOCKERD_READY_S:g} s; last log line: {last[:300]}")


def _write_state(state: DockerState) -> None:
    path = docker_dir() / STATE_FILE
    doc = {
        "pid": state.pid,
        "data_root": state.data_root,
        "log": state.log,
        "started_at": state.started_at,
        "started_by": "tor-sets",
    }
    try:
        atomic_write(path, (json.dumps(doc, sort_keys=True) + "\n").encode())
    except OSError as exc:  # a FIFO or device put there is refused, not replaced
        raise EngineError(f"cannot write the dockerd state {path}: {exc.strerror or exc}") from exc


def stop_docker() -> DockerState | None:
    """Stop the ``dockerd`` that tor-sets started; leave any other daemon alone.

    Returns:
        The daemon that was stopped, or None when tor-sets had not started one (or it was already gone).

    Raises:
        EngineError: it did not stop, even after SIGKILL.
    """
    state = docker_state()
    path = docker_dir() / STATE_FILE
    if state is None:
        path.unlink(missing_ok=True)
        return None
    for sig, wait in ((signal.SIGTERM, DOCKERD_STOP_S), (signal.SIGKILL, 5.0)):
        try:
            os.kill(state.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError as exc:
            raise EngineUnavailable(f"stopping dockerd (pid {state.pid}) needs root") from exc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _is_dockerd(state.pid):
            time.sleep(0.2)
        if not _is_dockerd(state.pid):
            break
    if _is_dockerd(state.pid):
        raise EngineError(f"dockerd (pid {state.pid}) did not stop")
    path.unlink(missing_ok=True)
    return state
