"""``tor-sets verify``'s engine selection: what it says about the engines it skips (issue 14.8)."""

from __future__ import annotations

import re

import pytest

from tor_sets.cli.verify import select_engines, skip_reason
from tor_sets.engines import ENGINES
from tor_sets.errors import EngineUnavailable


@pytest.fixture
def no_engines_but_the_hosts(tmp_path, monkeypatch):
    """Real engines, really unavailable: an empty engine cache, no sid root, no docker client or chroot on PATH.
    Only the host's own sysdig (the 2022 engine, an absolute path) may remain."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TOR_SETS_ENGINE_ROOT", str(tmp_path / "no-root"))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path


def test_each_skipped_engine_is_named_once_without_python_in_the_reason(no_engines_but_the_hosts):
    try:
        engines, skipped = select_engines(["all"])
    except EngineUnavailable as exc:  # a host without sysdig: the one error lists them all
        message = str(exc)
        assert message.startswith("no engine available: ") and message.endswith(" (run `tor-sets engines install`)")
        skipped = message.removeprefix("no engine available: ").removesuffix(" (run `tor-sets engines install`)")
        skipped = skipped.split("; ")
        engines = []
    assert [e.name for e in engines] in ([], ["sysdig-legacy"])
    names = [reason.split(": ", 1)[0] for reason in skipped]
    assert names == [n for n in ENGINES if n not in {e.name for e in engines}]
    root = no_engines_but_the_hosts / "no-root"
    assert skipped[:4] == [
        "falco-local: Falco is not installed; run `tor-sets engines install falco` as root",
        "falco: the docker client is missing; run `tor-sets engines install docker` as root",
        f"sysdig-modern: no engine root at {root}; run `tor-sets engines install modern` as root",
        "sysdig-modern-docker: the docker client is missing; run `tor-sets engines install docker` as root",
    ]
    for name, reason in zip(names, skipped, strict=True):
        assert not reason.removeprefix(f"{name}: ").startswith(f"{name}:"), reason  # the prefix once
        assert not re.search(r"\w\(\w+=", reason), reason  # no Python constructor such as FalcoDocker(pull=True)


def test_skip_reason_adds_the_name_only_when_missing():
    assert skip_reason("falco", EngineUnavailable("falco: image tor-sets/falco:0.44.1 not present; run x")) == (
        "falco: image tor-sets/falco:0.44.1 not present; run x"
    )
    assert skip_reason("falco-local", EngineUnavailable("cannot read the engine cache /c: Permission denied")) == (
        "falco-local: cannot read the engine cache /c: Permission denied"
    )
