"""Unit tests of the Falco engines without Falco: the per-run configuration, alert and ``-V`` parsing, the command
lines (the real runs are in tests/integration/falco/)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tor_sets.engines import docker as _docker
from tor_sets.engines import falco
from tor_sets.engines.falco import FalcoContainer, FalcoLocal, falco_config, filter_rules, parse_validation
from tor_sets.engines.paths import FalcoInstall
from tor_sets.engines.process import Completed
from tor_sets.errors import EngineError, EngineUnavailable, RuleError
from tor_sets.falco.alerts import parse_alerts, parse_time

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


def test_filter_rules_keep_the_condition_verbatim() -> None:
    condition = 'evt.type in (connect, accept4) and fd.sip in (\'"10.0.0.1"\', 2001:db8::1) and proc.name != "a: b"'
    (rule,) = yaml.safe_load(filter_rules(condition, ("evt.type", "fd.sip")))
    assert rule["condition"] == condition
    assert rule["output"] == "tor-sets match | evt.type=%evt.type fd.sip=%fd.sip"
    assert rule["priority"] == "DEBUG"


def test_falco_config_is_complete_and_owns_every_setting() -> None:
    text = falco_config(
        ["/cap/rules-0.yaml", "/cap/rules-1.yaml"],
        capture="/cap/capture.scap",
        plugins=[("torsets", "/cap/lib-torsets.so", '{"table":"/cap/t"}')],
        fields=["evt.type", "fd.sip"],
        rule_matching="first",
    )
    config = yaml.safe_load(text)
    assert config["config_files"] == []  # no drop-in of the image or the host takes part
    assert config["rules_files"] == ["/cap/rules-0.yaml", "/cap/rules-1.yaml"]
    assert config["engine"] == {"kind": "replay", "replay": {"capture_file": "/cap/capture.scap"}}
    assert config["load_plugins"] == ["torsets"]
    assert config["plugins"] == [
        {"name": "torsets", "library_path": "/cap/lib-torsets.so", "init_config": '{"table":"/cap/t"}'}
    ]
    assert config["append_output"] == [{"extra_fields": ["evt.type", "fd.sip"]}]
    assert config["rule_matching"] == "first" and config["json_output"] is True
    assert config["syslog_output"] == {"enabled": False} and config["log_syslog"] is False
    assert config["webserver"] == {"enabled": False} and config["watch_config_files"] is False
    assert "engine" not in yaml.safe_load(falco_config([], capture=None))


# What Falco 0.44.1 prints for `falco -c CONFIG -V A -V B` with json_output (one line; shortened here).
VALIDATION = json.dumps(
    {
        "falco_load_results": [
            {
                "errors": [],
                "name": "/cap/rules-0.yaml",
                "schema_valid": True,
                "schema_warnings": [],
                "successful": True,
                "warnings": [],
            },
            {
                "errors": [
                    {
                        "code": "LOAD_ERR_COMPILE_OUTPUT",
                        "codedesc": "Error compiling output",
                        "context": {"snippet": "  output: Outbound ... container_id=%container.id\n"},
                        "message": "unknown filter: unexpected token after '",
                    }
                ],
                "name": "/cap/rules-1.yaml",
                "schema_valid": True,
                "schema_warnings": [],
                "successful": False,
                "warnings": [
                    {"code": "LOAD_DEPRECATED_ITEM", "codedesc": "Used deprecated item", "message": "evt.dir"}
                ],
            },
        ]
    },
    separators=(",", ":"),
)


def test_parse_validation_gives_each_file_its_verdict() -> None:
    ok, bad = parse_validation(
        "Mon Nov 30 05:29:11 2026: Falco version: 0.44.1\n" + VALIDATION + "\n",
        [Path("a.yaml"), Path("b.yaml")],
        ["/cap/rules-0.yaml", "/cap/rules-1.yaml"],
    )
    assert (ok.path, ok.ok, ok.warnings, ok.message) == (Path("a.yaml"), True, (), "Ok")
    assert (bad.path, bad.ok) == (Path("b.yaml"), False)
    assert bad.message.splitlines()[0] == (
        "LOAD_ERR_COMPILE_OUTPUT (Error compiling output): unknown filter: unexpected token after '"
    )
    assert bad.warnings == ("LOAD_DEPRECATED_ITEM (Used deprecated item): evt.dir",)


def test_parse_validation_without_a_result_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="printed no result"):
        parse_validation("Error: unable to load plugin\n", [Path("a.yaml")], ["/cap/rules-0.yaml"])
    with pytest.raises(EngineError, match="no verdict for a.yaml"):
        parse_validation(VALIDATION, [Path("a.yaml")], ["/cap/other.yaml"])


class FakeFalco:
    """Stands in for the process seam: records the command line and the staged files, answers with canned output."""

    def __init__(self, stdout: str, returncode: int = 0, stderr: str = "") -> None:
        self.stdout, self.returncode, self.stderr = stdout, returncode, stderr
        self.argv: list[str] = []
        self.files: dict[str, str] = {}

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.argv = list(argv)
        config = Path(argv[argv.index("-c") + 1])
        if not config.exists():  # a container: the scratch folder is the mount's source
            mount = next(a for a in argv if a.endswith(":/cap:ro")).split(":")[0]
            config = Path(mount) / config.name
        self.files = {p.name: p.read_text(errors="replace") for p in config.parent.iterdir() if p.suffix == ".yaml"}
        return Completed(tuple(argv), self.returncode, self.stdout, self.stderr, 1.5, 1000, 0.5)


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_docker, "require_daemon", lambda engine: None)
    monkeypatch.setattr(_docker, "image_present", lambda image, engine="docker": True)
    monkeypatch.setattr(_docker, "docker_cli", lambda engine="docker": "docker")


@pytest.mark.usefixtures("fake_docker")
def test_container_runs_falco_without_network_on_its_own_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeFalco(FALCO_STDOUT)
    monkeypatch.setattr(falco, "run_process", fake)
    capture = tmp_path / "x.scap"
    capture.write_bytes(b"scap")
    rules = tmp_path / "tor.yaml"
    rules.write_text("- rule: r\n")
    alerts, done = FalcoContainer("0.44.1").alerts(capture, [rules])
    assert len(alerts) == 2 and done.wall_s == 1.5
    argv = fake.argv
    assert argv[:6] == ["docker", "run", "--rm", "--network", "none", "--name"]
    assert argv[argv.index("tor-sets/falco:0.44.1") + 1 :] == ["/usr/bin/falco", "-c", "/cap/falco.yaml"]
    assert fake.files["rules-0.yaml"] == "- rule: r\n"
    assert yaml.safe_load(fake.files["falco.yaml"])["rules_files"] == ["/cap/rules-0.yaml"]


def test_local_engine_runs_the_cached_root_through_its_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(
        EngineUnavailable, match="falco-local: Falco is not installed; run `tor-sets engines install falco`"
    ):
        FalcoLocal().check()
    runtime = tmp_path / "cache/tor-sets/engines/falco/0.44.1/runtime"
    for name in ("usr/bin/falco", "usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/libc.so.6"):
        (runtime / name).parent.mkdir(parents=True, exist_ok=True)
        (runtime / name).write_bytes(b"")
    (runtime / FalcoInstall.MANIFEST).write_text(json.dumps({"version": "0.44.1", "key": "k", "origin": "source"}))
    engine = FalcoLocal()
    engine.check()
    assert engine.version() == "0.44.1"
    assert engine._argv(["-c", "/x/falco.yaml"], None) == [
        str(runtime / "usr/lib64/ld-linux-x86-64.so.2"),
        "--library-path",
        str(runtime / "usr/lib/x86_64-linux-gnu"),
        str(runtime / "usr/bin/falco"),
        "-c",
        "/x/falco.yaml",
    ]


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
    monkeypatch.setattr(falco, "run_process", FakeFalco(line + "\nEvents detected: 1\n"))
    capture = tmp_path / "x.scap"
    capture.write_bytes(b"scap")
    run = FalcoContainer("0.44.1").filter(capture, "evt.type = connect", ("evt.type", "fd.sip", "proc.name"))
    (match,) = run.matches
    assert (match.ts_ns, match.evt_type) == (1533943856118383143, "connect")
    assert dict(match.fields) == {"evt.type": "connect", "fd.sip": "2001:db8::3", "proc.name": "<NA>"}
    assert run.wall_s == 1.5


@pytest.mark.usefixtures("fake_docker")
def test_rules_that_do_not_load_raise_rule_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stderr = (
        "Mon Nov 30 05:29:11 2026: Loading rules from:\n"
        "Error: /cap/rules-0.yaml: Invalid\n"
        "1 Errors:\nIn rules content: (/cap/rules-0.yaml:0:0)\n"
        "LOAD_ERR_COMPILE_CONDITION (Error compiling condition): unrecognized IPv4 address 1.2.3.4/24\n"
    )
    monkeypatch.setattr(falco, "run_process", FakeFalco("", 1, stderr))
    capture = tmp_path / "x.scap"
    capture.write_bytes(b"scap")
    with pytest.raises(
        RuleError,
        match=r"falco: invalid condition: LOAD_ERR_COMPILE_CONDITION \(Error compiling condition\): "
        r"unrecognized IPv4 address 1\.2\.3\.4/24$",
    ):
        FalcoContainer("0.44.1").filter(capture, "fd.sip in (1.2.3.4/24)")


def test_load_error_names_the_file_the_item_and_the_spot() -> None:
    stderr = (
        "Error: /cap/rules-0.yaml: Invalid\n1 Errors:\nIn rules content: (/cap/rules-0.yaml:0:0)\n"
        "    rule 'x': (/cap/rules-0.yaml:0:2)\n    rule output: (/cap/rules-0.yaml:3:10)\n------\n"
        '  output: "m | fd.nosuchfield=%fd.nosuchfield"\n          ^\n------\n'
        "LOAD_ERR_COMPILE_OUTPUT (Error compiling output): unknown filter: unexpected token after '\n"
    )
    assert falco.load_error(stderr) == (
        "/cap/rules-0.yaml: rule 'x': LOAD_ERR_COMPILE_OUTPUT (Error compiling output): unknown filter: unexpected "
        'token after \' (at: output: "m | fd.nosuchfield=%fd.nosuchfield")'
    )
    assert falco.load_error("Falco initialized\nsome other failure\n") is None


@pytest.mark.usefixtures("fake_docker")
def test_other_falco_failures_raise_engine_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(falco, "run_process", FakeFalco("", 1, "Unable to open capture: bad block\n"))
    capture = tmp_path / "x.scap"
    capture.write_bytes(b"scap")
    with pytest.raises(EngineError, match="replay failed \\(exit 1\\): Unable to open capture") as info:
        FalcoContainer("0.44.1").filter(capture, "evt.type = connect")
    assert not isinstance(info.value, RuleError)


def test_missing_image_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_docker, "require_daemon", lambda engine: None)
    monkeypatch.setattr(_docker, "image_present", lambda image, engine="docker": False)
    with pytest.raises(
        EngineUnavailable,
        match=r"falco: image tor-sets/falco:0\.44\.1 not present; run `tor-sets engines install falco`",
    ):
        FalcoContainer("0.44.1").check()
