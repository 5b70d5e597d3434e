"""The canary self-test for real, in two halves, since no live Falco runs here.

(a) Network namespaces and real connections: the server sees the canary as its peer; afterwards no namespace or
    veth is left and the machine's addresses, routes and interfaces are what they were (also after SIGTERM).
(b) Alert matching: the connections observed in (a) are written into a capture, replayed through the modern
    engine with the expanded conditions of rules built with ``--canary``, the matches turned into Falco JSON alert
    lines and delivered to the sink (a file Falco would append to, or the ``tor-sets enrich`` endpoint); the
    self-test's waiting and matching must find them, and must fail (timeout, exit 1) with rules built without
    the canary.

Network rules: both ends of every connection live in namespaces these tests create, joined by a veth pair, with
no default route; addresses come from 198.51.100.0/24, 203.0.113.0/24 or 2001:db8::/32 only, after checking that
the machine uses none of them; HTTP stays on 127.0.0.1.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
import requests

from tests.support.engines import engine_or_skip
from tor_sets.build import BuildOptions, build
from tor_sets.cli import main
from tor_sets.engines import Engine
from tor_sets.errors import TorSetsError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.runtime.enrich import Enricher, EnrichServer, RelayIndex, ServerSettings
from tor_sets.runtime.selftest import (
    FileSink,
    HostNetwork,
    HttpSink,
    Lab,
    Observed,
    plan_lab,
    run_selftest,
    simulate_alerts,
)

pytestmark = pytest.mark.integration

CANARY = "198.51.100.77"
CANARY6 = "2001:db8:7::77"


@pytest.fixture(autouse=True)
def _detach_cli_logging() -> Iterator[None]:
    """main() leaves a handler on the "tor_sets" logger bound to that test's captured stderr; later library logging
    would flush that closed stream (see the report: cli/__init__.py's _StderrHandler), so detach it after each test."""
    yield
    logger = logging.getLogger("tor_sets")
    for handler in [h for h in logger.handlers if type(h).__name__ == "_StderrHandler"]:
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def _pyroute2_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        pytest.skip("pyroute2 is not installed (pip install 'tor-sets[selftest]')")


@pytest.fixture
def host() -> HostNetwork:
    """The machine's network, checked to leave the test ranges alone before anything is created."""
    _pyroute2_or_skip()
    network = HostNetwork.read()
    for canary in (CANARY, CANARY6):
        plan_lab(canary, host=network)  # raises if the machine uses the range
    return network


def _namespaces() -> set[str]:
    from pyroute2 import netns

    return {name for name in netns.listnetns() if name.startswith("tor-sets-lab-")}


def _assert_untouched(before: HostNetwork, names: tuple[str, ...], interfaces: tuple[str, ...]) -> None:
    after = HostNetwork.read()
    assert after.addresses == before.addresses
    assert after.routes == before.routes
    assert not set(names) & _namespaces()
    assert not set(interfaces) & after.links
    assert not any(link.startswith("tsl") for link in after.links)


# -- (a) namespaces and real connections ----------------------------------------------------------------------------


@pytest.mark.parametrize("canary", [CANARY, CANARY6])
def test_real_connections_to_and_from_the_canary(host: HostNetwork, canary: str) -> None:
    plan = plan_lab(canary, host=host)
    with Lab(plan) as lab:
        assert set(lab.namespaces) == {plan.client_ns, plan.relay_ns} <= _namespaces()
        assert plan.client_if not in HostNetwork.read().links  # the veth never exists in our namespace
        outbound, inbound = lab.run()
    assert outbound.case == "outbound" and outbound.server == ip_address(canary) == outbound.peer_seen
    assert outbound.client == plan.client and outbound.client_port > 0
    assert inbound.case == "inbound" and inbound.client == ip_address(canary) == inbound.peer_seen  # the server saw it
    assert inbound.server == plan.client
    assert outbound.connect_ts_ns <= outbound.accept_ts_ns < inbound.connect_ts_ns <= inbound.accept_ts_ns
    assert outbound.pid == os.getpid() and 0 < outbound.connect_s < 5
    _assert_untouched(host, (plan.client_ns, plan.relay_ns), (plan.client_if, plan.relay_if))


def test_the_lab_has_no_way_out(host: HostNetwork) -> None:
    from pyroute2 import IPRoute, netns

    plan = plan_lab(CANARY, host=host)
    with Lab(plan, timeout=1) as lab:
        for ns in lab.namespaces:
            with IPRoute(netns=ns, flags=0) as ipr:
                routes = [r for r in ipr.get_routes(table=254) if r["family"] == socket.AF_INET]
            assert [(r.get_attr("RTA_DST"), r["dst_len"]) for r in routes] == [("198.51.100.0", 24)]  # no default
        sock = netns.create_socket(plan.client_ns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(1)
            with pytest.raises(OSError) as exc:  # outside the lab network there is no route at all
                sock.connect(("203.0.113.5", 9))
            assert exc.value.errno == errno.ENETUNREACH
        finally:
            sock.close()
        with pytest.raises(TorSetsError, match="outbound: the connection .* failed"):  # socket errors translated
            lab._connect(
                "outbound",
                server_ns=plan.relay_ns,
                server_ip=ip_address("203.0.113.5"),  # not an address of the lab: cannot listen there
                client_ns=plan.client_ns,
                client_ip=plan.client,
                port=0,
            )
    _assert_untouched(host, (plan.client_ns, plan.relay_ns), (plan.client_if, plan.relay_if))


def test_cleanup_after_an_error_inside(host: HostNetwork) -> None:
    plan = plan_lab(CANARY, host=host)
    with pytest.raises(RuntimeError, match="boom"), Lab(plan):
        raise RuntimeError("boom")
    _assert_untouched(host, (plan.client_ns, plan.relay_ns), (plan.client_if, plan.relay_if))


def test_cleanup_on_sigterm(host: HostNetwork, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from tor_sets.runtime.selftest import HostNetwork, Lab, plan_lab
        plan = plan_lab(sys.argv[1], host=HostNetwork.read())
        with Lab(plan) as lab:
            lab.outbound()  # forks pyroute2 children that inherit the SIGTERM handler: they must not clean up
            print(plan.client_ns, plan.relay_ns, plan.client_if, plan.relay_if, flush=True)
            time.sleep(60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script, CANARY], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            names = proc.stdout.readline().split()
            assert len(names) == 4 and set(names[:2]) <= _namespaces()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 143
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _assert_untouched(host, (names[0], names[1]), (names[2], names[3]))


def test_unsafe_canaries_are_refused_before_anything_is_created(host: HostNetwork, tmp_path: Path, capsys) -> None:
    before = _namespaces()
    for canary, code in (("192.0.2.10", 5), ("10.1.2.3", 5), ("fd00::77", 5)):
        assert main(["selftest", "--canary", canary, "--sink", str(tmp_path / "x.json"), "--timeout", "1"]) == code
        assert "tor-sets: error: canary" in capsys.readouterr().err
    assert _namespaces() == before


# -- (b) alert matching through a real engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Engine:
    """Real Falco replaying the connections (the sysdig engine is the second opinion where it says so)."""
    return engine_or_skip("falco-local")


@pytest.fixture(scope="module")
def rules_files(tmp_path_factory: pytest.TempPathFactory, bundled) -> dict[str, Path]:
    """The bundled snapshot's rules with the canaries, and without them."""
    folder = tmp_path_factory.mktemp("rules")
    files = {}
    with_canary = build(bundled, BuildOptions(canaries=(ip_address(CANARY), ip_address(CANARY6))))
    files["canary"] = folder / "with-canary.yaml"
    files["canary"].write_text(with_canary.text)
    files["plain"] = folder / "plain.yaml"
    files["plain"].write_text(build(bundled).text)
    return files


@pytest.mark.parametrize("engine_name", ["falco-local", "sysdig-modern"])
def test_capture_of_the_observed_connections_raises_exactly_the_two_alerts(
    host: HostNetwork, engine_name: str, rules_files: dict[str, Path]
) -> None:
    engine = engine_or_skip(engine_name)
    plan = plan_lab(CANARY, host=host)
    with Lab(plan) as lab:
        observed = lab.run()
    lines = simulate_alerts(observed, [rules_files["canary"]], engine, hostname="lab-host")
    alerts = [json.loads(line) for line in lines]
    # four syscalls were made (two connects, two accepts); only the canary's halves may alert
    assert [a["rule"] for a in alerts] == [OUTBOUND_RULE, INBOUND_RULE]
    out, inn = alerts
    o, i = observed
    assert out["output_fields"]["fd.sip"] == CANARY and out["output_fields"]["fd.cip"] == str(plan.client)
    assert f"| connection={o.client}:{o.client_port}->{o.server}:{o.server_port} " in out["output"]
    assert inn["output_fields"]["fd.cip"] == CANARY and inn["output_fields"]["fd.cport"] == i.client_port
    assert out["output_fields"]["evt.time"] == o.connect_ts_ns and inn["output_fields"]["evt.time"] == i.accept_ts_ns
    assert out["hostname"] == "lab-host" and out["priority"] == "Warning" and "tor" in out["tags"]
    assert " user=root " in out["output"] and "container" not in out["output"]
    assert simulate_alerts(observed, [rules_files["plain"]], engine) == []


def _simulating(rules: Path, engine: Engine, sink: FileSink | HttpSink, seen: list[tuple[Observed, ...]]):
    def on_connected(observed: tuple[Observed, ...]) -> None:
        seen.append(observed)
        sink.deliver(simulate_alerts(observed, [rules], engine))

    return on_connected


def test_selftest_passes_with_the_canary_in_the_rules(
    host: HostNetwork, engine: Engine, rules_files: dict[str, Path], tmp_path: Path
) -> None:
    events = tmp_path / "events.json"
    events.write_bytes(b'{"rule":"' + OUTBOUND_RULE.encode() + b'","output_fields":{"fd.sip":"198.51.100.77"}}\n')
    sink = FileSink(events)  # alerts written before the test started must not count
    seen: list[tuple[Observed, ...]] = []
    report = run_selftest(
        CANARY,
        sink,
        timeout=10,
        host=host,
        on_connected=_simulating(rules_files["canary"], engine, sink, seen),
        simulated_by=engine.name,
    )
    assert report.ok and [c.rule for c in report.cases] == [OUTBOUND_RULE, INBOUND_RULE]
    assert tuple(c.observed for c in report.cases) == seen[0]
    assert all(c.alert_after_s is not None and c.alert_after_s < 10 for c in report.cases)
    assert report.wait_s < 2 and report.simulated and report.engine == "falco-local"
    assert len(events.read_bytes().splitlines()) == 3


def test_selftest_fails_without_the_canary_in_the_rules(
    host: HostNetwork, engine: Engine, rules_files: dict[str, Path], tmp_path: Path
) -> None:
    sink = FileSink(tmp_path / "events.json")
    started = time.monotonic()
    report = run_selftest(
        CANARY, sink, timeout=2, host=host, on_connected=_simulating(rules_files["plain"], engine, sink, [])
    )
    assert not report.ok and [c.ok for c in report.cases] == [False, False]
    assert time.monotonic() - started >= 2 and report.wait_s >= 2


def test_cli_selftest_with_a_file_sink(
    host: HostNetwork, engine: Engine, rules_files: dict[str, Path], tmp_path: Path, capsys
) -> None:
    sink = str(tmp_path / "events.json")
    argv = ["selftest", "--canary", CANARY6, "--sink", sink, "--engine", engine.name, "--json"]
    assert main([*argv, "--simulate", str(rules_files["canary"]), "--timeout", "10"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["canary"] == CANARY6 and doc["simulated"] is True
    assert [(c["case"], c["ok"], c["peer_seen"]) for c in doc["cases"]] == [
        ("outbound", True, CANARY6),
        ("inbound", True, CANARY6),
    ]
    assert main([*argv, "--simulate", str(rules_files["plain"]), "--timeout", "1.5"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert "does not mention 2001:db8:7::77: expect FAIL" in captured.err
    assert main(["selftest", "--canary", CANARY, "--sink", sink, "--engine", engine.name]) == 2  # needs --simulate


@pytest.fixture
def endpoint(bundled) -> Iterator[EnrichServer]:
    enricher = Enricher(RelayIndex.from_snapshot(bundled), canaries=[CANARY, CANARY6])
    server = EnrichServer(enricher, ServerSettings()).start()
    yield server
    server.stop()


def test_cli_selftest_through_the_enrich_endpoint(
    host: HostNetwork, engine: Engine, rules_files: dict[str, Path], endpoint: EnrichServer, capsys
) -> None:
    argv = ["selftest", "--canary", CANARY, "--sink", endpoint.url, "--simulate", str(rules_files["canary"])]
    assert main([*argv, "--timeout", "10"]) == 0
    table = capsys.readouterr().out
    assert table.count("PASS") == 3 and f"sink {endpoint.url} (simulated with falco-local)" in table
    kept = requests.get(endpoint.url + "/alerts", timeout=5).json()["alerts"]
    assert [a["rule"] for a in kept] == [OUTBOUND_RULE, INBOUND_RULE]
    assert [a["tor"]["peers"] for a in kept] == [
        [{"address": CANARY, "fields": ["fd.sip"], "canary": True, "relays": []}],
        [{"address": CANARY, "fields": ["fd.cip"], "canary": True, "relays": []}],
    ]
    assert (
        main(
            [
                "selftest",
                "--canary",
                CANARY,
                "--sink",
                endpoint.url,
                "--simulate",
                str(rules_files["plain"]),
                "--timeout",
                "1",
            ]
        )
        == 1
    )
    assert "FAIL" in capsys.readouterr().out
