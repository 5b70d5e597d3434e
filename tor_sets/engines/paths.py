"""Where the engines live on this machine.

Exports :func:`cache_dir` (``${XDG_CACHE_HOME:-~/.cache}/tor-sets/engines``), :func:`modern_root` (the Debian
sid root holding sysdig 0.41, overridable with ``TOR_SETS_ENGINE_ROOT``), :func:`docker_dir` (the data root, log
and state file of a Docker daemon tor-sets started) and the names of the local images.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "LEGACY_SYSDIG",
    "MODERN_IMAGE",
    "MODERN_IMAGE_REPO",
    "cache_dir",
    "docker_dir",
    "modern_root",
]

#: the host's sysdig from Debian 12 (libs of 2022)
LEGACY_SYSDIG = Path("/usr/bin/sysdig")
#: repository of the image imported from the sid root; tagged with sysdig's version and ``latest``
MODERN_IMAGE_REPO = "tor-sets/sysdig-modern"
MODERN_IMAGE = f"{MODERN_IMAGE_REPO}:latest"


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
