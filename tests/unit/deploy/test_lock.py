"""The refresh lock names the process that really holds it (issue 14.9), never a pid a finished refresh left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tor_sets.deploy.refresh import lock as lock_module
from tor_sets.deploy.refresh.lock import hold_lock
from tor_sets.errors import TorSetsError

#: takes the flock the way another program would (flock(1), an older tor-sets): without writing a pid
HOLDER = r"""
import fcntl, sys
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def finished_pid() -> int:
    """The pid of a process that has run and exited: what an earlier refresh leaves in the lock file."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


@pytest.fixture
def holder(tmp_path):
    lock = tmp_path / "tor_rules.yaml.lock"
    stale = finished_pid()
    lock.write_text(f"{stale}\n")
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
            yield lock, stale, proc
        finally:
            proc.kill()
            proc.wait(timeout=10)


def test_the_message_names_the_live_holder_not_the_pid_left_in_the_file(holder):
    lock, stale, proc = holder
    assert lock.read_text() == f"{stale}\n"
    with pytest.raises(TorSetsError) as caught, hold_lock(lock, 0.3):
        pass
    assert str(caught.value) == (
        f"another refresh of this output is running (pid {proc.pid}) and holds {lock}; gave up waiting after 0.3 s "
        "(lock_timeout)"
    )


def test_a_stale_pid_and_no_holder_names_no_pid(tmp_path):
    lock = tmp_path / "tor_rules.yaml.lock"
    lock.write_text(f"{finished_pid()}\n")
    fd = os.open(lock, os.O_RDONLY)
    try:
        assert lock_module._lock_holder(fd) == ""
    finally:
        os.close(fd)


@pytest.mark.parametrize("alive", [True, False])
def test_without_proc_locks_the_pid_in_the_file_is_named_only_while_it_lives(alive, tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "PROC_LOCKS", tmp_path / "no-proc" / "locks")  # a host without /proc
    lock = tmp_path / "tor_rules.yaml.lock"
    pid = os.getpid() if alive else finished_pid()
    lock.write_text(f"{pid}\n")
    fd = os.open(lock, os.O_RDONLY)
    try:
        assert lock_module._lock_holder(fd) == (f" (pid {pid})" if alive else "")
    finally:
        os.close(fd)


def test_the_holder_is_found_by_device_and_inode(holder):
    lock, _, proc = holder
    status = lock.stat()
    text = Path("/proc/locks").read_text()
    assert lock_module.flock_holders(text, status.st_dev, status.st_ino) == [proc.pid]
    assert lock_module.flock_holders(text, status.st_dev, status.st_ino + 1) == []
