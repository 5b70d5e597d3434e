"""`tor-sets refresh` as real processes: SIGKILL during the write, the lock, SIGTERM in the loop, Falco reloads.

Every test starts real child processes (python running tor-sets or a few lines of it) and waits for what they print,
never for a fixed time. No network but loopback.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from tests.conftest import REPO
from tor_sets.cli import main
from tor_sets.deploy.refresh import read_state
from tor_sets.deploy.refresh.lock import lock_path
from tor_sets.deploy.refresh.state import state_path
from tor_sets.files import TEMP_GRACE_S

pytestmark = pytest.mark.integration

PYTHON = sys.executable
WAIT_S = 60.0  # a deadline for a child to say something; never reached when things work


def _doc_file(folder: Path, bundled_bytes: bytes, published: str) -> Path:
    doc = json.loads(bundled_bytes)
    doc["relays_published"] = published
    path = folder / f"details-{published[:10]}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def doc(tmp_path, bundled_bytes) -> Path:
    return _doc_file(tmp_path, bundled_bytes, "2026-03-01 00:00:00")


@pytest.fixture
def newer_doc(tmp_path, bundled_bytes) -> Path:
    return _doc_file(tmp_path, bundled_bytes, "2026-03-02 00:00:00")


def _child(code: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-c", code, *args], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )  # type: ignore[call-overload]


def _tor_sets(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "tor_sets", *args], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


class Lines:
    """The lines a child writes to one pipe, read by a thread (select on a buffered pipe misses lines)."""

    pumped: ClassVar[list[object]] = []  # the pipes a thread reads (and closes at their end)

    def __init__(self, stream) -> None:
        Lines.pumped.append(stream)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        with stream:
            for line in stream:
                self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, pattern: str) -> str:
        """The first further line matching ``pattern``; fail after WAIT_S or at the end of the output."""
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in {self.seen}")

    def rest(self) -> str:
        """Everything after the lines already seen, up to the end of the output."""
        lines = []
        while (line := self.queue.get(timeout=WAIT_S)) is not None:
            lines.append(line)
        self.seen += lines
        return "".join(lines)


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Children a test started; any still running at the end are killed (by pid, each one)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not any(stream is pumped for pumped in Lines.pumped):
                stream.close()


def _refresh(out: Path, *extra: str) -> list[str]:
    return ["refresh", "-o", str(out), "--validate", "yaml", *extra]


# ---------------------------------------------------------------------------------------------------- SIGKILL


WRITER = r"""
import sys
from tor_sets.build import write_rules
path, a, b = sys.argv[1:4]
texts = [open(a).read(), open(b).read()]
write_rules(path, texts[0])
print("ready", flush=True)
i = 1
while True:
    write_rules(path, texts[i % 2])
    i += 1
