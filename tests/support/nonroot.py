"""Run ``tor_sets.cli.main`` as a non-root user: a forked child of the test process that drops to ``nobody``.

The child is a real non-root process (the kernel refuses it what it refuses ``nobody``), but it needs nothing
from disk to start: it is a fork of the test process, with tor-sets and the modules the command needs already
imported. So it works where the interpreter itself lives in a folder ``nobody`` may not read (as under
``/root``): the only thing such a child cannot do is start this interpreter again (an engine's reaper).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534


@dataclass(frozen=True)
class Ran:
    """What a command run as ``nobody`` did."""

    code: int
    stdout: str
    stderr: str


def preload() -> None:
    """Import what the commands run as ``nobody`` import lazily (the child may not read the interpreter's folder)."""
    import _strptime  # noqa: F401 - datetime.strptime imports it on first use
    import encodings.idna  # noqa: F401
    import traceback  # noqa: F401

    import tor_sets.cli
    import tor_sets.engines
    import tor_sets.plugin
    import tor_sets.plugin.table
    import tor_sets.provision
    import tor_sets.verify  # noqa: F401


def run_as_nobody(argv: Sequence[str], folder: Path, env: Mapping[str, str] = {}, timeout: float = 60) -> Ran:
    """Run ``tor-sets ARGV`` as uid/gid 65534 in a forked child, with ``env`` set; wait at most ``timeout`` s.

    Must be called as root. ``folder`` receives the child's stdout and stderr files.
    """
    assert os.geteuid() == 0, "dropping to nobody needs root"
    preload()
    out, err = folder / "nobody.stdout", folder / "nobody.stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            for fd, path in ((1, out), (2, err)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(target, fd)
                os.close(target)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child exits without closing
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.environ.update(env)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            from tor_sets.cli import main

            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"tor-sets {' '.join(argv)} as nobody did not finish within {timeout} s")
        time.sleep(0.02)
    return Ran(os.waitstatus_to_exitcode(status), out.read_text(), err.read_text())
