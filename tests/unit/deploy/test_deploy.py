"""The shipped deployment files: every tor-sets command line in them parses, the schedules are what the docs say."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tor_sets.cli import make_parser

DEPLOY = REPO / "deploy"
OPERATIONS = REPO / "docs" / "operations.md"


def _unit(name: str) -> dict[str, list[str]]:
    """``key -> values`` of a systemd unit file, with continuation lines joined."""
    text = (DEPLOY / name).read_text().replace("\\\n", " ")
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _parses(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    assert callable(args.func)


def test_service_runs_one_refresh_that_parses():
    service = _unit("tor-sets-refresh.service")
    assert service["Type"] == ["oneshot"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/tor-sets/bin/tor-sets" and argv[1] == "refresh"
    _parses(argv[1:])
    assert "/etc/falco/rules.d" in service["ReadWritePaths"][0]
    # state and lock outside the rules folder (Falco < 0.41 loads every file there): the default state folder, which
    # systemd makes (StateDirectory) and the unit names
    assert "--state" not in argv and "--lock" not in argv
    assert service["StateDirectory"] == ["tor-sets"]
    assert "TOR_SETS_STATE_DIR=/var/lib/tor-sets" in service["Environment"][0].split()


def test_timer_fires_every_30_minutes_with_a_random_delay():
    timer = _unit("tor-sets-refresh.timer")
    assert timer["OnCalendar"] == ["*:0/30"] and timer["RandomizedDelaySec"] == ["5min"]
    assert timer["Persistent"] == ["true"] and timer["WantedBy"] == ["timers.target"]


def test_timer_calendar_is_every_30_minutes_for_systemd():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=3", "*:0/30"], capture_output=True, text=True, check=True
    )
    minutes = [int(m) for m in re.findall(r"\d\d:(\d\d):00", done.stdout)]
    assert minutes and all(m in (0, 30) for m in minutes)


def test_units_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (the other tests read the units themselves)")
    tor_sets = Path(sys.executable).with_name("tor-sets")
    for name in ("tor-sets-refresh.service", "tor-sets-refresh.timer"):
        text = (DEPLOY / name).read_text().replace("/opt/tor-sets/bin/tor-sets", str(tor_sets))
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            *(str(tmp_path / n) for n in sorted(p.name for p in tmp_path.iterdir())),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    problems = [line for line in done.stderr.splitlines() if str(tmp_path) in line]
    assert problems == []


def _dockerfile() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            values[word] = rest.strip()
    return values


def test_dockerfile_runs_the_loop_as_a_non_root_user():
    docker = _dockerfile()
    assert json.loads(docker["ENTRYPOINT"]) == ["tor-sets"]
    command = json.loads(docker["CMD"])
    assert command == ["refresh", "--every", "30m", "-o", "/rules/tor_rules.yaml"]
    _parses(command)
    assert docker["USER"] == "${UID}:${UID}" and "ARG UID=10001" in (DEPLOY / "Dockerfile").read_text()
    assert json.loads(docker["VOLUME"]) == ["/rules"]


def test_operations_doc_cron_line_and_exit_codes():
    text = OPERATIONS.read_text()
    (cron,) = [line for line in text.splitlines() if line.startswith("*/30 * * * * root ")]
    command = cron.split("; ", 1)[1].split(" 2>&1")[0]
    argv = shlex.split(command)
    assert argv[0] == "/opt/tor-sets/bin/tor-sets"
    _parses(argv[1:])
    for code in ("| 0 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 6 |", "| 7 |", "| 130 / 143 |"):
        assert code in text
    for flag in ("--min-relays", "--max-drop", "--max-age", "--allow-fallback", "--reload-pid", "--reload-cmd"):
        assert flag in text
