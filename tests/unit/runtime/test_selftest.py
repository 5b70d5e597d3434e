"""The self-test's pure parts: canary checks, alert matching, sinks, waiting, reports (no namespaces, no engine)."""

from __future__ import annotations

import itertools
import json
import os
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import pytest

from tor_sets.errors import SanityError, UsageError
from tor_sets.falco.alerts import alert_json
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.falco.load import load_rules
from tor_sets.runtime.selftest import (
    CaseResult,
    FileSink,
    HostNetwork,
    HttpSink,
    Observed,
    Report,
    format_report,
    open_sink,
    plan_lab,
    wait_for_alerts,
)
from tor_sets.runtime.selftest.simulate import _connections
from tor_sets.runtime.selftest.sinks import alert_matches, alerts_wanted
from tor_sets.verify.capture import MIN_GAP_NS

EMPTY = HostNetwork(frozenset(), frozenset())
MACHINE = HostNetwork(
    addresses=frozenset({ip_interface("192.0.2.2/24"), ip_interface("127.0.0.1/8"), ip_interface("fd00::2/64")}),
    routes=frozenset({ip_network("192.0.2.0/24"), ip_network("172.17.0.0/16"), ip_network("fd00::/64")}),
)


def observed(case: str = "outbound", **overrides: Any) -> Observed:
    if case == "outbound":
        values: dict[str, Any] = dict(
            client=ip_address("198.51.100.1"), client_port=40000, server=ip_address("198.51.100.77"), server_port=4444
        )
    else:
        values = dict(
            client=ip_address("198.51.100.77"), client_port=50000, server=ip_address("198.51.100.1"), server_port=5555
        )
    values.update(
        case=case,
        connect_ts_ns=1_000_000_000_000,
        accept_ts_ns=1_000_000_100_000,
        connect_s=0.0003,
        peer_seen=ip_address("198.51.100.77"),
        pid=4242,
    )
    values.update(overrides)
    return Observed(**values)


def alert(rule: str = OUTBOUND_RULE, **fields: Any) -> dict[str, Any]:
    base = {"fd.sip": "198.51.100.77", "fd.cip": "198.51.100.1", "fd.lport": 4444, "fd.rport": 40000}
    base.update(fields)
    return {"rule": rule, "output_fields": {k: v for k, v in base.items() if v != "-"}, "time": "x"}


# -- planning -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ("192.0.2.5", "192.0.2.0/24"),
        ("10.0.0.1", "not in a documentation range"),
        ("8.8.8.8", "not in a documentation range"),
        ("2001:db9::1", "not in a documentation range"),
        ("198.51.100.0", "network or broadcast"),
        ("203.0.113.255", "network or broadcast"),
        ("2001:db8::", "network or broadcast"),
        ("not-an-ip", "not an IP address"),
    ],
)
def test_plan_refuses_unsafe_canaries(canary: str, message: str) -> None:
    with pytest.raises(SanityError, match=message):
        plan_lab(canary, host=EMPTY)


def test_plan_refuses_a_canary_near_the_machines_network() -> None:
    host = HostNetwork(frozenset({ip_interface("198.51.100.200/25")}), frozenset({ip_network("203.0.113.64/26")}))
    with pytest.raises(SanityError, match=r"overlaps this machine's address 198\.51\.100\.200/25"):
        plan_lab("198.51.100.77", host=host)
    with pytest.raises(SanityError, match=r"route 203\.0\.113\.64/26"):
        plan_lab("203.0.113.1", host=host)
    host = HostNetwork(frozenset(), frozenset({ip_network("2001:db8:0:0:8000::/65")}))
    with pytest.raises(SanityError, match="route 2001:db8:0:0:8000::/65"):
        plan_lab("2001:db8::77", host=host)


def test_plan_on_this_projects_machines() -> None:
    plan = plan_lab("198.51.100.77", host=MACHINE, token="01234567")
    assert (str(plan.canary), str(plan.client), str(plan.network)) == (
        "198.51.100.77",
        "198.51.100.1",
        "198.51.100.0/24",
    )
    assert (plan.client_ns, plan.relay_ns) == ("tor-sets-lab-01234567-client", "tor-sets-lab-01234567-relay")
    assert len(plan.client_if) <= 15 and len(plan.relay_if) <= 15 and plan.client_if != plan.relay_if
    assert str(plan_lab("198.51.100.1", host=MACHINE).client) == "198.51.100.2"
    six = plan_lab("2001:db8::77", host=MACHINE)
    assert (str(six.client), str(six.network), six.family) == ("2001:db8::1", "2001:db8::/64", 10)
    assert plan_lab("203.0.113.9", host=MACHINE).relay_ns != plan_lab("203.0.113.9", host=MACHINE).relay_ns


