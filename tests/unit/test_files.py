"""tor_sets.files: writes through symbolic links, keeps mode and owner, cleans up after killed writers.

Real files, links, FIFOs and child processes in the test's temporary folder.
"""

from __future__ import annotations

import doctest
import grp
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tor_sets import files
from tor_sets.build import write_rules
from tor_sets.cli import main
from tor_sets.errors import TorSetsError
from tor_sets.files import TEMP_GRACE_S, TEMP_MAX_AGE_S, NotRegularFile, atomic_write, read_regular, write_file

DOC = str(REPO / "tor_sets" / "data" / "details-derived-guard-exit-2026-02-28.json.gz")
OLD = TEMP_GRACE_S + 60  # seconds: past the grace, short of the maximum age


def test_doctests():
    assert doctest.testmod(files).failed == 0


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------------- links


def test_a_symlink_is_written_through_not_replaced(tmp_path):
    real = tmp_path / "real" / "tor_rules.yaml"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "rules.d" / "tor_rules.yaml"
    link.parent.mkdir()
    link.symlink_to(os.path.relpath(real, link.parent))
    inode = real.stat().st_ino
    assert write_rules(link, "new\n") is True
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(real, link.parent)
    assert real.read_text() == "new\n" and real.stat().st_ino != inode  # replaced by rename: a new inode
    assert write_rules(link, "new\n") is False  # compared through the link too
    assert _temps(real.parent) == [] and _temps(link.parent) == []


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.yaml"
    link.symlink_to("made.yaml")
    assert write_rules(link, "x\n") is True
    assert link.is_symlink() and (tmp_path / "made.yaml").read_text() == "x\n"


# ---------------------------------------------------------------------------------------------------- mode, owner


@pytest.fixture
def daemon_gid() -> int:
    if os.geteuid() != 0:
        pytest.skip("chown to root:daemon needs root")
    return grp.getgrnam("daemon").gr_gid


def test_mode_and_owner_of_an_existing_file_are_kept(tmp_path, daemon_gid):
    target = tmp_path / "tor_rules.yaml"
    target.write_text("old\n")
    os.chown(target, 0, daemon_gid)
    os.chmod(target, 0o640)
    assert write_rules(target, "new\n") is True
    found = target.stat()
    assert (stat.S_IMODE(found.st_mode), found.st_uid, found.st_gid) == (0o640, 0, daemon_gid)
    assert target.read_text() == "new\n"


def test_build_through_a_link_to_a_0600_root_daemon_file_keeps_link_mode_and_owner(tmp_path, daemon_gid, capsys):
    real = tmp_path / "etc" / "tor_rules.yaml"
    real.parent.mkdir()
    real.write_text("old\n")
    os.chown(real, 0, daemon_gid)
    os.chmod(real, 0o600)
    link = tmp_path / "tor_rules.yaml"
    link.symlink_to(real)
    assert main(["build", "--input", DOC, "--cache-dir", str(tmp_path / "cache"), "-o", str(link)]) == 0
    assert link.is_symlink() and real.read_text().startswith("#")
    found = real.stat()
    assert (stat.S_IMODE(found.st_mode), found.st_uid, found.st_gid) == (0o600, 0, daemon_gid)


def test_a_new_file_is_0644_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_rules(tmp_path / "new.yaml", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.yaml").stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------------- stale temps


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    return child.pid


def _temp(folder: Path, name: str, age: float) -> Path:
    path = folder / name
    path.write_text("half")
    os.utime(path, (time.time() - age,) * 2)
    return path


def test_stale_temps_of_dead_writers_go_live_writers_stay(tmp_path):
    target = tmp_path / "tor_rules.yaml"
    dead = _dead_pid()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        stale = [
            _temp(tmp_path, f".tor_rules.yaml.{dead}.abcd1234.tmp", OLD),  # its writer was killed
            _temp(tmp_path, ".tor_rules.yaml.k3_x9q0z.tmp", OLD),  # an older version's name, without a pid
            _temp(tmp_path, f".tor_rules.yaml.{os.getpid()}.0000aaaa.tmp", TEMP_MAX_AGE_S + 60),  # a reused pid
        ]
        kept = [
            _temp(tmp_path, f".tor_rules.yaml.{os.getpid()}.feedf00d.tmp", OLD),  # a live writer: this process
            _temp(tmp_path, f".tor_rules.yaml.{sleeper.pid}.0badcafe.tmp", OLD),  # a live writer: a child
            _temp(tmp_path, f".tor_rules.yaml.{dead}.12345678.tmp", 5),  # too young (another pid namespace?)
            _temp(tmp_path, f".other.yaml.{dead}.abcd1234.tmp", OLD),  # another target's
            _temp(tmp_path, ".tor_rules.yaml.backup.tmp", OLD),  # not our naming
            _temp(tmp_path, f".tor_rules.yaml.{dead}.abcd1234.tmp.keep", OLD),
        ]
        assert write_rules(target, "rules\n") is True
        assert [p.exists() for p in stale] == [False] * len(stale)
        assert [p.exists() for p in kept] == [True] * len(kept)
    finally:
        sleeper.kill()
        sleeper.wait()


KILLED = r"""
import os, sys
from pathlib import Path
from tor_sets.build import write_rules
def killed(*args):
    print("in the write", flush=True)
    os.kill(os.getpid(), 9)
os.replace = killed  # the moment the temp file is whole and not yet renamed
write_rules(Path(sys.argv[1]), "new\n")
"""


def test_a_writer_sigkilled_mid_write_leaves_a_temp_the_next_write_removes(tmp_path):
    target = tmp_path / "tor_rules.yaml"
    target.write_text("old\n")
    child = subprocess.run(
        [sys.executable, "-c", KILLED, str(target)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == -9 and child.stdout == "in the write\n"
    (left,) = _temps(tmp_path)
    assert left.startswith(".tor_rules.yaml.") and target.read_text() == "old\n"
    os.utime(tmp_path / left, (time.time() - OLD,) * 2)
    assert write_rules(target, "newer\n") is True
    assert _temps(tmp_path) == [] and target.read_text() == "newer\n"


# ---------------------------------------------------------------------------------------------------- reads


def test_read_regular_never_opens_a_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_regular(fifo)
        except NotRegularFile as exc:
            result.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(30)  # a bound on the wait, not a timing assertion: the read must not block on the FIFO
    assert not thread.is_alive() and str(result[0]) == f"{fifo}: it is a FIFO, not a regular file"


def test_kept_files_refuse_a_fifo_and_atomic_write_refuses_non_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TorSetsError, match=r"cannot write .*fifo: it is a FIFO, not a regular file$"):
        write_file(fifo, b"x", stream=False)
    with pytest.raises(NotRegularFile, match="a directory"):
        atomic_write(tmp_path, b"x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
