"""Building the plugin's shared library from the C source shipped in the package.

Exports :func:`source_bytes` (the C source), :func:`find_include_dir` (where ``plugin/plugin_api.h`` is),
:func:`compile_plugin` (gcc → ``libtorsets.so``) and :data:`LIBRARY_NAME`, :data:`CFLAGS`.

The plugin API header is not shipped: it comes from the Falco libraries' development package (Debian:
``libfalcosecurity0-dev``, ``/usr/include/falcosecurity/plugin/plugin_api.h``, plugin API 3.x). Where the host
has none, the Debian sid root of the modern engine (``tor-sets engines install modern``) has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from tor_sets.engines.paths import modern_root
from tor_sets.errors import TorSetsError
from tor_sets.files import require_folder

__all__ = ["CFLAGS", "LIBRARY_NAME", "SOURCE_NAME", "compile_plugin", "find_include_dir", "source_bytes"]

SOURCE_NAME = "torsets_plugin.c"
LIBRARY_NAME = "libtorsets.so"
#: C11, every warning an error, POSIX threads (the table loader), exported symbols limited to the plugin API
CFLAGS: tuple[str, ...] = (
    "-std=c11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fvisibility=hidden",
)
_HEADER = Path("plugin") / "plugin_api.h"


def source_bytes() -> bytes:
    """The plugin's C source as shipped in the package."""
    return (resources.files("tor_sets.plugin") / SOURCE_NAME).read_bytes()


def find_include_dir(candidates: Sequence[Path] | None = None) -> Path:
    """The first folder holding ``plugin/plugin_api.h``.

    Args:
        candidates: folders to try; default ``/usr/include/falcosecurity``, ``/usr/local/include/falcosecurity``,
            then the same inside the modern engine's root.

    Raises:
        TorSetsError: no candidate has the header.
    """
    if candidates is None:
        root = modern_root()
        candidates = [
            Path("/usr/include/falcosecurity"),
            Path("/usr/local/include/falcosecurity"),
            root / "usr/include/falcosecurity",
        ]
    for folder in candidates:
        if (folder / _HEADER).is_file():
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise TorSetsError(
        f"no plugin/plugin_api.h in {tried}: install libfalcosecurity0-dev (Debian sid) or run "
        "`tor-sets engines install modern`, or pass --include DIR"
    )


def compile_plugin(
    dest_dir: Path,
    *,
    include_dir: Path | None = None,
    cc: str | None = None,
    extra_flags: Sequence[str] = (),
    timeout: float = 120,
) -> Path:
    """Compile the plugin into ``dest_dir/libtorsets.so`` (written atomically) and return its path.

    Args:
        dest_dir: output folder (created if missing).
        include_dir: folder holding ``plugin/plugin_api.h`` (default: :func:`find_include_dir`).
        cc: the C compiler (default: ``$CC`` or ``gcc``).
        extra_flags: appended to :data:`CFLAGS`.
        timeout: seconds before the compiler is killed.

    Raises:
        TorSetsError: no compiler, no header, or the compiler failed (its diagnostics in the message).
    """
    require_folder(dest_dir)
    include = include_dir if include_dir is not None else find_include_dir()
    if not (include / _HEADER).is_file():
        raise TorSetsError(f"{include} has no {_HEADER}")
    compiler = cc or os.environ.get("CC") or "gcc"
    compiler_path = shutil.which(compiler)
    if compiler_path is None:
        raise TorSetsError(f"C compiler {compiler!r} not found (install gcc or set CC)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / LIBRARY_NAME
    with tempfile.TemporaryDirectory(prefix="tor-sets-plugin-") as scratch:
        source = Path(scratch) / SOURCE_NAME
        source.write_bytes(source_bytes())
        tmp = dest_dir / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
        argv = [compiler_path, *CFLAGS, *extra_flags, "-I", str(include), "-o", str(tmp), str(source)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            tmp.unlink(missing_ok=True)
            raise TorSetsError(f"{compiler} did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise TorSetsError(f"cannot run {compiler}: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise TorSetsError(f"{compiler} failed (exit {done.returncode}):\n{done.stderr.strip()[-4000:]}")
        os.replace(tmp, target)
    return target
