"""Engines for integration tests: the engine, or a skip naming what is missing (a failure under make test)."""

from __future__ import annotations

import pytest

from tor_sets.engines import Engine, get_engine
from tor_sets.errors import EngineUnavailable


def engine_or_skip(name: str) -> Engine:
    engine = get_engine(name)
    try:
        engine.check()
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    return engine
