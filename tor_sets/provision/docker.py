"""The Docker parts: Debian's docker.io, a background ``dockerd`` that tor-sets started (and only that one is ever
stopped), and local images made with ``docker import`` of a root folder.

Exports :func:`packages`, :func:`daemon` (steps), :func:`start_docker`, :func:`stop_docker`, :func:`docker_state`,
:class:`DockerState`, :func:`import_root` and :func:`sysdig_image` (the sid root as ``tor-sets/sysdig-modern``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tor_sets.engines import docker as _docker
from tor_sets.engines.paths import MODERN_IMAGE, MODERN_IMAGE_REPO, docker_dir
from tor_sets.errors import EngineError, EngineUnavailable
from tor_sets.files import atomic_write, read_regular
from tor_sets.provision import steps
from tor_sets.provision.sysdig import root_sysdig_version

__all__ = [
    "SESSION_ENV",
    "STATE_FILE",
    "DockerState",
    "daemon",
    "docker_state",
    "import_root",
    "packages",
    "start_docker",
    "stop_docker",
    "sysdig_image",
]

log = logging.getLogger(__name__)

STATE_FILE = "dockerd-state.json"
#: names the run (a ``make test``, a CI job) that starts dockerd, so that only that run stops it
SESSION_ENV = "TOR_SETS_SESSION"
DOCKERD_READY_S = 60.0
DOCKERD_STOP_S = 30.0


@dataclass(frozen=True, slots=True)
class DockerState:
    """The Docker daemon tor-sets started (read from the state file).

    Attributes:
        pid, data_root, log, started_at: the daemon.
        session: ``$TOR_SETS_SESSION`` of the run that started it ("" when unset): another clone's ``make test``
            sharing the engine cache has another session and leaves this daemon alone.
    """

    pid: int
    data_root: str
    log: str
    started_at: float
    session: str = ""


def packages() -> tuple[bool, str]:
    """Debian's docker.io (client and daemon)."""
    if shutil.which("dockerd") and shutil.which("docker"):
        return False, f"present ({shutil.which('dockerd')})"
    steps.apt_install(["docker.io"], "docker")
    return True, "installed docker.io"


def daemon() -> tuple[bool, str]:
    """A Docker daemon that answers: the one running, or one started now."""
    if _docker.daemon_running("docker"):
        state = docker_state()
        return False, "running" + (f" (started by tor-sets, pid {state.pid})" if state else "")
    state = start_docker()
    return True, f"started dockerd (pid {state.pid}, log {state.log})"


def sysdig_image(root: Path) -> tuple[bool, str]:
    """The sid root imported as ``tor-sets/sysdig-modern:<version>`` and ``:latest``."""
    if _docker.image_present(MODERN_IMAGE, "docker"):
        return False, f"present ({MODERN_IMAGE})"
    version = root_sysdig_version(root)
    tagged = f"{MODERN_IMAGE_REPO}:{version}"
    if not _docker.image_present(tagged, "docker"):
        import_root(root, tagged, exclude=("./tmp/*",))
    steps.run([_docker.docker_cli(), "tag", tagged, MODERN_IMAGE], "docker: tag image")
    return True, f"imported {root} as {tagged} and {MODERN_IMAGE}"


def import_root(
    root: Path, image: str, *, exclude: Sequence[str] = (), labels: Mapping[str, str] | None = None
) -> None:
    """``tar -C ROOT -c . | docker import - IMAGE``, never with mounts inside the root.

    Args:
        root: the root folder.
        image: the reference to create.
        exclude: tar ``--exclude`` patterns (e.g. ``./tmp/*``).
        labels: image labels (``docker import -c 'LABEL k=v'``).

    Raises:
        EngineError: the archive or the import failed.
    """
    steps.require_unmounted(root, "archive")
    log.info("docker: importing %s as %s", root, image)
    tar_argv = ["tar", "-C", str(root), *(f"--exclude={pattern}" for pattern in exclude), "-c", "."]
    changes = [arg for key, value in sorted((labels or {}).items()) for arg in ("-c", f"LABEL {key}={value}")]
    import_argv = [_docker.docker_cli(), "import", *changes, "-", image]
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


def docker_state() -> DockerState | None:
    """The daemon tor-sets started, if its state file exists and its process is still a dockerd."""
    path = docker_dir() / STATE_FILE
    try:
        doc = json.loads(read_regular(path))
        state = DockerState(
            int(doc["pid"]),
            str(doc["data_root"]),
            str(doc["log"]),
            float(doc["started_at"]),
            str(doc.get("session", "")),
        )
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

    Raises:
        EngineUnavailable: not root, or ``dockerd`` missing.
        EngineError: the daemon did not come up (the message carries its last log line).
    """
    steps.need_root("starting dockerd")
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
            state = DockerState(
                pid, str(directory / "data"), str(logfile), time.time(), os.environ.get(SESSION_ENV, "")
            )
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
        "session": state.session,
    }
    try:
        atomic_write(path, (json.dumps(doc, sort_keys=True) + "\n").encode())
    except OSError as exc:  # a FIFO or device put there is refused, not replaced
        raise EngineError(f"cannot write the dockerd state {path}: {exc.strerror or exc}") from exc


def stop_docker(session: str | None = None) -> DockerState | None:
    """Stop the ``dockerd`` that tor-sets started; leave any other daemon alone.

    Args:
        session: stop it only when this session started it (see :class:`DockerState`); None: whoever did.

    Returns:
        The daemon that was stopped, or None when tor-sets had not started one (or it was already gone, or another
        session started it).

    Raises:
        EngineError: it did not stop, even after SIGKILL.
    """
    state = docker_state()
    path = docker_dir() / STATE_FILE
    if state is None:
        path.unlink(missing_ok=True)
        return None
    if session is not None and state.session != session:
        log.info(
            "dockerd (pid %d) was started by another run (%s); leaving it running", state.pid, state.session or "-"
        )
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