"""


def _big_rules(tag: str, n: int = 100_000) -> str:
    items = ", ".join(f'"{tag}{i % 250}.{i // 250 % 250}.{i // 62500}"' for i in range(n))
    return f"- list: big_{tag.strip('.')}\n  items: [{items}]\n"


def test_sigkill_during_the_write_leaves_the_old_or_the_new_file_whole(tmp_path, children, bundled_bytes):
    a, b = _big_rules("10."), _big_rules("11.")
    assert len(a) > 1_000_000 and a != b
    (tmp_path / "a.yaml").write_text(a)
    (tmp_path / "b.yaml").write_text(b)
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    rng = random.Random(1234)
    for _ in range(10):
        proc = _child(WRITER, str(out), str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
        children.append(proc)
        Lines(proc.stdout).wait_for("ready")
        time.sleep(rng.uniform(0.0, 0.4))  # a random moment of the write loop, not a timing assertion
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        text = out.read_text()
        assert text in (a, b)
        assert isinstance(yaml.load(text, Loader=yaml.CSafeLoader), list)
    # temp files of killed writers (the pid in their names is gone) are removed by the next refresh once past the
    # grace; one of a live writer (this process) is left alone
    leftovers = list(out.parent.glob(".tor_rules.yaml.*.tmp"))
    live = out.parent / f".tor_rules.yaml.{os.getpid()}.11ve0000.tmp"
    live.write_text("half")
    for path in [*leftovers, live]:
        os.utime(path, (time.time() - TEMP_GRACE_S - 60,) * 2)
    source = _doc_file(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    assert main(_refresh(out, "--input", str(source))) == 0
    # the rules folder holds the rules (and a live writer's temp): state and lock live outside it
    assert leftovers and sorted(p.name for p in out.parent.iterdir()) == [live.name, "tor_rules.yaml"]


# ---------------------------------------------------------------------------------------------------- the lock


HOLDER = r"""
import sys
from pathlib import Path
from tor_sets.deploy.refresh.lock import hold_lock
with hold_lock(Path(sys.argv[1]), 5):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_concurrent_runs_wait_or_fail_clearly_never_interleave(tmp_path, children, doc, capsys):
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    lock = lock_path(out)
    holder = _child(HOLDER, str(lock), stdin=subprocess.PIPE)
    children.append(holder)
    Lines(holder.stdout).wait_for("held")
    capsys.readouterr()
    assert main(_refresh(out, "--input", str(doc), "--lock-timeout", "0.3")) == 3
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line == (
        f"tor-sets: error: another refresh of this output is running (pid {holder.pid}) and holds {lock}; "
        "gave up waiting after 0.3 s (--lock-timeout)"
    )
    assert not out.exists()
    waiter = _tor_sets(*_refresh(out, "--input", str(doc), "--lock-timeout", "120"))
    children.append(waiter)
    err = Lines(waiter.stderr)
    err.wait_for(rf"waiting for another refresh \(pid {holder.pid}\) that holds")
    assert not out.exists()  # the waiter did nothing while the lock was held
    holder.stdin.close()  # type: ignore[union-attr]
    assert holder.wait(timeout=WAIT_S) == 0
    assert waiter.wait(timeout=WAIT_S) == 0, err.seen
    rest = err.rest()
    assert "wrote" in rest
    state = read_state(state_path(out))
    assert state is not None and state.deployed is not None and state.last_failure is None


# ---------------------------------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_loop_cleanly_between_runs(tmp_path, children, doc, sig):
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    proc = _tor_sets(*_refresh(out, "--input", str(doc), "--every", "30m"))
    children.append(proc)
    err = Lines(proc.stderr)
    err.wait_for(r"next refresh in (2[7-9]|3[0-3]) min")
    proc.send_signal(sig)
    assert proc.wait(timeout=WAIT_S) == 0, err.seen
    rest = err.rest()
    assert f"stopped by {sig.name} between steps; the rules are whole" in rest
    assert any("wrote" in line for line in err.seen)
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_sigterm_during_a_stalled_fetch(tmp_path, children, onionoo_server, bundled_bytes):
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    onionoo_server.reset(body=bundled_bytes, stall=8)
    common = ["--url", onionoo_server.url, "--cache-dir", str(tmp_path / "cache"), "--timeout", "60"]
    for every, expected in ((["--every", "30m"], 0), ([], 128 + signal.SIGTERM)):
        onionoo_server.requests.clear()
        proc = _tor_sets(*_refresh(out, *common, *every))
        children.append(proc)
        _wait_until(lambda: len(onionoo_server.requests) > 0, "the request to reach the server")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == expected, err
        if every:
            assert err.strip().endswith("tor-sets: stopped by SIGTERM between steps; the rules are whole"), err
        else:
            assert err.strip() == "tor-sets: interrupted by SIGTERM; the rules file is whole and as it was", err
        assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_a_trickling_server_is_cut_at_the_deadline_and_the_lock_released(
    tmp_path, children, onionoo_server, bundled_bytes, doc, capsys
):
    """One byte every 2 s never trips --timeout 5; --deadline 3 ends the fetch, and a waiting refresh then runs."""
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    onionoo_server.reset(body=bundled_bytes, trickle=2.0)
    common = ["--url", onionoo_server.url, "--cache-dir", str(tmp_path / "cache"), "--timeout", "5"]
    proc = _tor_sets(*_refresh(out, *common, "--deadline", "3"))
    children.append(proc)
    _wait_until(lambda: len(onionoo_server.requests) > 0, "the request to reach the server")
    # the child holds the lock while it fetches; this run waits for it (at most WAIT_S), then deploys
    assert main(_refresh(out, "--input", str(doc), "--lock-timeout", str(WAIT_S))) == 0
    assert "wrote" in capsys.readouterr().err
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 4, err
    assert re.fullmatch(
        r"tor-sets: error: gave up fetching http://127\.0\.0\.1:\d+/details\?\S+: no complete answer within the "
        r"deadline of 3 s \(--deadline\)",
        err.strip(),
    ), err


