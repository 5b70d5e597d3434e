"""Session-wide test settings.

Integration tests skip with a reason when their engine, Docker or registry is missing, which suits a developer's
ad-hoc run. ``make test`` sets ``TOR_SETS_NO_SKIP=1``: every such skip then fails, so CI cannot pass without
having run the real engines, real Falco first.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("TOR_SETS_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under TOR_SETS_NO_SKIP=1 (make test must run everything): {reason}"


@pytest.fixture(scope="session", autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory):
    """Refresh states and locks of every test (and of the commands tests start) go to one folder of the session:
    never /var/lib/tor-sets. They are keyed by the rules file's path, so tests do not share one."""
    from tor_sets.deploy.refresh.state import STATE_DIR_ENV

    previous = os.environ.get(STATE_DIR_ENV)
    os.environ[STATE_DIR_ENV] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop(STATE_DIR_ENV, None)
    else:
        os.environ[STATE_DIR_ENV] = previous


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def _onionoo_server():
    from tests.support.onionoo_server import OnionooServer

    server = OnionooServer().start()
    yield server
    server.stop()


@pytest.fixture
def onionoo_server(_onionoo_server):
    """The loopback Onionoo server, reset to an empty 200 for each test."""
    _onionoo_server.reset()
    return _onionoo_server


@pytest.fixture(scope="session")
def bundled_bytes() -> bytes:
    import gzip

    return gzip.decompress((REPO / "tor_sets" / "data" / "details-derived-guard-exit-2026-02-28.json.gz").read_bytes())


@pytest.fixture(scope="session")
def bundled():
    from tor_sets.onionoo import bundled_snapshot

    return bundled_snapshot()