@pytest.mark.parametrize("token", ["0A1B2C3D", "0a1b2c3", "../../x", "0a1b2c3d\n"])
def test_plan_refuses_a_token_that_would_make_odd_names(token: str) -> None:
    with pytest.raises(UsageError, match="token must be 8 lower-case hex digits"):
        plan_lab("198.51.100.77", host=EMPTY, token=token)


def test_conflicts_ignore_other_families_and_report_each_overlap() -> None:
    assert MACHINE.conflicts(ip_network("198.51.100.0/24")) == []
    assert MACHINE.conflicts(ip_network("192.0.2.128/25")) == ["address 192.0.2.2/24", "route 192.0.2.0/24"]
    assert MACHINE.conflicts(ip_network("fd00::/16")) == ["address fd00::2/64", "route fd00::/64"]


# -- matching -----------------------------------------------------------------------------------------------------


def test_expectations_watch_the_syscall_each_rule_fires_on() -> None:
    out, inn = alerts_wanted([observed("outbound"), observed("inbound")])
    assert OUTBOUND_RULE in out.rules and out.ts_ns == 1_000_000_000_000
    assert inn.rules == {INBOUND_RULE} and inn.ts_ns == 1_000_000_100_000


@pytest.mark.parametrize(
    ("doc", "matches"),
    [
        (alert(), True),
        (alert(rule=INBOUND_RULE), False),
        (alert(rule="Outbound Connection to Tor Relay"), True),  # --roles relay writes this rule instead
        (alert(**{"fd.sip": "198.51.100.78"}), False),
        (alert(**{"fd.cip": "198.51.100.2"}), False),
        (alert(**{"fd.lport": 4445}), False),
        (alert(**{"fd.lport": "4444", "fd.rport": "40000"}), True),  # text ports (sidekick templating)
        (alert(**{"fd.sport": 4444, "fd.cport": 40001}), False),  # exact ports win over lport/rport
        (alert(**{"fd.lport": "-", "fd.rport": "-", "fd.name": "198.51.100.1:40000->198.51.100.77:4444"}), True),
        (alert(**{"fd.lport": "-", "fd.rport": "-", "fd.name": "198.51.100.1:40001->198.51.100.77:4444"}), False),
        (alert(**{"fd.lport": "-", "fd.rport": "-"}), True),  # no port information: addresses decide
        ({"rule": OUTBOUND_RULE, "output": "x | fd_sip=198.51.100.77 fd_cip=198.51.100.1 process=a"}, True),
        ({"rule": OUTBOUND_RULE, "output_fields": None}, False),
    ],
)
def test_alert_matches(doc: dict[str, Any], matches: bool) -> None:
    (expected,) = alerts_wanted([observed()])
    assert alert_matches(expected, doc) is matches


def test_ipv6_addresses_match_in_any_spelling() -> None:
    (expected,) = alerts_wanted([observed(client=ip_address("2001:db8::1"), server=ip_address("2001:db8::77"))])
    doc = alert(**{"fd.sip": "2001:DB8:0:0::77", "fd.cip": "2001:db8::0001"})
    assert alert_matches(expected, doc)


# -- sinks --------------------------------------------------------------------------------------------------------


def test_file_sink_reads_only_what_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(json.dumps(alert()).encode() + b"\n")
    sink = FileSink(path)
    sink.mark()
    assert sink.poll() == []
    with path.open("ab") as out:
        out.write(b'{"rule":"a"}\nnot json\n{"rule":"b"')  # the last line is still being written
    assert [a["rule"] for a in sink.poll()] == ["a"]
    with path.open("ab") as out:
        out.write(b"}\n")
    assert [a["rule"] for a in sink.poll()] == ["b"]
    sink.deliver([b'{"rule":"c"}', b'{"rule":"d"}\n'])
    assert [a["rule"] for a in sink.poll()] == ["c", "d"]


