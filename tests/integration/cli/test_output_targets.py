"""``-o`` onto things that are not regular files, for every command that takes it, as real processes.

A character device (``mknod X c 1 3``: a private /dev/null), a FIFO, a directory, a socket, a block device node and a
link to the process's own stdout, all in the test's temporary folder (never the real ``/dev`` entries). Each command
runs as a child process with a deadline: a command that blocks fails the test (``subprocess.TimeoutExpired``).

The policy (docs/operations.md, "Where tor-sets writes"): commands whose output is a stream (build, plugin table,
enrich) write a character device or a FIFO through; refresh, its state, lock and the download cache need regular
files; anything else is refused with one line and exit 3. Nothing but a regular file is ever opened for reading.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

DOC = str(REPO / "tor_sets" / "data" / "details-derived-guard-exit-2026-02-28.json.gz")
DEADLINE_S = 60.0  # a bound on how long one command may take; never reached when nothing blocks
NULL = os.makedev(1, 3)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """The children's environment: a download cache of their own."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def _run(env: dict[str, str], *argv: str, stdout: int | object = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    """``tor-sets ARGV`` as a child; TimeoutExpired (the child killed) when it blocks."""
    return subprocess.run(
        [sys.executable, "-m", "tor_sets", *argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=DEADLINE_S,
        check=False,
    )


def _error_lines(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [line for line in done.stderr.decode().splitlines() if line.startswith("tor-sets: error:")]


@pytest.fixture
def alerts(tmp_path) -> Path:
    path = tmp_path / "alerts.json"
    path.write_text('{"rule": "Inbound Connection from Tor", "output_fields": {"fd.cip": "192.0.2.1"}}\n')
    return path


# each command that writes a stream with -o: argv before "-o TARGET"
STREAMING: dict[str, Callable[[Path], list[str]]] = {
    "build": lambda tmp: ["build", "--input", DOC],
    "build-configmap": lambda tmp: ["build", "--input", DOC, "--format", "configmap"],
    "plugin-table": lambda tmp: ["plugin", "table", "--input", DOC],
    "enrich": lambda tmp: ["enrich", str(tmp / "alerts.json"), "--input", DOC],
}


def _device(tmp_path: Path) -> Path:
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, NULL)
    return node


def _fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return fifo


def _assert_still_device(node: Path) -> None:
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == NULL


@pytest.mark.parametrize("command", sorted(STREAMING))
def test_a_character_device_is_written_through_and_stays_a_device(command, tmp_path, env, alerts):
    node = _device(tmp_path)
    done = _run(env, *STREAMING[command](tmp_path), "-o", str(node))
    assert done.returncode == 0, done.stderr.decode()
    _assert_still_device(node)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize("command", sorted(STREAMING))
def test_a_fifo_nobody_reads_is_one_error_line_not_a_hang(command, tmp_path, env, alerts):
    fifo = _fifo(tmp_path)
    done = _run(env, *STREAMING[command](tmp_path), "-o", str(fifo))
    assert done.returncode == 3
    assert _error_lines(done) == [f"tor-sets: error: cannot write {fifo}: no process is reading the FIFO"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def _drain(fd: int, into: list[bytes]) -> None:
    """Read a non-blocking FIFO end until its writer closes it."""
    while True:
        select.select([fd], [], [], DEADLINE_S)
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not chunk:
            return
        into.append(chunk)


@pytest.mark.parametrize("command", ["build", "plugin-table"])
def test_a_fifo_with_a_reader_gets_what_dash_o_dash_prints(command, tmp_path, env):
    expected = _run(env, *STREAMING[command](tmp_path), "-o", "-")
    assert expected.returncode == 0 and expected.stdout
    fifo = _fifo(tmp_path)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader before the writer: no race with its open
    chunks: list[bytes] = []
    thread = threading.Thread(target=_drain, args=(reader, chunks), daemon=True)
    thread.start()
    try:
        done = _run(env, *STREAMING[command](tmp_path), "-o", str(fifo))
        thread.join(DEADLINE_S)
    finally:
        os.close(reader)
    assert done.returncode == 0, done.stderr.decode()
    assert b"".join(chunks) == expected.stdout


def test_a_link_to_the_own_stdout_behaves_like_dash(tmp_path, env):
    """``-o /dev/stdout`` (here a link of our own to ``/proc/self/fd/1``): a pipe, then a file opened to append."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    expected = _run(env, "build", "--input", DOC, "-o", "-").stdout
    done = _run(env, "build", "--input", DOC, "-o", str(link))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == expected and link.is_symlink()
    log = tmp_path / "log.txt"
    log.write_bytes(b"before\n")
    with log.open("ab") as out:
        done = _run(env, "build", "--input", DOC, "-o", str(link), stdout=out)
    assert done.returncode == 0, done.stderr.decode()
    assert log.read_bytes() == b"before\n" + expected and link.is_symlink()


@pytest.fixture
def refused(tmp_path) -> Iterator[dict[str, tuple[Path, str]]]:
    """Targets no command writes: a directory, a socket, a block device node."""
    folder = tmp_path / "folder"
    folder.mkdir()
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    block = tmp_path / "block"
    os.mknod(block, 0o600 | stat.S_IFBLK, os.makedev(240, 0))  # a major no driver has: opening it does nothing
    try:
        yield {
            "directory": (folder, "a directory"),
            "socket": (sock_path, "a socket"),
            "block": (block, "a block device"),
        }
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["directory", "socket", "block"])
@pytest.mark.parametrize("command", ["build", "plugin-table", "enrich"])
def test_directories_sockets_and_block_devices_are_refused(command, kind, tmp_path, env, alerts, refused):
    target, words = refused[kind]
    before = os.lstat(target)
    done = _run(env, *STREAMING[command](tmp_path), "-o", str(target))
    assert done.returncode == 3
    assert _error_lines(done) == [f"tor-sets: error: cannot write {target}: it is {words}, not a regular file"]
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)


# refresh keeps a file it reads back (and its state and lock beside it): only regular files
REFRESH = ["refresh", "--input", DOC, "--validate", "yaml"]


@pytest.mark.parametrize("which", ["output", "state", "lock"])
@pytest.mark.parametrize("make", [_device, _fifo], ids=["device", "fifo"])
def test_refresh_refuses_a_device_or_fifo_as_rules_state_or_lock(which, make, tmp_path, env):
    target = make(tmp_path)
    words = "a character device" if make is _device else "a FIFO"
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    argv = {"output": ["-o", str(target)], "state": ["-o", str(out), "--state", str(target)]}.get(
        which, ["-o", str(out), "--lock", str(target)]
    )
    done = _run(env, *REFRESH, *argv)
    assert done.returncode == 3
    what = {"output": "the rules file", "state": "the state file", "lock": "the lock file"}[which]
    assert _error_lines(done) == [f"tor-sets: error: {what} {target} is {words}, not a regular file"]
    if make is _device:
        _assert_still_device(target)
    else:
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert not out.exists()


@pytest.mark.parametrize("make", [_device, _fifo], ids=["device", "fifo"])
def test_folder_outputs_refuse_a_device_or_fifo(make, tmp_path, env):
    """``plugin build -o DIR`` and ``bench -o DIR`` name folders: anything else is refused before any work."""
    target = make(tmp_path)
    words = "a character device" if make is _device else "a FIFO"
    for argv in (["plugin", "build", "-o", str(target)], ["bench", "-o", str(target)]):
        done = _run(env, *argv)
        assert done.returncode == 3, (argv, done.stderr.decode())
        assert _error_lines(done) == [f"tor-sets: error: cannot write into {target}: it is {words}, not a folder"]
    if make is _device:
        _assert_still_device(target)


def _cache_fifo(tmp_path: Path, name: str) -> Path:
    cache = tmp_path / "cache" / "tor-sets"
    cache.mkdir(parents=True)
    fifo = cache / name
    os.mkfifo(fifo)
    return fifo


def test_a_fifo_as_the_cached_download_is_not_read_offline(tmp_path, env):
    fifo = _cache_fifo(tmp_path, "details.json.gz")
    done = _run(env, "build", "--offline", "-o", str(tmp_path / "rules.yaml"))
    assert done.returncode == 0, done.stderr.decode()
    assert f"ignoring unreadable cached download {fifo}: it is a FIFO, not a regular file" in done.stderr.decode()
    assert "(bundled)" in done.stderr.decode()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("name", ["details.json.gz", "details.meta.json"])
def test_a_fifo_in_the_download_cache_is_neither_read_nor_replaced_by_a_fetch(
    name, tmp_path, env, onionoo_server, bundled_bytes
):
    onionoo_server.reset(body=bundled_bytes)
    fifo = _cache_fifo(tmp_path, name)
    done = _run(env, "build", "--url", onionoo_server.url, "-o", str(tmp_path / "rules.yaml"))
    assert done.returncode == 0, done.stderr.decode()
    assert "(live)" in done.stderr.decode()
    assert f"could not update the download cache in {fifo.parent}: {fifo}: it is a FIFO, not a regular file" in (
        done.stderr.decode()
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
