"""The sysdig engines: libsinsp as Debian ships it, driven through the tor-sets chisel.

Exports three :class:`~tor_sets.engines.base.SysdigEngine` subclasses that differ only in where sysdig runs:

* :class:`SysdigModern` (``sysdig-modern``): sysdig 0.41.4 (libs 0.23, the line of current Falco) in a Debian sid
  root, entered with ``chroot``. Needs root. Fastest of the modern ones.
* :class:`SysdigModernDocker` (``sysdig-modern-docker``): the same root imported as the local image
  ``tor-sets/sysdig-modern``, run with ``docker run --network none``.
* :class:`SysdigLegacy` (``sysdig-legacy``): the host's sysdig 0.29.3 (libs of 2022-03, Debian 12). Its ``in``
  is an OR chain, it rejects IPv6 CIDRs, and it names some ``accept4`` events ``accept``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tor_sets.engines import docker as _docker
from tor_sets.engines.base import (
    CHISEL_NAME,
    SysdigEngine,
    Workspace,
    chisel_source,
    run_process,
    temporary_workspace,
    write_spec,
)
from tor_sets.engines.paths import LEGACY_SYSDIG, MODERN_IMAGE, modern_root
from tor_sets.errors import EngineError, EngineUnavailable

__all__ = ["SysdigLegacy", "SysdigModern", "SysdigModernDocker"]

#: where sysdig lives inside the sid root and the image
SYSDIG_INSIDE = "/usr/bin/sysdig"


class SysdigLegacy(SysdigEngine):
    """The host's sysdig 0.29.3 (Debian 12)."""

    name = "sysdig-legacy"
    description = "host sysdig 0.29.3 (Debian 12, libs 2022-03)"
    supports_plugins = False  # it predates the plugin API the tor-sets plugin needs

    def __init__(self, binary: Path = LEGACY_SYSDIG) -> None:
        super().__init__()
        self.binary = binary

    def check(self) -> None:
        """Raises EngineUnavailable when the host has no sysdig."""
        if not os.access(self.binary, os.X_OK):
            raise EngineUnavailable(
                f"{self.name}: {self.binary} not found; run `tor-sets engines install legacy` as root",
                engine=self.name,
            )

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        return temporary_workspace(None, str)

    def _capture_path(self, capture: Path, workspace: Workspace) -> str:
        return str(capture.resolve())  # same filesystem view: no copy needed

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return [str(self.binary), *sysdig_args]


class SysdigModern(SysdigEngine):
    """Sysdig 0.41.4 in the cached Debian sid root, through ``chroot``.

    Files for a run go to ``ROOT/tmp/tor-sets-XXXX`` and are removed afterwards. Nothing is mounted in the root:
    replaying a capture needs no ``/proc``.
    """

    name = "sysdig-modern"
    description = "sysdig 0.41.4 (libs 0.23) in a Debian sid root via chroot"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__()
        self.root = root if root is not None else modern_root()

    def check(self) -> None:
        """Raises EngineUnavailable when the root is missing, we are not root, or there is no ``chroot``."""
        if not (self.root / SYSDIG_INSIDE.lstrip("/")).exists():
            raise EngineUnavailable(
                f"{self.name}: no engine root at {self.root}; run `tor-sets engines install modern` as root",
                engine=self.name,
            )
        if os.geteuid() != 0:
            raise EngineUnavailable(f"{self.name}: chroot needs root; run tor-sets as root", engine=self.name)
        if shutil.which("chroot") is None:
            raise EngineUnavailable(f"{self.name}: the chroot command (coreutils) is missing", engine=self.name)

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        tmp = self.root / "tmp"
        return temporary_workspace(tmp, lambda host: "/tmp/" + host.name)

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        chroot = shutil.which("chroot") or "chroot"
        return [chroot, str(self.root), SYSDIG_INSIDE, *sysdig_args]

    def count_instructions(self, capture: Path | None, condition: str, *, timeout: float = 3600) -> int:
        """Instructions the engine executes to load ``condition`` and replay ``capture`` (None: load only).

        Counted by valgrind's callgrind inside the root: the same for the same binary and inputs to within about
        0.1 % (only scratch-folder names differ), so unlike CPU time it does not move with a busy machine.
        Valgrind needs ``/proc``; it is mounted in a private mount namespace (``unshare --mount``) that
        disappears with the process, so nothing is ever left mounted in the root.

        Raises:
            EngineUnavailable: valgrind is not in the root (``tor-sets engines install bench``).
            EngineError: the run failed or printed no count.
        """
        self.check()
        if not (self.root / "usr/bin/valgrind").exists():
            raise EngineUnavailable(
                f"{self.name}: valgrind is not in {self.root}; run `tor-sets engines install bench` as root",
                engine=self.name,
            )
        with self._workspace() as ws:
            (ws.host / CHISEL_NAME).write_bytes(chisel_source())
            fields: tuple[str, ...]
            if capture is None:
                (ws.host / "empty.scap").write_bytes(b"")
                target, mode, fields = ws.path("empty.scap"), "compile", ()
            else:
                target, mode, fields = self._capture_path(capture, ws), "filter", ("evt.type",)
            write_spec(ws.host / "spec", mode, fields, condition)
            script = (
                'mount -t proc proc "$0/proc" && exec chroot "$0" valgrind --tool=callgrind '
                '--callgrind-out-file=/dev/null "$@"'
            )
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                str(self.root),
                SYSDIG_INSIDE,
                "-r",
                target,
                "-c",
                ws.path(CHISEL_NAME),
                ws.path("spec"),
            ]
            done = run_process(argv, engine=self.name, timeout=timeout)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            first = next((line for line in done.stderr.splitlines() if line.strip()), "no message")
            raise EngineError(
                f"{self.name}: callgrind printed no count (exit {done.returncode}): {first[:300]}",
                engine=self.name,
                returncode=done.returncode,
                stderr=done.stderr_tail,
            )
        return int(found[1])


class SysdigModernDocker(SysdigEngine):
    """Sysdig 0.41.4 in the local image imported from the sid root, run without network.

    The scratch folder is mounted read-only at ``/cap``. The peak RSS is the one the chisel reads from
    ``/proc/self/status`` inside the container, since the measured child is only the docker client.
    """

    name = "sysdig-modern-docker"
    description = "sysdig 0.41.4 (libs 0.23) in the local image tor-sets/sysdig-modern via docker"
    rss_from_child = False

    def __init__(self, image: str = MODERN_IMAGE) -> None:
        super().__init__()
        self.image = image

    def check(self) -> None:
        """Raises EngineUnavailable when the client, the daemon or the image is missing."""
        _docker.require_image(self.image, self.name, "run `tor-sets engines install docker` as root")

    def _workspace(self) -> contextlib.AbstractContextManager[Workspace]:
        return temporary_workspace(None, lambda host: _docker.MOUNT)

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return _docker.run_argv(
            _docker.docker_cli(self.name),
            self.image,
            None if workspace is None else workspace.host,
            [SYSDIG_INSIDE, *sysdig_args],
            name=_docker.container_name(),
        )

    def _on_timeout(self, argv: Sequence[str]) -> None:
        _docker.kill_container(argv[0], argv[argv.index("--name") + 1])
