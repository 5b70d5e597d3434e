"""Only the run that started dockerd stops it (a process named dockerd stands in for the daemon; nothing is pulled)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tor_sets.provision import docker


@pytest.fixture
def fake_dockerd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    binary = tmp_path / "bin" / "dockerd"  # what docker_state() recognises: a process whose argv[0] is dockerd
    binary.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    proc = subprocess.Popen([str(binary), "300"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes().startswith(str(binary).encode()):  # until the exec has happened
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def write_state(proc: subprocess.Popen[bytes], session: str) -> None:
    path = docker.docker_dir() / docker.STATE_FILE
    path.parent.mkdir(parents=True)
    doc = {"pid": proc.pid, "data_root": "/d", "log": "/l", "started_at": 1.0, "session": session}
    path.write_text(json.dumps(doc))


def test_another_runs_daemon_is_left_running(fake_dockerd: subprocess.Popen[bytes]) -> None:
    write_state(fake_dockerd, "make-1-other-clone")
    assert docker.stop_docker("make-2-this-clone") is None
    assert fake_dockerd.poll() is None  # still running
    assert docker.docker_state() is not None  # and still known


def test_the_run_that_started_it_stops_it(fake_dockerd: subprocess.Popen[bytes]) -> None:
    write_state(fake_dockerd, "make-1")
    stopped = docker.stop_docker("make-1")
    assert stopped is not None and stopped.pid == fake_dockerd.pid and stopped.session == "make-1"
    assert fake_dockerd.wait(10) != 0
    assert docker.docker_state() is None


def test_the_session_of_the_starting_run_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(docker.SESSION_ENV, "make-42")
    state = docker.DockerState(os.getpid(), "/d", "/l", 1.0, os.environ[docker.SESSION_ENV])
    docker._write_state(state)
    written = json.loads((docker.docker_dir() / docker.STATE_FILE).read_text())
    assert written["session"] == "make-42" and written["started_by"] == "tor-sets"
