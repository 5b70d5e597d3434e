"""Small Docker helpers shared by the container engines and the installer.

Exports :func:`docker_cli`, :func:`daemon_running`, :func:`image_present`, :func:`require_image` and
:func:`run_argv` (the ``docker run`` command line every container engine uses: no network, the scratch folder
mounted read-only at ``/cap``, a known name so a timed-out run can be killed).
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from tor_sets.engines.process import run_process
from tor_sets.errors import EngineError, EngineUnavailable

__all__ = [
    "daemon_running",
    "docker_cli",
    "image_present",
    "kill_container",
    "pull",
    "require_daemon",
    "require_image",
    "run_argv",
]

#: where the scratch folder appears inside a container
MOUNT = "/cap"


def docker_cli(engine: str = "docker") -> str:
    """The path of the ``docker`` client.

    Raises:
        EngineUnavailable: no ``docker`` on PATH.
    """
    found = shutil.which("docker")
    if found is None:
        raise EngineUnavailable(
            f"{engine}: the docker client is missing; run `tor-sets engines install docker` as root", engine=engine
        )
    return found


def daemon_running(engine: str = "docker") -> bool:
    """Whether a Docker daemon answers the client.

    Raises:
        EngineUnavailable: no ``docker`` client.
    """
    done = run_process([docker_cli(engine), "version", "--format", "{{.Server.Version}}"], engine=engine, timeout=30)
    return done.returncode == 0 and bool(done.stdout.strip())


def image_present(image: str, engine: str = "docker") -> bool:
    """Whether the daemon holds ``image`` locally."""
    done = run_process(
        [docker_cli(engine), "image", "inspect", "--format", "{{.Id}}", image], engine=engine, timeout=30
    )
    return done.returncode == 0


def require_daemon(engine: str) -> None:
    """Check that a Docker daemon answers.

    Raises:
        EngineUnavailable: no client, or no daemon.
    """
    if not daemon_running(engine):
        raise EngineUnavailable(
            f"{engine}: no Docker daemon answers; run `tor-sets engines install docker` as root", engine=engine
        )


def require_image(image: str, engine: str, hint: str) -> None:
    """Check the client, the daemon and the image, in that order.

    Args:
        image: the image reference.
        engine: engine name for messages.
        hint: what to do when the image is missing (appended to the message).

    Raises:
        EngineUnavailable: naming the first thing missing.
    """
    require_daemon(engine)
    if not image_present(image, engine):
        raise EngineUnavailable(f"{engine}: image {image} not present; {hint}", engine=engine)


def container_name() -> str:
    """A fresh container name, so a timed-out run can be found and killed."""
    return f"tor-sets-{uuid.uuid4().hex[:12]}"


def run_argv(docker: str, image: str, workdir: Path | None, command: Sequence[str], *, name: str) -> list[str]:
    """``docker run`` of ``command`` in ``image`` without network, ``workdir`` (if any) read-only at ``/cap``.

    >>> " ".join(run_argv("docker", "img:1", Path("/tmp/w"), ["sysdig", "-r", "/cap/x"], name="t"))
    'docker run --rm --network none --name t -v /tmp/w:/cap:ro img:1 sysdig -r /cap/x'
    """
    mount = [] if workdir is None else ["-v", f"{workdir}:{MOUNT}:ro"]
    return [docker, "run", "--rm", "--network", "none", "--name", name, *mount, image, *command]


def kill_container(docker: str, name: str) -> None:
    """Kill a container by name, ignoring one that is already gone."""
    with contextlib.suppress(EngineError):
        run_process([docker, "kill", name], engine="docker", timeout=30)


def pull(image: str, engine: str, *, timeout: float = 600) -> None:
    """``docker pull IMAGE``.

    Raises:
        EngineUnavailable: the pull failed (message with Docker's reason).
    """
    done = run_process([docker_cli(engine), "pull", image], engine=engine, timeout=timeout)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise EngineUnavailable(
            f"{engine}: image {image} not present and cannot be pulled: {reason}",
            engine=engine,
            returncode=done.returncode,
            stderr=done.stderr_tail,
        )
