"""Unit tests of the Falco container engine: command lines, alert parsing, the filter wrapper (no Docker)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tor_sets.engines import docker as _docker
from tor_sets.engines import falco
from tor_sets.engines.base import Completed
from tor_sets.engines.falco import FalcoDocker, falco_command, falco_image, filter_rules, parse_alerts, parse_time
from tor_sets.errors import EngineError, EngineUnavailable, RuleError

# Two alerts as Falco 0.42 prints them with json_output=true (one line each), between its end-of-run statistics.
FALCO_STDOUT = "\n".join(
    [
        json.dumps(
            {
                "hostname": "3f1c2b9a7d10",
                "output": "00:44:29.904933216: Warning Inbound connection from a Tor relay | "
                "connection=192.168.0.1:44434->192.168.0.3:80 lport=80 rport=44434 process=haproxy "
                "command=haproxy -f /haproxy.cfg -db -q container_id=host",
                "output_fields": {
                    "container.id": "host",
                    "evt.time": 1506127469904933216,
                    "fd.lport": 80,
                    "fd.name": "192.168.0.1:44434->192.168.0.3:80",
                    "fd.rport": 44434,
                    "proc.cmdline": "haproxy -f /haproxy.cfg -db -q",
                    "proc.name": "haproxy",
                },
                "priority": "Warning",
                "rule": "Inbound connection from a Tor relay",
                "source": "syscall",
                "tags": ["T1090.003", "TA0011", "mitre_command_and_control", "network"],
                "time": "2017-09-23T00:44:29.904933216Z",
            },
            separators=(",", ":"),
        ),
        json.dumps(
            {
                "hostname": "3f1c2b9a7d10",
                "output": "23:30:56.118383143: Notice Outbound connection to a Tor relay | "
                "connection=2001:db8::4:54405->2001:db8::3:1234 process=<NA>",
                "output_fields": {
                    "evt.time": 1533943856118383143,
                    "fd.name": "2001:db8::4:54405->2001:db8::3:1234",
                    "proc.name": None,
                    "fd.is_server": False,
                },
                "priority": "Notice",
                "rule": "Outbound connection to a Tor relay",
                "source": "syscall",
                "tags": [],
                "time": "2018-08-10T23:30:56.118383143Z",
            },
            separators=(",", ":"),
        ),
        "Events detected: 2",
        "Rule counts by severity:",
        "   WARNING: 1",
        "   NOTICE: 1",
        "Triggered rules by rule name:",
        "   Inbound connection from a Tor relay: 1",
    ]
)


def test_parse_alerts_reads_every_alert_and_skips_statistics() -> None:
    inbound, outbound = parse_alerts(FALCO_STDOUT)
    assert inbound.rule == "Inbound connection from a Tor relay"
    assert inbound.priority == "warning"
    assert inbound.ts_ns == 1506127469904933216 == int(inbound.output_fields["evt.time"])
    assert inbound.output_fields["fd.lport"] == "80"
    assert inbound.output.startswith("00:44:29.904933216: Warning")
    assert inbound.tags == ("T1090.003", "TA0011", "mitre_command_and_control", "network")
    assert outbound.priority == "notice"
    assert outbound.ts_ns == 1533943856118383143
    assert outbound.output_fields["proc.name"] == "<NA>"
    assert outbound.output_fields["fd.is_server"] == "false"


def test_parse_alerts_rejects_a_broken_alert() -> None:
    with pytest.raises(EngineError, match="unreadable alert"):
        parse_alerts('{"rule": "x", "priority": "Warning", "time": "yesterday"}')


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2017-09-23T00:44:29.904933216Z", 1506127469904933216),
        ("2017-09-23T00:44:29Z", 1506127469000000000),
        ("2017-09-23T00:44:29.9Z", 1506127469900000000),
        ("2017-09-23T02:44:29.904933216+02:00", 1506127469904933216),
        ("2017-09-22T23:44:29.904933216-0100", 1506127469904933216),
    ],
)
def test_parse_time_keeps_nanoseconds(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    ("version", "image", "expected"),
    [
        (
            "0.42.1",
            "falcosecurity/falco:0.42.1",
            "/usr/bin/falco -r /cap/rules.yaml -o engine.kind=replay -o engine.replay.capture_file=/cap/c.scap "
            "-o json_output=true -o rule_matching=all -U",
        ),
        (
            "0.38.0",
            "falcosecurity/falco-no-driver:0.38.0",
            "/usr/bin/falco -r /cap/rules.yaml -o engine.kind=replay -o engine.replay.capture_file=/cap/c.scap "
            "-o json_output=true -o rule_matching=all -U",
        ),
        (
            "0.36.2",
            "falcosecurity/falco-no-driver:0.36.2",
            "/usr/bin/falco -r /cap/rules.yaml -e /cap/c.scap -o json_output=true -o rule_matching=all -U",
        ),
        (
            "0.32.2",
            "falcosecurity/falco-no-driver:0.32.2",
            "/usr/bin/falco -r /cap/rules.yaml -e /cap/c.scap -o json_output=true -U",
        ),
    ],
)
def test_falco_command_per_version(version: str, image: str, expected: str) -> None:
    assert falco_image(version) == image
    assert " ".join(falco_command(version, "/cap/rules.yaml", "/cap/c.scap")) == expected


def test_filter_rules_keep_the_condition_verbatim() -> None:
    condition = 'evt.type in (connect, accept4) and fd.sip in (\'"10.0.0.1"\', 2001:db8::1) and proc.name != "a: b"'
    (rule,) = yaml.safe_load(filter_rules(condition, ("evt.type", "fd.sip")))
    assert rule["condition"] == condition
    assert rule["output"] == "tor-sets match | evt.type=%evt.type fd.sip=%fd.sip"
    assert rule["priority"] == "DEBUG"


class FakeDocker:
    """Stands in for the docker client: records the command line, answers with canned output."""

    def __init__(self, stdout: str, returncode: int = 0, stderr: str = "") -> None:
        self.stdout, self.returncode, self.stderr = stdout, returncode, stderr
        self.argv: list[str] = []
        self.files: dict[str, str] = {}

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.argv = list(argv)
        mount = next(a for a in argv if a.endswith(":/cap:ro")).split(":")[0]
        self.files = {p.name: p.read_text(errors="replace") for p in Path(mount).iterdir() if p.suffix == ".yaml"}
        return Completed(tuple(argv), self.returncode, self.stdout, self.stderr, 1.5, 1000)


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_docker, "require_daemon", lambda engine: None)
    monkeypatch.setattr(_docker, "image_present", lambda image, engine="docker": True)
    monkeypatch.setattr(_docker, "docker_cli", lambda engine="docker": "docker")


@pytest.mark.usefixtures("fake_docker")
def test_alerts_runs_falco_in_replay_mode_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeDocker(FALCO_STDOUT)
    monkeypatch.setattr(falco, "run_process", fake)
    capture = tmp_path / "x.scap"
    capture.write_bytes(b"scap")
    rules = tmp_path / "tor.yaml"
    rules.write_text("- rule: r\n")
    alerts = FalcoDocker().alerts(capture, rules)
    assert len(alerts) == 2
    argv = fake.argv
    assert argv[:6] == ["docker", "run", "--rm", "--network", "none", "--name"]
    assert argv[argv.index("falcosecurity/falco:0.42.1") + 1 :] == falco_command(
        "0.42.1", "/cap/rules.yaml", "/cap/capture.scap"
    )
    assert fake.files == {"rules.yaml": "- rule: r\n"}


@pytest.mark.usefixtures("fake_docker")
def test_filter_turns_alerts_into_matches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    line = json.dumps(
        {
            "output": "x",
            "output_fields": {"evt.type": "connect", "fd.sip": "2001:db8::3", "proc.name": None},
            "priority": "Debug",
            "rule": "tor-sets filter",
            "time": "2018-08-10T23:30:56.118383143Z",
        }
    )
    monkeypatch.setattr(falco, "run_process", FakeDocker(line + "\nEvents detected: 1\n"))
    capture = tmp_path / "x.scap"
    capture.write_bytes(b"scap")
    run = FalcoDocker().filter(capture, "evt.type = connect", ("evt.type", "fd.sip", "proc.name"))
    (match,) = run.matches
    assert (match.ts_ns, match.evt_type) == (1533943856118383143, "connect")
    assert dict(match.fields) == {"evt.type": "connect", "fd.sip": "2001:db8::3", "proc.name": "<NA>"}
    assert run.wall_s == 1.5


@pytest.mark.usefixtures("fake_docker")
def test_rules_that_do_not_load_raise_rule_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stderr = (
        "Sat Sep 23 00:44:29 2017: Loading rules from:\n"
        "Sat Sep 23 00:44:29 2017:    /cap/rules.yaml | schema validation: ok\n"
        "Error: /cap/rules.yaml: Invalid\n"
        "1 Errors:\nIn rules content: (/cap/rules.yaml:0:0)\n"
        "LOAD_ERR_COMPILE_CONDITION (Error compiling condition): unrecognized IPv4 address 1.2.3.4/24\n"
    )
    monkeypatch.setattr(falco, "run_process", FakeDocker("", 1, stderr))
    with pytest.raises(RuleError, match=r"rules do not load: Error: /cap/rules\.yaml: Invalid"):
        FalcoDocker().compile("fd.sip in (1.2.3.4/24)")


@pytest.mark.usefixtures("fake_docker")
def test_other_falco_failures_raise_engine_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(falco, "run_process", FakeDocker("", 1, "Unable to open capture: bad block\n"))
    capture = tmp_path / "x.scap"
    capture.write_bytes(b"scap")
    with pytest.raises(EngineError, match="replay failed \\(exit 1\\): Unable to open capture") as info:
        FalcoDocker().filter(capture, "evt.type = connect")
    assert not isinstance(info.value, RuleError)


def test_missing_image_is_reported_without_pulling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pull(image: str, engine: str, *, timeout: float = 600) -> None:
        raise AssertionError("must not pull")

    monkeypatch.setattr(_docker, "require_daemon", lambda engine: None)
    monkeypatch.setattr(_docker, "image_present", lambda image, engine="docker": False)
    monkeypatch.setattr(_docker, "pull", no_pull)
    with pytest.raises(
        EngineUnavailable, match=r"image falcosecurity/falco:0\.41\.0 not present and cannot be pulled: pulling is off"
    ):
        FalcoDocker("0.41.0").check()


def test_pull_is_tried_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    pulled: list[str] = []
    monkeypatch.setattr(_docker, "require_daemon", lambda engine: None)
    monkeypatch.setattr(_docker, "image_present", lambda image, engine="docker": False)
    monkeypatch.setattr(_docker, "pull", lambda image, engine, timeout=600: pulled.append(image))
    FalcoDocker("0.36.2", pull=True).check()
    assert pulled == ["falcosecurity/falco-no-driver:0.36.2"]