def test_loop_logs_each_failure_and_goes_on(tmp_path, doc, monkeypatch):
    from datetime import timedelta

    from tor_sets.deploy.refresh import RefreshOptions, Stop, run_every

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tor_sets")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    out = tmp_path / "tor_rules.yaml"
    options = RefreshOptions(output=out, input_path=tmp_path / "missing.json", validate="yaml")
    outcomes: list[object] = []
    run_every(options, timedelta(seconds=0.01), stop=Stop(), iterations=3, on_outcome=outcomes.append)
    failures = [r.getMessage() for r in records if r.levelname == "ERROR"]
    assert len(failures) == 3 and not outcomes
    assert all(
        re.fullmatch(r"refresh failed \(exit 4\): cannot read .*missing.json: No such file or directory", f)
        for f in failures
    )


# ---------------------------------------------------------------------------------------------------- reloads


HUP = r"""
import ctypes, signal, sys
from pathlib import Path
marker, name, after = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def rename(to):  # prctl(PR_SET_NAME): what /proc/PID/comm says
    ctypes.CDLL(None, use_errno=True).prctl(15, to.encode(), 0, 0, 0)
def on_hup(signum, frame):
    with marker.open("a") as f:
        f.write("hup\n")
    rename(after)
rename(name)
signal.signal(signal.SIGHUP, on_hup)
print("ready", flush=True)
while True:
    signal.pause()
"""


def _falco(marker: Path, name: str = "falco", after: str = "falco") -> subprocess.Popen[str]:
    """A stand-in Falco: a python child named ``name`` that notes each SIGHUP in ``marker``, then is named ``after``."""
    proc = _child(HUP, str(marker), name, after)
    Lines(proc.stdout).wait_for("ready")
    assert Path(f"/proc/{proc.pid}/comm").read_text() == f"{name}\n"
    return proc


def test_reload_pid_sends_sighup_only_when_the_file_changed(tmp_path, children, doc, capsys):
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    marker = tmp_path / "hups"
    falco = _falco(marker)
    children.append(falco)
    assert main(_refresh(out, "--input", str(doc), "--reload-pid", str(falco.pid))) == 0
    assert f"reload: SIGHUP to pid {falco.pid}" in capsys.readouterr().err
    _wait_until(lambda: marker.exists() and marker.read_text() == "hup\n", "the SIGHUP")
    assert main(_refresh(out, "--input", str(doc), "--reload-pid", str(falco.pid))) == 0
    assert "unchanged" in capsys.readouterr().err
    assert marker.read_text() == "hup\n"  # no change, no reload
    falco.kill()
    falco.wait()


def test_reload_pid_refuses_a_process_that_is_not_falco(tmp_path, children, doc, capsys):
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    sleeper = subprocess.Popen(["sleep", "600"])
    children.append(sleeper)  # type: ignore[arg-type]
    _wait_until(lambda: Path(f"/proc/{sleeper.pid}/comm").read_text() == "sleep\n", "sleep to run")
    capsys.readouterr()
    assert main(_refresh(out, "--input", str(doc), "--reload-pid", str(sleeper.pid))) == 3
    assert capsys.readouterr().err.strip().splitlines() == [
        f"tor-sets: error: pid {sleeper.pid} is not a Falco process (its name is 'sleep'); not sending SIGHUP "
        "(--reload-pid)"
    ]
    assert sleeper.poll() is None and not out.exists()  # not signalled (SIGHUP would have ended it), nothing done