def test_file_sink_follows_truncation_rotation_and_late_creation(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    sink = FileSink(path)
    sink.mark()  # no file yet
    assert sink.poll() == []
    path.write_bytes(b'{"rule":"first"}\n' * 3)
    assert len(sink.poll()) == 3
    path.write_bytes(b'{"rule":"truncated"}\n')  # shorter than before: read from the start
    assert [a["rule"] for a in sink.poll()] == ["truncated"]
    rotated = tmp_path / "new.json"
    rotated.write_bytes(b'{"rule":"rotated, and much longer than the first line was"}\n')
    os.replace(rotated, path)
    assert [a["rule"] for a in sink.poll()] == ["rotated, and much longer than the first line was"]


@pytest.mark.parametrize(
    "url", ["http://192.0.2.1:2801", "http://example.org:2801", "https://127.0.0.1:2801", "http://127.0.0.1"]
)
def test_http_sink_is_loopback_only(url: str) -> None:
    with pytest.raises(SanityError):
        HttpSink(url)


def test_open_sink() -> None:
    assert isinstance(open_sink("http://127.0.0.1:2801"), HttpSink)
    assert isinstance(open_sink("[::1]:2801"), FileSink)  # anything but a URL is a file
    assert HttpSink("http://localhost:2801/x").url == "http://localhost:2801"


class _ListSink:
    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = batches
        self.polls = 0

    def mark(self) -> None:
        pass

    def poll(self) -> list[dict[str, Any]]:
        self.polls += 1
        return self.batches.pop(0) if self.batches else []

    def deliver(self, lines: Any) -> None:
        pass

    def describe(self) -> str:
        return "list"


def test_wait_passes_when_every_alert_arrives() -> None:
    inbound_alert = alert(
        INBOUND_RULE, **{"fd.sip": "198.51.100.1", "fd.cip": "198.51.100.77", "fd.lport": 5555, "fd.rport": 50000}
    )
    sink = _ListSink([[alert(rule="Something else")], [alert(), {"not": "an alert"}], [inbound_alert]])
    results = wait_for_alerts(sink, [observed("outbound"), observed("inbound")], timeout=5, interval=0.01)
    assert [r.ok for r in results] == [True, True] and sink.polls == 3
    assert results[0].rule == OUTBOUND_RULE and results[0].alert_time == "x"
    assert results[0].alert_after_s is not None and results[0].alert_after_s > 0


def test_wait_fails_after_the_timeout() -> None:
    sink = _ListSink([[alert(**{"fd.lport": 1})]])
    results = wait_for_alerts(sink, [observed()], timeout=0.3, interval=0.05)
    assert [r.ok for r in results] == [False] and results[0].rule is None and sink.polls >= 3


# -- reports and simulated alerts ---------------------------------------------------------------------------------


def test_report_json_and_table() -> None:
    report = Report(
        canary=ip_address("198.51.100.77"),
        client=ip_address("198.51.100.1"),
        sink="file:/var/log/falco/events.json",
        timeout_s=30.0,
        setup_s=0.1234,
        wait_s=0.5,
        cases=(CaseResult(observed(), True, OUTBOUND_RULE, 0.25, "t"), CaseResult(observed("inbound"), False)),
    )
    doc = report.to_json()
    assert doc["ok"] is False and doc["schema"] == 1 and doc["setup_s"] == 0.123
    assert doc["cases"][0]["client"] == "198.51.100.1" and doc["cases"][1]["ok"] is False  # type: ignore[index]
    table = format_report(report)
    assert "198.51.100.1:40000 -> 198.51.100.77:4444" in table and "PASS" in table
    assert "(none within 30 s)" in table and table.splitlines()[-1].startswith("FAIL: canary 198.51.100.77")


def test_connections_are_spaced_for_the_capture_writer() -> None:
    same = observed(connect_ts_ns=10**18, accept_ts_ns=10**18)
    conns = _connections([same, observed("inbound", connect_ts_ns=10**18 + 1, accept_ts_ns=10**18 + 2)])
    assert [c.kind for c in conns] == ["connect", "accept4", "connect", "accept4"]
    assert all(b.ts_ns - a.ts_ns >= MIN_GAP_NS for a, b in itertools.pairwise(conns))
    assert conns[0].result == -115  # Python connects non-blocking when a timeout is set


def test_simulated_alert_has_falcos_shape() -> None:
    rule = load_rules(
        "- rule: R\n  desc: d\n  condition: evt.type = connect\n"
        "  output: Out | conn=%fd.name port=%fd.lport cid=%container.id cmd=%(proc.cmdline)\n"
        "  priority: WARNING\n  tags: [b, a]\n"
    ).rules["R"]
    values = {"fd.name": "1.2.3.4:5->6.7.8.9:10", "fd.lport": "10", "proc.cmdline": "curl x", "fd.sip": "6.7.8.9"}
    doc = alert_json(
        rule=rule.name,
        priority=rule.priority,
        output=rule.output,
        values=values,
        ts_ns=1767268800_000000001,
        hostname="node",
        tags=rule.tags,
        numeric=frozenset({"fd.lport"}),
    )
    assert doc == {
        "hostname": "node",
        "output": "12:00:00.000000001: Warning Out | conn=1.2.3.4:5->6.7.8.9:10 port=10 cid=<NA> cmd=curl x",
        "output_fields": {
            "evt.time": 1767268800_000000001,
            "fd.name": "1.2.3.4:5->6.7.8.9:10",
            "fd.lport": 10,
            "container.id": None,
            "proc.cmdline": "curl x",
        },
        "priority": "Warning",
        "rule": "R",
        "source": "syscall",
        "tags": ["a", "b"],
        "time": "2026-01-01T12:00:00.000000001Z",
    }


def test_doctests() -> None:
    import doctest

    from tor_sets.runtime.selftest import plan

    failures, tried = doctest.testmod(plan)
    assert failures == 0 and tried > 0
