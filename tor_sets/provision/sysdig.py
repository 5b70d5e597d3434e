"""The sysdig engines' parts: Debian 12's sysdig on the host, sid's sysdig in a cached root, valgrind inside it.

Exports :func:`legacy` (``apt-get install -y sysdig`` when ``/usr/bin/sysdig`` is missing), :func:`modern`
(``debootstrap --variant=minbase sid`` into a temporary folder beside the final one, ``apt-get install sysdig
libfalcosecurity0-dev`` inside, then a rename into place: the root exists complete or not at all),
:func:`bench_tools` (valgrind in that root, for instruction counts) and :func:`root_sysdig_version`.
Each returns ``(done, detail)`` for :func:`tor_sets.provision.steps.step`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from tor_sets.engines import paths
from tor_sets.errors import EngineError
from tor_sets.provision import steps

__all__ = ["BENCH_PACKAGES", "MODERN_PACKAGES", "bench_tools", "legacy", "modern", "root_sysdig_version"]

log = logging.getLogger(__name__)

#: what the modern root gets beyond the minimal base
MODERN_PACKAGES: tuple[str, ...] = ("sysdig", "libfalcosecurity0-dev")
BENCH_PACKAGES: tuple[str, ...] = ("valgrind",)


def legacy() -> tuple[bool, str]:
    """Debian 12's sysdig 0.29.3 on the host."""
    binary = paths.LEGACY_SYSDIG
    if os.access(binary, os.X_OK):
        return False, f"present ({binary})"
    steps.apt_install(["sysdig"], "legacy")
    if not os.access(binary, os.X_OK):
        raise EngineError(f"legacy: apt-get installed sysdig but {binary} is missing")
    return True, f"installed {binary}"


def modern(root: Path) -> tuple[bool, str]:
    """Sid's sysdig 0.41.4 (libs 0.23) in a Debian sid root at ``root``."""
    if (root / "usr/bin/sysdig").exists():
        return False, f"present ({root})"
    if root.exists():
        raise EngineError(f"modern: {root} exists but holds no sysdig; remove it and run the install again")
    steps.need_root("modern")
    if shutil.which("debootstrap") is None:
        steps.apt_install(["debootstrap"], "modern")
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f"{root.name}.tmp-*"):
        log.info("modern: removing an unfinished root from an earlier attempt: %s", stale)
        steps.discard(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # the root's "/": apt drops to the _apt user, which must traverse it
        log.info("modern: debootstrap sid into %s (a few minutes)", tmp)
        steps.run(["debootstrap", "--variant=minbase", "sid", str(tmp)], "modern: debootstrap")
        steps.require_unmounted(tmp, "finish")  # debootstrap unmounts its /proc itself; make sure
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": steps.CHROOT_PATH}
        install_cmd = ["apt-get", "install", "-y", "--no-install-recommends", *MODERN_PACKAGES]
        steps.run(["chroot", str(tmp), *install_cmd], "modern: apt-get install in the root", env=env)
        steps.run(["chroot", str(tmp), "apt-get", "clean"], "modern: apt-get clean", env=env)
        steps.require_unmounted(tmp, "finish")
        os.rename(tmp, root)
    except BaseException:
        steps.discard(tmp)
        raise
    return True, f"installed sysdig {root_sysdig_version(root)} in {root}"


def bench_tools(root: Path) -> tuple[bool, str]:
    """valgrind inside the sid root: the benchmark counts the engine's instructions with callgrind."""
    if (root / "usr/bin/valgrind").exists():
        return False, "valgrind present in the sid root"
    steps.need_root("bench")
    steps.chroot_apt_install(root, BENCH_PACKAGES, "bench")
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
