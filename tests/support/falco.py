"""Real Falco for the tests: the engines, and plugins the tests build.

:func:`falco_or_skip` gives a Falco engine (``falco-local``, ``falco``) or a skip naming what is missing (a
failure under ``make test``). :func:`container_double` compiles the TEST SCAFFOLDING stand-in for Falco's container
plugin (tests/support/plugins/container_double.c), which is never shipped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.engines import engine_or_skip
from tor_sets.engines import FalcoEngine, Plugin
from tor_sets.errors import TorSetsError
from tor_sets.plugin.native import find_include_dir

PLUGINS = Path(__file__).parent / "plugins"


def falco_or_skip(name: str = "falco-local") -> FalcoEngine:
    """:func:`~tests.support.engines.engine_or_skip` for a Falco engine."""
    engine = engine_or_skip(name)
    assert isinstance(engine, FalcoEngine)
    return engine


def container_double(directory: Path) -> Plugin:
    """Compile the container-plugin test double into ``directory`` (once) and return it as a plugin to load."""
    library = directory / "libcontainer-double.so"
    if not library.exists():
        try:
            include = find_include_dir()
        except TorSetsError as exc:
            pytest.skip(f"no plugin headers to build the container double: {exc}")
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                "-Werror",
                f"-I{include}",
                "-o",
                str(library),
                str(PLUGINS / "container_double.c"),
            ],
            check=True,
        )
    return Plugin("container", library)
