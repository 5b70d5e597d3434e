"""Real Falco watching this host's kernel with its modern eBPF probe, for as long as a ``with`` block lasts.

Exports :class:`LiveFalco` (start, wait until it sees events, :meth:`~LiveFalco.sync` to know every earlier event
was judged, stop on every way out), :func:`memlock_shim_needed` and :data:`READY_RULE`.

How it runs (docs/verify.md, "Live"), each point met on these machines:

* as root, from the runtime root in the engine cache (:class:`~tor_sets.engines.paths.FalcoInstall`), with a
  ``falco.yaml`` of its own: ``engine.kind: modern_ebpf``, the rules given, ``file_output`` to a JSON file this
  class reads, optionally ``http_output`` to a URL (``tor-sets enrich --listen``);
* in a private mount namespace (``unshare --mount``) where tracefs is mounted at ``/sys/kernel/tracing`` when it is
  missing (it removes a warning about the TOCTOU-mitigation tracepoints): the mount lives and dies with Falco;
* with the parent-death signal set to SIGTERM, so Falco stops even when the process that started it is killed;
* libpman raises ``RLIMIT_MEMLOCK`` to infinity and gives up on EPERM. Where the hard limit is low and cannot be
  raised (no ``CAP_SYS_RESOURCE`` in the bounding set), kernels from 5.11 on do not use that limit for BPF memory:
  then the runtime root's ``libmemlock_shim.so`` is preloaded, which turns exactly that EPERM into success;
* ready when a rule on opening a marker file in the work folder has alerted (:data:`READY_RULE`): Falco needs about
  2 s to load and attach the probe, so the class polls instead of sleeping.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import platform
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tor_sets.engines.base import Plugin
from tor_sets.engines.falco import falco_config
from tor_sets.engines.paths import FalcoInstall, falco_installed
from tor_sets.errors import EngineError, EngineTimeout, EngineUnavailable
from tor_sets.falco.alerts import Alert, parse_alert

__all__ = ["READY_RULE", "LiveFalco", "memlock_shim_needed"]

log = logging.getLogger(__name__)

#: the rule whose alerts tell that Falco sees events (and, in order, that it has judged every earlier one)
READY_RULE = "tor-sets live marker"
_SHIM = "usr/lib/tor-sets/libmemlock_shim.so"
_PR_SET_PDEATHSIG = 1
_MOUNT_TRACEFS = (
    '[ -e /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; exec "$@"'
)


def memlock_shim_needed() -> bool:
    """Whether Falco's probe needs the memlock shim here: the limit cannot be raised, and the kernel ignores it.

    Raises:
        EngineUnavailable: the limit cannot be raised and the kernel is older than 5.11 (BPF memory is charged to
            ``RLIMIT_MEMLOCK`` there, so the probe could not load).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        pass
    else:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
        return False  # raising works: Falco (a child, as root) can do it itself
    found = re.match(r"(\d+)\.(\d+)", platform.release())
    kernel = (int(found[1]), int(found[2])) if found else (0, 0)
    if kernel < (5, 11):
        raise EngineUnavailable(
            f"falco live: RLIMIT_MEMLOCK is capped at {hard} bytes and cannot be raised, and kernel "
            f"{platform.release()} charges BPF memory to it: run as a root with CAP_SYS_RESOURCE"
        )
    return True


