"""Unit tests of ``tor-sets engines`` (argument parsing and output; the library calls are stubbed)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

import pytest

from tor_sets import provision as setup
from tor_sets.cli import engines as cli

STATUS = (
    setup.EngineStatus("sysdig-modern", "sysdig 0.41.4 via chroot", True, version="0.41.4+repack"),
    setup.EngineStatus("falco", "Falco", False, reason="falco: image not present"),
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tor-sets")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_list_prints_a_table_on_stdout(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(setup, "engine_status", lambda: STATUS)
    args = parse(["engines", "list"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["ENGINE", "PRESENT", "VERSION", "DETAIL"]
    assert lines[1].split()[:3] == ["sysdig-modern", "yes", "0.41.4+repack"]
    assert lines[2].split()[:3] == ["falco", "no", "-"]
    assert err == ""


def test_list_json_is_one_sorted_document(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(setup, "engine_status", lambda: STATUS)
    args = parse(["engines", "list", "--json"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["schema"] == 1
    assert doc["engines"][0] == {
        "name": "sysdig-modern",
        "description": "sysdig 0.41.4 via chroot",
        "present": True,
        "version": "0.41.4+repack",
        "reason": None,
    }
    assert out == json.dumps(doc, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize(
    ("argv", "parts"), [([], ["all"]), (["docker"], ["docker"]), (["legacy"], ["legacy"]), (["falco"], ["falco"])]
)
def test_install_passes_the_part(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], parts: list[str]
) -> None:
    seen: list[list[str]] = []

    def install(names: Iterable[str], **kwargs: object) -> tuple[setup.Step, ...]:
        seen.append(list(names))
        return (setup.Step("legacy", "sysdig", False, "present", 0.0),)

    monkeypatch.setattr(setup, "install", install)
    args = parse(["engines", "install", *argv])
    assert args.func(args) == 0
    assert seen == [parts]
    out, err = capsys.readouterr()
    assert out == "" and "0 step(s) done, 1 already in place" in err


def test_install_rejects_unknown_parts() -> None:
    with pytest.raises(SystemExit):
        parse(["engines", "install", "falcon"])


def test_stop_docker_reports_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(setup, "stop_docker", lambda session: None)
    args = parse(["engines", "stop-docker"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert out == "" and "nothing stopped" in err
    monkeypatch.setattr(setup, "stop_docker", lambda session: setup.DockerState(42, "/d", "/l", 0.0))
    assert args.func(args) == 0
    assert "stopped dockerd (pid 42)" in capsys.readouterr().err
