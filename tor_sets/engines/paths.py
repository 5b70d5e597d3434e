"""Where the engines live on this machine.

Exports :func:`cache_dir` (``${XDG_CACHE_HOME:-~/.cache}/tor-sets/engines``), :func:`modern_root` (the Debian
sid root holding sysdig 0.41, overridable with ``TOR_SETS_ENGINE_ROOT``), :func:`docker_dir` (the data root, log
and state file of a Docker daemon tor-sets started), :func:`falco_dir` and :func:`falco_installed` (a Falco
runtime root in the cache, as :class:`FalcoInstall`), and the names of the local images.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tor_sets.errors import EngineUnavailable

__all__ = [
    "DEFAULT_FALCO_VERSION",
    "FALCO_IMAGE_REPO",
    "FALCO_OFFICIAL_REPO",
    "FALCO_SOURCE_ENV",
    "LEGACY_SYSDIG",
    "MODERN_IMAGE",
    "MODERN_IMAGE_REPO",
    "FalcoInstall",
    "cache_dir",
    "docker_dir",
    "falco_dir",
    "falco_installed",
    "modern_root",
]

#: the host's sysdig from Debian 12 (libs of 2022)
LEGACY_SYSDIG = Path("/usr/bin/sysdig")
#: repository of the image imported from the sid root; tagged with sysdig's version and ``latest``
MODERN_IMAGE_REPO = "tor-sets/sysdig-modern"
MODERN_IMAGE = f"{MODERN_IMAGE_REPO}:latest"
#: the Falco release tor-sets verifies on by default
DEFAULT_FALCO_VERSION = "0.44.1"
#: the local Falco image, tagged with Falco's version (built from source, or the official image re-tagged)
FALCO_IMAGE_REPO = "tor-sets/falco"
#: the official image, used when it can be pulled
FALCO_OFFICIAL_REPO = "falcosecurity/falco"
#: the folder of Falco source tarballs, when ``--falco-source`` is not given
FALCO_SOURCE_ENV = "TOR_SETS_FALCO_SOURCE"


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/tor-sets/engines``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tor-sets" / "engines"


def modern_root() -> Path:
    """The sid root of the modern engine: ``$TOR_SETS_ENGINE_ROOT`` or ``cache_dir()/sid-root``."""
    override = os.environ.get("TOR_SETS_ENGINE_ROOT")
    return Path(override) if override else cache_dir() / "sid-root"


def docker_dir() -> Path:
    """Data root, log and state file of a Docker daemon started by tor-sets."""
    return cache_dir() / "docker"


def falco_dir(version: str | None = None) -> Path:
    """``cache_dir()/falco``, or the folder of one Falco release in it (``runtime/``, ``logs/``)."""
    base = cache_dir() / "falco"
    return base if version is None else base / version


@dataclass(frozen=True, slots=True)
class FalcoInstall:
    """A Falco runtime root in the cache: the stripped binary, its libraries and loader, ``etc/falco``.

    It runs on this machine without chroot or Docker through its own loader, as any user::

        RUNTIME/usr/lib64/ld-linux-x86-64.so.2 --library-path RUNTIME/usr/lib/x86_64-linux-gnu RUNTIME/usr/bin/falco
    """

    home: Path
    runtime: Path

    #: the manifest's name inside the runtime root
    MANIFEST: ClassVar[str] = "tor-sets-falco.json"

    @property
    def manifest(self) -> dict[str, Any]:
        """What the install recorded (version, build key, origin, sources, binary digest)."""
        try:
            doc = json.loads((self.runtime / self.MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", self.home.name))

    @property
    def key(self) -> str:
        return str(self.manifest.get("key", ""))

    @property
    def origin(self) -> str:
        """``source`` (built here) or ``image`` (exported from the official image)."""
        return str(self.manifest.get("origin", ""))

    @property
    def binary(self) -> Path:
        return self.runtime / "usr/bin/falco"

    def loader(self) -> Path | None:
        """The runtime root's dynamic loader, or None when there is none (a static binary)."""
        found = sorted((self.runtime / "usr/lib64").glob("ld-linux*.so*")) + sorted(
            (self.runtime / "usr/lib").glob("ld-linux*.so*")
        )
        return found[0] if found else None

    def library_path(self) -> str:
        """Every folder of the runtime root that holds shared libraries, for ``--library-path``."""
        folders = sorted({p.parent for p in (self.runtime / "usr/lib").rglob("*.so*") if p.is_file()})
        return ":".join(str(f) for f in folders)

    def command(self, args: Sequence[str], *, preload: Sequence[Path] = ()) -> list[str]:
        """The command line that runs this Falco with ``args`` on this machine, through its own loader."""
        loader = self.loader()
        if loader is None:
            return [str(self.binary), *args]
        extra = ["--preload", ":".join(str(p) for p in preload)] if preload else []
        return [str(loader), "--library-path", self.library_path(), *extra, str(self.binary), *args]


def falco_installed(version: str | None = None) -> FalcoInstall | None:
    """The Falco runtime root of ``version`` in the cache (default: the newest there), or None.

    Raises:
        EngineUnavailable: the cache cannot be read (another user's, e.g. root's, as a non-root user).
    """
    base = falco_dir()
    try:
        if version is not None:
            candidates = [base / version]
        else:
            found = [p for p in base.glob("*") if re.fullmatch(r"\d+\.\d+\.\d+", p.name)] if base.is_dir() else []
            candidates = sorted(found, key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
        for home in candidates:
            install = FalcoInstall(home, home / "runtime")
            if install.binary.is_file() and install.manifest:
                return install
    except OSError as exc:  # EACCES: Path.is_dir() and is_file() only swallow "not there"
        raise EngineUnavailable(f"cannot read the engine cache {base}: {exc.strerror or exc}") from exc
    return None