def _parent_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class LiveFalco:
    """Real Falco on this host's kernel, started on entering and stopped on leaving (also on errors and signals).

    Args:
        workdir: a folder of the caller's for the config, the marker files, the alerts and Falco's log.
        rules: rules files, loaded in order after the marker rule.
        plugins: plugins to load.
        http_output: a URL every alert is POSTed to (Falco's ``http_output``), or None.
        install: the Falco to run (default: the newest in the engine cache).
        ready_timeout: seconds to wait for the first marker alert.
        config: more top-level settings for ``falco.yaml`` (they win).
    """

    def __init__(
        self,
        workdir: Path,
        rules: Sequence[Path],
        *,
        plugins: Sequence[Plugin] = (),
        http_output: str | None = None,
        install: FalcoInstall | None = None,
        ready_timeout: float = 60.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.rules = tuple(rules)
        self.plugins = tuple(plugins)
        self.http_output = http_output
        self.install = install
        self.ready_timeout = ready_timeout
        self.config = config or {}
        self.events = workdir / "events.json"
        self.log_path = workdir / "falco.log"
        self.started_s = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._pending = b""
        self._markers = 0
        self._alerts: list[Alert] = []

    # -- lifecycle --------------------------------------------------------------------------------------------

    def __enter__(self) -> LiveFalco:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start Falco and wait until it alerts on a marker file.

        Raises:
            EngineUnavailable: not root, or no Falco in the cache.
            EngineTimeout: no marker alert within ``ready_timeout``.
            EngineError: Falco ended early (the message quotes its log).
        """
        if os.geteuid() != 0:
            raise EngineUnavailable("falco live: capturing the kernel's events needs root")
        install = self.install or falco_installed()
        if install is None:
            raise EngineUnavailable("falco live: Falco is not installed; run `tor-sets engines install falco` as root")
        preload = [install.runtime / _SHIM] if memlock_shim_needed() else []
        marker_rules = self.workdir / "tor-sets-marker.yaml"
        marker_rules.write_text(
            yaml.safe_dump(
                [
                    {
                        "rule": READY_RULE,
                        "desc": "tor-sets: a marker file was opened (Falco is capturing)",
                        "condition": "evt.type in (open, openat, openat2) and fd.name startswith "
                        + self._marker(0)[:-1],
                        "output": "tor-sets marker | file=%fd.name",
                        "priority": "DEBUG",
                        "tags": ["tor-sets-marker"],
                    }
                ],
                sort_keys=False,
            )
        )
        loads = []
        for plugin in self.plugins:
            library, config = plugin.staged(self.workdir, lambda name: str(self.workdir / name))
            loads.append((plugin.name, library, config))
        extra: dict[str, Any] = {
            "engine": {"kind": "modern_ebpf", "modern_ebpf": {"cpus_for_each_buffer": 2, "buf_size_preset": 4}},
            "file_output": {"enabled": True, "keep_alive": True, "filename": str(self.events)},
            "stdout_output": {"enabled": False},
            "buffered_outputs": False,
        }
        if self.http_output is not None:
            extra["http_output"] = {"enabled": True, "url": self.http_output, "user_agent": "falcosecurity/falco"}
        config = falco_config(
            [str(marker_rules), *(str(p) for p in self.rules)],
            capture=None,
            plugins=loads,
            rule_matching="first",
            extra=extra | self.config,
        )
        (self.workdir / "falco.yaml").write_text(config, encoding="utf-8")
        self.events.write_bytes(b"")
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _MOUNT_TRACEFS,
            "sh",
            *install.command(["-c", str(self.workdir / "falco.yaml")], preload=preload),
        ]
        shim = " (memlock shim)" if preload else ""
        log.info("falco live: starting Falco %s with the modern eBPF probe%s", install.version, shim)
        start = time.monotonic()
        with open(self.log_path, "wb") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_parent_death_signal,
            )
        self.sync(self.ready_timeout)
        self.started_s = time.monotonic() - start
        log.info("falco live: capturing after %.2f s", self.started_s)

    def stop(self) -> None:
        """Stop Falco (SIGTERM, then SIGKILL after 15 s); idempotent, never raises."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(OSError):
            self._collect()

    @property
    def pid(self) -> int | None:
        """The process id of the ``unshare`` wrapper (the group leader), while running."""
        return self._proc.pid if self._proc is not None else None

    # -- alerts ---------------------------------------------------------------------------------------------------

    def _marker(self, number: int) -> str:
        return str(self.workdir / f"marker-{number:06d}")

    def _collect(self) -> list[Alert]:
        with open(self.events, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        data = self._pending + data
        *lines, self._pending = data.split(b"\n")
        fresh = []
        for line in lines:
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                fresh.append(parse_alert(doc))
            except ValueError:
                log.warning("falco live: unreadable line in %s: %r", self.events, line[:200])
        self._alerts.extend(fresh)
        return fresh

    def alerts(self, *, markers: bool = False) -> list[Alert]:
        """Every alert so far (without the marker rule's, unless asked)."""
        self._collect()
        return [a for a in self._alerts if markers or a.rule != READY_RULE]

    def wait_for(self, found: Callable[[list[Alert]], bool], timeout: float) -> bool:
        """Poll the alerts until ``found(alerts)`` is true or ``timeout`` passes; whether it was found."""
        deadline = time.monotonic() + timeout
        while True:
            if found(self.alerts()):
                return True
            self._check_running()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def sync(self, timeout: float = 30.0) -> float:
        """Open a fresh marker file until Falco alerts on it: every event before it has then been judged.

        Returns:
            Seconds it took.

        Raises:
            EngineTimeout: no marker alert within ``timeout``.
            EngineError: Falco ended.
        """
        self._markers += 1
        marker = self._marker(self._markers)
        start = time.monotonic()
        deadline = start + timeout
        next_touch = 0.0
        while True:
            now = time.monotonic()
            if now >= next_touch:
                with open(marker, "w"):
                    pass
                next_touch = now + 0.25
            self._collect()
            if any(a.rule == READY_RULE and a.output_fields.get("fd.name") == marker for a in self._alerts):
                return time.monotonic() - start
            self._check_running()
            if now > deadline:
                raise EngineTimeout(
                    f"falco live: no alert on the marker {marker} within {timeout:g} s; log: {self._log_tail()}",
                    engine="falco-live",
                )
            time.sleep(0.02)

    def _check_running(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            self._proc = None
            raise EngineError(f"falco live: Falco ended (exit {code}): {self._log_tail()}", engine="falco-live")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if "rror" in line or "plugin" in line.lower() or "unable" in line]
            return (errors or lines or ["empty log"])[-1][:300]
        return "no log"

    def log_lines(self) -> Iterator[str]:
        """Falco's own log so far."""
        with contextlib.suppress(OSError):
            yield from self.log_path.read_text(errors="replace").splitlines()