def test_the_loop_checks_the_pid_again_before_each_sighup(tmp_path, children, doc, monkeypatch):
    """Falco's pid, once checked, may belong to another process later: the next reload checks it again."""
    from datetime import timedelta

    from tor_sets.cli.refresh import log_failure
    from tor_sets.deploy.refresh import RefreshOptions, Reload, Stop, run_every

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tor_sets")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    marker = tmp_path / "hups"
    falco = _falco(marker, after="not-falco-now")  # renames itself on the first SIGHUP
    children.append(falco)
    out = tmp_path / "tor_rules.yaml"
    options = RefreshOptions(output=out, input_path=doc, validate="yaml", reload=Reload(pid=falco.pid))

    def after_a_run(outcome: object) -> None:
        _wait_until(lambda: Path(f"/proc/{falco.pid}/comm").read_text() == "not-falco-now\n", "the SIGHUP")
        out.unlink()  # so that the next run writes the file again and reloads

    # the command line's handler of a failed run (`tor-sets refresh --every`), which shows flags
    run_every(
        options, timedelta(seconds=0.01), stop=Stop(), iterations=2, on_outcome=after_a_run, on_failure=log_failure
    )
    errors = [r.getMessage() for r in records if r.levelname == "ERROR"]
    assert errors == [
        f"refresh failed (exit 3): pid {falco.pid} is not a Falco process (its name is 'not-falco-now'); "
        "not sending SIGHUP (--reload-pid)"
    ]
    assert marker.read_text() == "hup\n" and falco.poll() is None  # one SIGHUP, to Falco only
    state = read_state(state_path(tmp_path / "tor_rules.yaml"))
    assert state is not None and state.reload_pending and state.last_failure is not None
    assert state.last_failure.message.endswith("not sending SIGHUP (reload.pid)")  # the library names the field


def test_reload_command_failure_is_exit_3_and_retried(tmp_path, doc, newer_doc, capsys):
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    marker = tmp_path / "reloaded"
    touch = f"touch '{marker}'"
    assert main(_refresh(out, "--input", str(doc), "--reload-cmd", touch)) == 0
    assert marker.exists()
    marker.unlink()
    assert main(_refresh(out, "--input", str(doc), "--reload-cmd", touch)) == 0
    assert not marker.exists()  # unchanged: nothing to reload
    capsys.readouterr()
    failing = f"{PYTHON} -c 'import sys; sys.exit(\"falco is not running\")'"
    assert main(_refresh(out, "--input", str(newer_doc), "--reload-cmd", failing)) == 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"tor-sets: error: reload command '{PYTHON}' exited with status 1: falco is not running"
    state = read_state(state_path(out))
    assert state is not None and state.reload_pending and state.last_failure is not None
    assert state.deployed is not None and state.deployed.relays_published.day == 2  # the new rules are in place
    assert main(["status", str(out)]) == 0
    assert "reload:        PENDING" in capsys.readouterr().out
    assert main(_refresh(out, "--input", str(newer_doc), "--reload-cmd", touch)) == 0
    assert "reload owed by an earlier run done" in capsys.readouterr().err and marker.exists()
    state = read_state(state_path(out))
    assert state is not None and not state.reload_pending and state.last_failure is None
    assert main(_refresh(out, "--input", str(newer_doc), "--reload-cmd", "/nonexistent/falco-reload")) == 0


def test_missing_reload_program_is_exit_3(tmp_path, doc, capsys):
    out = tmp_path / "tor_rules.yaml"
    assert main(_refresh(out, "--input", str(doc), "--reload-cmd", "/nonexistent/falco-reload now")) == 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "tor-sets: error: reload command '/nonexistent/falco-reload' failed: No such file or directory"
