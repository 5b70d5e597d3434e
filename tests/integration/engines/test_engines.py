"""Integration tests of the engines: real captures replayed through every engine present on this machine.

Captures (tests/data/PROVENANCE.md): ``inspect_502Error.scap`` (haproxy in front of a Python server, IPv4) and
``libs_single_ipv6_conn.scap`` (one IPv6 accept and connect). The Docker engine is set up through the
installer (dockerd started if needed, image imported) and dockerd is stopped afterwards if these tests
started it. An engine that cannot run here skips with the reason.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import DATA
from tests.support.engines import engine_or_skip
from tor_sets import provision as setup
from tor_sets.engines import SysdigLegacy, SysdigModern
from tor_sets.engines import docker as _docker
from tor_sets.engines.base import Engine, Match, Workspace
from tor_sets.engines.process import run_process
from tor_sets.errors import EngineTimeout, EngineUnavailable, RuleError

pytestmark = pytest.mark.integration

CAPTURES = DATA / "captures"
IPV4 = CAPTURES / "inspect_502Error.scap"
IPV6 = CAPTURES / "libs_single_ipv6_conn.scap"

CONNECTIONS = "evt.type in (connect, accept, accept4) and evt.rawres >= 0"
CONNECTIONS_OR_PENDING = "evt.type in (connect, accept, accept4) and (evt.rawres >= 0 or evt.res = EINPROGRESS)"
SYSDIG_ENGINES = ["sysdig-modern", "sysdig-modern-docker", "sysdig-legacy"]
#: real Falco first: every capture test runs on it, and the sysdig builds must agree with it
ENGINES = ["falco-local", "falco", *SYSDIG_ENGINES]
MAX_ARG_STRLEN = 128 * 1024


@pytest.fixture(scope="session")
def docker_ready() -> Iterator[None]:
    """Set up the Docker engine with the installer; stop dockerd at the end if this session started it."""
    if os.geteuid() != 0:
        pytest.skip("setting up the docker engine needs root")
    try:
        steps = setup.install(["docker"])
    except EngineUnavailable as exc:
        pytest.skip(f"the docker engine cannot be set up here: {exc}")
    started = any(step.name == "dockerd" and step.done for step in steps)
    yield
    if started:
        assert setup.stop_docker() is not None


def _engine(request: pytest.FixtureRequest, name: str) -> Engine:
    if "docker" in name or name == "falco":
        request.getfixturevalue("docker_ready")
    return engine_or_skip(name)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return _engine(request, request.param)


def tuples(matches: Sequence[Match]) -> set[tuple[int, str, str, str, str, str, str]]:
    """What two engines must agree on: the timestamp label and the connection (not the event's name)."""
    return {
        (
            m.ts_ns,
            m.fields["fd.cip"],
            m.fields["fd.cport"],
            m.fields["fd.sip"],
            m.fields["fd.sport"],
            m.fields["proc.name"],
            m.fields["evt.rawres"],
        )
        for m in matches
    }


def test_ipv4_capture_connections(engine: Engine) -> None:
    run = engine.filter(IPV4, CONNECTIONS)
    assert len(run.matches) == 80
    by_ts = {m.ts_ns: m for m in run.matches}
    first = by_ts[1506127469904933216]  # haproxy accepts curl's connection
    assert first.evt_type in {"accept", "accept4"}  # the 2022 engine calls this accept4 event "accept"
    assert (first.fields["fd.cip"], first.fields["fd.cport"]) == ("192.168.0.1", "44434")
    assert (first.fields["fd.sip"], first.fields["fd.sport"], first.fields["proc.name"]) == (
        "192.168.0.3",
        "80",
        "haproxy",
    )
    python = by_ts[1506127469905136356]  # the backend accepts haproxy's connection
    assert (python.evt_type, python.fields["proc.name"], python.fields["evt.rawres"]) == ("accept", "python", "4")
    assert (python.fields["fd.cip"], python.fields["fd.sip"]) == ("192.168.0.3", "192.168.0.2")
    connect = by_ts[1506127470835155834]  # haproxy's first successful connect to the backend
    assert connect.evt_type == "connect"
    assert (connect.fields["fd.cport"], connect.fields["fd.sip"], connect.fields["fd.sport"]) == (
        "54740",
        "192.168.0.2",
        "80",
    )
    assert sum(m.evt_type == "connect" for m in run.matches) == 6
    assert [m.ts_ns for m in run.matches] == sorted(m.ts_ns for m in run.matches)
    assert run.wall_s > 0 and run.max_rss_kb > 0


def test_ipv4_capture_counts_pending_connects(engine: Engine) -> None:
    run = engine.filter(IPV4, CONNECTIONS_OR_PENDING)
    assert len(run.matches) == 123
    assert sum(m.fields["evt.rawres"] == "-115" for m in run.matches) == 43


def test_ipv6_capture(engine: Engine) -> None:
    accept, connect = engine.filter(IPV6, CONNECTIONS_OR_PENDING).matches
    assert (accept.ts_ns, accept.evt_type, accept.fields["evt.rawres"]) == (1533943856118352985, "accept", "4")
    assert (connect.ts_ns, connect.evt_type, connect.fields["evt.rawres"]) == (1533943856118383143, "connect", "-115")
    for m in (accept, connect):
        assert (m.fields["fd.cip"], m.fields["fd.cport"]) == ("2001:db8::4", "54405")
        assert (m.fields["fd.sip"], m.fields["fd.sport"]) == ("2001:db8::3", "1234")
        assert m.fields["proc.name"] == "<NA>"  # the capture has no process list


def test_condition_longer_than_one_argument(engine: Engine) -> None:
    addresses = [f"100.{64 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(9_999)] + ["192.168.0.2"]
    condition = f"{CONNECTIONS} and fd.sip in ({', '.join(addresses)})"
    assert len(condition.encode()) > MAX_ARG_STRLEN
    engine.compile(condition)
    run = engine.filter(IPV4, condition)
    assert len(run.matches) == 43  # 37 accepts by the backend + 6 connects of haproxy to it
    assert {m.fields["fd.sip"] for m in run.matches} == {"192.168.0.2"}


@pytest.mark.parametrize(
    "condition",
    ["fd.sip in (1.2.3.4/24)", "evt.type = connect and", "fd.nosuchfield = 1"],
)
def test_bad_condition_is_a_rule_error(engine: Engine, condition: str) -> None:
    with pytest.raises(RuleError, match=f"{engine.name}: invalid condition: "):
        engine.compile(condition)
    with pytest.raises(RuleError, match=f"{engine.name}: invalid condition: "):
        engine.filter(IPV6, condition)


def test_unknown_output_field_is_a_rule_error(engine: Engine) -> None:
    with pytest.raises(RuleError, match=r"fd\.nosuchfield"):
        engine.filter(IPV6, CONNECTIONS, ("evt.type", "fd.nosuchfield"))


def test_engines_agree(request: pytest.FixtureRequest) -> None:
    present = []
    for name in ENGINES:
        try:
            present.append(_engine(request, name))
        except pytest.skip.Exception:
            continue
    if len(present) < 2:
        pytest.skip(f"needs two engines, found {[e.name for e in present]}")
    for capture in (IPV4, IPV6):
        results = {e.name: tuples(e.filter(capture, CONNECTIONS_OR_PENDING).matches) for e in present}
        reference = results[present[0].name]
        assert reference
        assert all(found == reference for found in results.values()), {k: len(v) for k, v in results.items()}


class AsciiLegacy(SysdigLegacy):
    """The legacy engine printing data buffers as text with their line ends (``sysdig -A``)."""

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return super()._argv(["-A", *sysdig_args], workspace)


class AsciiModern(SysdigModern):
    """The modern engine printing data buffers as text with their line ends (``sysdig -A``)."""

    def _argv(self, sysdig_args: Sequence[str], workspace: Workspace | None) -> list[str]:
        return super()._argv(["-A", *sysdig_args], workspace)


def test_values_with_line_ends_and_quotes_survive() -> None:
    results = {}
    for engine in (AsciiLegacy(), AsciiModern()):
        try:
            engine.check()
        except EngineUnavailable as exc:
            pytest.skip(str(exc))
        condition = "evt.type in (write, sendto, writev) and evt.rawres > 0 and fd.sport = 80"
        run = engine.filter(IPV4, condition, ("evt.type", "evt.arg.data", "proc.cmdline"))
        results[engine.name] = {m.ts_ns: m.fields["evt.arg.data"] for m in run.matches}
    legacy, modern = results.values()
    assert len(legacy) == 316
    assert legacy == modern
    request = next(v for v in legacy.values() if v.startswith("\nGET /bar HTTP/1.1\n"))
    assert "\nHost: localhost\n" in request


def test_modern_cleans_its_scratch_folders(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(request, "sysdig-modern")
    assert isinstance(engine, SysdigModern)
    made: list[Path] = []
    mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(prefix: str, dir: Path | None) -> str:
        made.append(Path(mkdtemp(prefix=prefix, dir=dir)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    engine.filter(IPV6, CONNECTIONS)
    with pytest.raises(RuleError):
        engine.filter(IPV6, "fd.sip in (1.2.3.4/24)")
    assert len(made) == 2
    for folder in made:
        assert folder.parent == engine.root / "tmp" and folder.name.startswith("tor-sets-")
        assert not folder.exists()


def test_docker_timeout_kills_the_container(request: pytest.FixtureRequest) -> None:
    engine = _engine(request, "sysdig-modern-docker")
    with pytest.raises(EngineTimeout):
        engine.filter(IPV4, CONNECTIONS, timeout=0.2)
    docker = _docker.docker_cli()
    listing = run_process(
        [docker, "ps", "-a", "--filter", "name=tor-sets-", "--format", "{{.Names}}"], engine="t", timeout=30
    )
    assert listing.stdout.strip() == ""
