"""Setting the real engines up on this machine, idempotently: what ``tor-sets engines install`` runs, and nothing
else in tor-sets uses.

Exports :func:`install` (parts ``legacy``, ``modern``, ``docker``, ``falco``, ``bench``, or ``all``; each step is
skipped when already done), :func:`engine_status` (every engine, present or not, with its version), :class:`Step`,
:class:`EngineStatus`, :data:`PARTS`, :data:`EXTRA_PARTS`, and the Docker daemon's :func:`stop_docker`.

Modules, one per kind of part: :mod:`.steps` (running commands with logs, apt, the lock, mounts),
:mod:`.sysdig` (Debian's sysdig on the host and in a sid root, valgrind), :mod:`.docker` (docker.io, a
``dockerd`` that tor-sets starts and stops, ``docker import``), :mod:`.falco` (Falco from the official image or
built from the pinned upstream source). Nothing is ever mounted inside a root, and a root with anything mounted
inside is neither archived nor deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tor_sets.engines import ENGINES, get_engine
from tor_sets.engines.paths import modern_root
from tor_sets.errors import EngineError, EngineUnavailable
from tor_sets.provision import docker, falco, steps, sysdig
from tor_sets.provision.docker import DockerState, docker_state, stop_docker
from tor_sets.provision.steps import Step

__all__ = [
    "EXTRA_PARTS",
    "PARTS",
    "DockerState",
    "EngineStatus",
    "Step",
    "docker_state",
    "engine_status",
    "install",
    "stop_docker",
]

#: the installable parts, in the order ``all`` installs them
PARTS: tuple[str, ...] = ("legacy", "modern", "docker", "falco")
#: parts only ``tor-sets bench`` needs, not included in ``all``
EXTRA_PARTS: tuple[str, ...] = ("bench",)


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


def install(
    names: Iterable[str],
    *,
    root: Path | None = None,
    falco_source: Path | None = None,
    falco_version: str | None = None,
    pull: bool = True,
) -> tuple[Step, ...]:
    """Set up the named parts; skip what is in place.

    ``docker`` needs the modern root (it imports it) and installs it first if missing; ``falco`` makes its image
    with the Docker part.

    Args:
        names: parts to install (:data:`PARTS`, :data:`EXTRA_PARTS`, ``all``).
        root: the modern root (default :func:`~tor_sets.engines.paths.modern_root`).
        falco_source: folder of the Falco source tarballs (see :func:`tor_sets.provision.falco.find_sources`).
        falco_version: which Falco release to install.
        pull: let the Falco part try the official image first.

    Returns:
        Every step, done or skipped, in order.

    Raises:
        EngineUnavailable: an unknown part, root rights or a tool missing (the message says which).
        EngineError: a step failed (the message names the step, and its log where there is one).
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
    done: list[Step] = []
    with steps.lock():
        if "legacy" in wanted:
            done.append(steps.step("legacy", "sysdig", sysdig.legacy))
        if wanted & {"modern", "docker", "bench"}:
            done.append(steps.step("modern", "sid root", lambda: sysdig.modern(root)))
        if "bench" in wanted:
            done.append(steps.step("bench", "valgrind in the sid root", lambda: sysdig.bench_tools(root)))
        if wanted & {"docker", "falco"}:
            done.append(steps.step("docker", "docker.io", docker.packages))
            done.append(steps.step("docker", "dockerd", docker.daemon))
        if "docker" in wanted:
            done.append(steps.step("docker", "image", lambda: docker.sysdig_image(root)))
        if "falco" in wanted:
            done.extend(falco.install(falco_source, version=falco_version, pull=pull))
    return tuple(done)


def engine_status() -> tuple[EngineStatus, ...]:
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
