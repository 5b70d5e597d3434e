"""The one place an engine starts a process, measures it and maps its failure: :func:`run_process`.

Exports :class:`Completed` and :func:`run_process`, and :data:`STDERR_TAIL_CHARS`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tor_sets.errors import EngineError, EngineTimeout, EngineUnavailable

__all__ = ["STDERR_TAIL_CHARS", "Completed", "run_process"]

STDERR_TAIL_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished process, as :func:`run_process` saw it."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    max_rss_kb: int
    cpu_s: float = 0.0

    @property
    def stderr_tail(self) -> str:
        """The last :data:`STDERR_TAIL_CHARS` characters of stderr."""
        return self.stderr[-STDERR_TAIL_CHARS:]


# The reaper: a small Python that forks the engine, waits for it and reports its rusage on a pipe.
# Why not wait4() on our own child: Linux charges a process's peak RSS with the RSS of the address space it
# had when it called execve(), and a child of this interpreter starts as a copy of it (vfork shares it), so
# ru_maxrss of a direct child is never below the RSS of the caller (tens to hundreds of MB here). Forked from
# the reaper (~5 MB), the engine starts small and ru_maxrss is its own peak.
_REAPER = """\
import os, sys, time
report = int(sys.argv[1])
os.set_inheritable(report, False)
start = time.monotonic_ns()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        os.write(report, b"exec-error %d\\n" % exc.errno)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic_ns() - start
cpu = int((usage.ru_utime + usage.ru_stime) * 1e9)
os.write(report, b"done %d %d %d %d\\n" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss, wall, cpu))
"""


def run_process(
    argv: Sequence[str],
    *,
    engine: str,
    timeout: float,
    on_timeout: Callable[[], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run one engine process to its end and measure it; the only subprocess seam of the engines.

    The process runs under a small reaper in a session of its own, so that a timeout kills both. The reaper
    reports the engine's exit status, peak RSS (``wait4`` rusage of the engine itself; ``chroot`` executes
    the engine in place) and wall time. A non-zero exit status is returned, not raised: what it means is the
    caller's business.

    Args:
        argv: the command line.
        engine: engine name for error messages.
        timeout: seconds before the process group is killed.
        on_timeout: called after the kill, e.g. to stop a container the client left running.
        env: environment for the child (default: inherited).

    Returns:
        The exit status, the decoded output and the measurements.

    Raises:
        EngineUnavailable: the program does not exist or may not be executed.
        EngineTimeout: the process ran longer than ``timeout``.
        EngineError: the reaper died without a report.
    """
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(read_fd, "rb") as report:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER, str(write_fd), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env=None if env is None else dict(env),
                pass_fds=(write_fd,),
            )
        except OSError as exc:  # the reaper (this Python) cannot be started: the engine cannot run either
            raise EngineUnavailable(
                f"{engine}: cannot start {sys.executable} to run {argv[0]}: {exc.strerror or exc}", engine=engine
            ) from exc
        finally:
            os.close(write_fd)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # interrupted: take the engine down with us
            _kill_group(proc)
            raise
        else:
            timed_out = False
        if timed_out:
            _kill_group(proc)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", errors="replace")
        stderr = err.read().decode("utf-8", errors="replace")
        lines = report.read().decode("ascii", errors="replace").split()
    if timed_out:
        if on_timeout is not None:
            on_timeout()
        raise EngineTimeout(
            f"{engine}: no result within {timeout:g} s (killed)", engine=engine, stderr=stderr[-STDERR_TAIL_CHARS:]
        )
    if lines[:1] == ["exec-error"]:
        reason = os.strerror(int(lines[1]))
        raise EngineUnavailable(f"{engine}: cannot run {argv[0]}: {reason}", engine=engine)
    if lines[:1] != ["done"] or len(lines) != 5:
        raise EngineError(
            f"{engine}: the engine runner ended without a report (exit {proc.returncode})",
            engine=engine,
            returncode=proc.returncode,
            stderr=stderr[-STDERR_TAIL_CHARS:],
        )
    returncode, max_rss_kb, wall_ns, cpu_ns = (int(x) for x in lines[1:])
    return Completed(tuple(argv), returncode, stdout, stderr, wall_ns / 1e9, max_rss_kb, cpu_ns / 1e9)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of ``proc`` (the reaper and the engine) and reap the reaper."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
