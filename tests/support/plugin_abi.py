"""Drive the compiled plugin through its C ABI with ctypes, as a plugin framework would.

Used by tests/integration/test_plugin_abi.py, in-process for the normal build and, for the build with
AddressSanitizer and UndefinedBehaviorSanitizer, as ``python -m tests.support.plugin_abi LIB WORKDIR`` in a
subprocess that preloads the sanitizer runtime. The structures mirror plugin_api.h / plugin_types.h of plugin API
3.x (``ss_plugin_init_input``, ``ss_plugin_event_input``, ``ss_plugin_extract_field``,
``ss_plugin_field_extract_input``, ``ss_plugin_metric``); only the members the plugin reads need real values.

The plugin reloads its table on a thread of its own, so a test that replaces the file waits (bounded, polling)
for the new table to show in extraction. A call that might block (plugin_init or extraction with a FIFO at the
table path) runs on a thread of the test with a bound: when it has not returned in time, the test opens the FIFO
for writing, which releases a reader blocked in ``open()``, and reports the call as blocked instead of hanging.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tor_sets.plugin.rules import FIELDS
from tor_sets.plugin.table import ENTRY, EXIT, MAX_BYTES, RELAY, Table, TableEntry, encode, write_table

SUCCESS, FAILURE = 0, 1
_LIBC = ctypes.CDLL(None)
_LIBC.malloc.restype = ctypes.c_void_p
_LIBC.malloc.argtypes = [ctypes.c_size_t]
_LIBC.free.argtypes = [ctypes.c_void_p]
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)


class InitInput(ctypes.Structure):
    _fields_ = [
        ("config", ctypes.c_char_p),
        ("owner", ctypes.c_void_p),
        ("get_owner_last_error", ctypes.c_void_p),
        ("tables", ctypes.c_void_p),
        ("log_fn", LOG_FN),
    ]


class EventInput(ctypes.Structure):
    _fields_ = [("evt", ctypes.c_void_p), ("evtnum", ctypes.c_uint64), ("evtsrc", ctypes.c_char_p)]


class ExtractField(ctypes.Structure):
    _fields_ = [
        ("res", ctypes.c_void_p),
        ("res_len", ctypes.c_uint64),
        ("field_id", ctypes.c_uint32),
        ("field", ctypes.c_char_p),
        ("arg_key", ctypes.c_char_p),
        ("arg_index", ctypes.c_uint64),
        ("arg_present", ctypes.c_uint32),
        ("ftype", ctypes.c_uint32),
        ("flist", ctypes.c_uint32),
    ]


class ExtractInput(ctypes.Structure):
    _fields_ = [
        ("owner", ctypes.c_void_p),
        ("get_owner_last_error", ctypes.c_void_p),
        ("num_fields", ctypes.c_uint32),
        ("fields", ctypes.POINTER(ExtractField)),
        ("table_reader", ctypes.c_void_p * 4),
        ("table_reader_ext", ctypes.c_void_p),
        ("value_offsets", ctypes.c_void_p),
    ]


class Metric(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("type", ctypes.c_int),
        ("value", ctypes.c_uint64),
        ("value_type", ctypes.c_int),
    ]


METRIC_U64 = 2
METRIC_MONOTONIC, METRIC_NON_MONOTONIC = 0, 1
_TYPES = {"string": 9, "uint64": 8, "bool": 25}


class Plugin:
    """One loaded library; :meth:`init` makes plugin states."""

    def __init__(self, library: Path) -> None:
        self.lib = ctypes.CDLL(str(library))
        for name in ("get_required_api_version", "get_version", "get_name", "get_fields", "get_extract_event_sources"):
            getattr(self.lib, f"plugin_{name}").restype = ctypes.c_char_p
        self.lib.plugin_init.restype = ctypes.c_void_p
        self.lib.plugin_init.argtypes = [ctypes.POINTER(InitInput), ctypes.POINTER(ctypes.c_int)]
        self.lib.plugin_get_last_error.restype = ctypes.c_char_p
        self.lib.plugin_get_last_error.argtypes = [ctypes.c_void_p]
        self.lib.plugin_destroy.argtypes = [ctypes.c_void_p]
        self.lib.plugin_extract_fields.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(EventInput),
            ctypes.POINTER(ExtractInput),
        ]
        self.lib.plugin_get_extract_event_types.restype = ctypes.POINTER(ctypes.c_uint16)
        self.lib.plugin_get_extract_event_types.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
        self.lib.plugin_get_init_schema.restype = ctypes.c_char_p
        self.lib.plugin_get_init_schema.argtypes = [ctypes.POINTER(ctypes.c_int)]
        self.lib.plugin_get_required_event_schema_version.restype = ctypes.c_char_p
        self.lib.plugin_get_required_event_schema_version.argtypes = [ctypes.c_void_p]
        self.lib.plugin_get_metrics.restype = ctypes.POINTER(Metric)
        self.lib.plugin_get_metrics.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        self.fields = json.loads(self.lib.plugin_get_fields())

    def text(self, name: str) -> str:
        return str(getattr(self.lib, f"plugin_{name}")().decode())

    def event_types(self, state: State | None) -> list[int]:
        count = ctypes.c_uint32(99)
        types = self.lib.plugin_get_extract_event_types(ctypes.byref(count), None if state is None else state.handle)
        return [types[i] for i in range(count.value)]

    def init(self, config: str) -> State:
        return State(self, config)


class State:
    """A plugin state: init on creation, :meth:`extract` per event, :meth:`close` to destroy."""

    def __init__(self, plugin: Plugin, config: str) -> None:
        self.plugin = plugin
        self.logs: list[tuple[int, str]] = []
        self.log_threads: list[int] = []  # the thread each log line came from (threading.get_ident)
        self._log = LOG_FN(self._on_log)  # kept alive as long as the state
        self._input = InitInput(config.encode(), None, None, None, self._log)
        rc = ctypes.c_int(-1)
        self.handle = plugin.lib.plugin_init(ctypes.byref(self._input), ctypes.byref(rc))
        self.rc = rc.value
        self._evtnum = 0

    def _on_log(self, owner: Any, component: bytes | None, message: bytes, severity: int) -> None:
        self.log_threads.append(threading.get_ident())
        self.logs.append((severity, message.decode()))

    def metrics(self) -> dict[str, tuple[int, int]]:
        """``plugin_get_metrics``: name → (metric type, value); every value must be a u64."""
        count = ctypes.c_uint32(99)
        array = self.plugin.lib.plugin_get_metrics(self.handle, ctypes.byref(count))
        out = {}
        for i in range(count.value):
            metric = array[i]
            assert metric.value_type == METRIC_U64, metric.name
            out[metric.name.decode()] = (metric.type, metric.value)
        return out

    def metric(self, name: str) -> int | None:
        found = self.metrics().get(name)
        return None if found is None else found[1]

    @property
    def last_error(self) -> str:
        return str(self.plugin.lib.plugin_get_last_error(self.handle).decode())

    def extract(self, event: bytes, names: Sequence[str] = FIELDS) -> dict[str, Any]:
        """Extract ``names`` from ``event``; fields without a value are absent from the result."""
        self._evtnum += 1
        # the event in a malloc'd block of exactly its size: under AddressSanitizer a read past its end is caught
        buffer = _LIBC.malloc(len(event))
        ctypes.memmove(buffer, event, len(event))
        try:
            return self._extract(buffer, names)
        finally:
            _LIBC.free(buffer)

    def _extract(self, buffer: int, names: Sequence[str]) -> dict[str, Any]:
        ev = EventInput(buffer, self._evtnum, b"syscall")
        fields = (ExtractField * len(names))()
        for i, name in enumerate(names):
            spec = next(f for f in self.plugin.fields if f["name"] == name)
            fields[i].field_id = [f["name"] for f in self.plugin.fields].index(name)
            fields[i].field = name.encode()
            fields[i].ftype = _TYPES[spec["type"]]
            fields[i].res_len = 99  # must be overwritten
        request = ExtractInput(None, None, len(names), fields)
        rc = self.plugin.lib.plugin_extract_fields(self.handle, ctypes.byref(ev), ctypes.byref(request))
        if rc != SUCCESS:
            raise RuntimeError(f"extract failed: {self.last_error}")
        out: dict[str, Any] = {}
        for i, name in enumerate(names):
            length = fields[i].res_len
            assert length in (0, 1), (name, length)
            if not length:
                continue
            kind = _TYPES[next(f["type"] for f in self.plugin.fields if f["name"] == name)]
            if kind == 9:
                out[name] = ctypes.cast(fields[i].res, ctypes.POINTER(ctypes.c_char_p))[0].decode()
            elif kind == 8:
                out[name] = ctypes.cast(fields[i].res, ctypes.POINTER(ctypes.c_uint64))[0]
            else:
                out[name] = bool(ctypes.cast(fields[i].res, ctypes.POINTER(ctypes.c_uint32))[0])
        return out

    def close(self) -> None:
        if self.handle is not None:
            self.plugin.lib.plugin_destroy(self.handle)
            self.handle = None


# ---------------------------------------------------------------------------------------------------- events


def event(event_type: int, params: Sequence[bytes], *, ts: int = 1, tid: int = 100) -> bytes:
    """A syscall event as the framework hands it over: header, u16 lengths, parameters."""
    length = 26 + 2 * len(params) + sum(len(p) for p in params)
    header = struct.pack("<QQIHI", ts, tid, length, event_type, len(params))
    return header + b"".join(struct.pack("<H", len(p)) for p in params) + b"".join(params)


def tuple_param(client: str, cport: int, server: str, sport: int) -> bytes:
    """A socket tuple parameter (family 2 or 10; ports in host order as libscap stores them)."""
    c, s = ipaddress.ip_address(client), ipaddress.ip_address(server)
    family = 2 if c.version == 4 else 10
    return bytes([family]) + c.packed + struct.pack("<H", cport) + s.packed + struct.pack("<H", sport)


def connect_x(client: str, server: str, res: int = 0) -> bytes:
    """connect exit in the modern layout: res, tuple, fd, addr."""
    return event(23, [struct.pack("<q", res), tuple_param(client, 40000, server, 443), struct.pack("<q", 3), b""])


def accept_x(client: str, server: str, event_type: int = 247) -> bytes:
    """accept exit (247), or accept4 (249 legacy, 389 with the extra flags parameter)."""
    params = [struct.pack("<q", 4), tuple_param(client, 50000, server, 80), b"\0", bytes(4), struct.pack("<I", 128)]
    if event_type == 389:
        params.append(struct.pack("<i", 0))
    return event(event_type, params)


# ---------------------------------------------------------------------------------------------------- tables

GUARD = "A" * 40
EXIT_RELAY = "B" * 40
NEW_RELAY = "C" * 40
TABLE_V1 = Table(
    (
        TableEntry(ipaddress.ip_address("5.5.5.5"), ENTRY | RELAY, GUARD, "guardian"),
        TableEntry(ipaddress.ip_address("6.6.6.6"), EXIT | RELAY, EXIT_RELAY, "exiter"),
        TableEntry(ipaddress.ip_address("7.7.7.7"), ENTRY | EXIT | RELAY, EXIT_RELAY, "exiter"),
        TableEntry(ipaddress.ip_address("8.8.8.1"), RELAY, GUARD, "guardian"),
        TableEntry(ipaddress.ip_address("198.51.100.7"), ENTRY | EXIT | RELAY),  # a canary: no relay
        TableEntry(ipaddress.ip_address("2a01::5"), ENTRY | RELAY, GUARD, "guardian"),
        TableEntry(ipaddress.ip_address("2a01::6"), EXIT | RELAY, EXIT_RELAY, "exiter"),
    ),
    published=1_700_000_000,
)
TABLE_V2 = Table(
    (
        *TABLE_V1.entries[1:],
        TableEntry(ipaddress.ip_address("9.9.9.9"), ENTRY | RELAY, NEW_RELAY, ""),
    ),
    published=1_700_003_600,
)


def config(table: Path, interval: float = 0) -> str:
    return json.dumps({"table": str(table), "check_interval_s": interval})


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


T = TypeVar("T")


def bounded(call: Callable[[], T], fifo: Path, timeout: float = 10.0) -> tuple[T | None, bool]:
    """Run ``call`` on a thread for at most ``timeout`` seconds; return (its result, whether it blocked).

    A call still running then is taken to be blocked opening ``fifo`` for reading: the FIFO is opened for writing
    (which lets that ``open()`` return) and closed, and the call gets another ``timeout`` to finish.
    """
    result: list[T] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(timeout)
    blocked = worker.is_alive()
    if blocked:
        with contextlib.suppress(OSError):  # ENXIO: nobody is reading it after all
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout)
    return (result[0] if result else None), blocked


def replace_with_fifo(path: Path) -> None:
    """Put a FIFO at ``path`` the way a table is replaced: made beside it, renamed over it."""
    tmp = path.with_name(f".{path.name}.fifo")
    os.mkfifo(tmp)
    os.replace(tmp, path)


def replace_with_sparse(path: Path, size: int) -> None:
    """Put a sparse file of ``size`` bytes (no data written) at ``path``, renamed over it."""
    tmp = path.with_name(f".{path.name}.sparse")
    with open(tmp, "wb") as out:
        out.truncate(size)
    os.replace(tmp, path)


def peak_rss_kb() -> int:
    """This process's peak resident set size (VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (``/proc/self/clear_refs``, Linux 4.0+) and return it in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_kb()


def role_of(state: State, address: str) -> str | None:
    """``tor.server_role`` of a connect to ``address``."""
    value = state.extract(connect_x("10.0.0.5", address), ["tor.server_role"]).get("tor.server_role")
    return None if value is None else str(value)


#: a check of a scenario: ``check(holds, what)`` records (or, in a test, asserts) that ``holds``, naming ``what``
Check = Callable[[bool, str], None]


def require(ok: bool, what: str) -> None:
    """A :data:`Check` for pytest: the first check that fails ends the test, named."""
    assert ok, what


def collector(failures: list[str]) -> Check:
    """A :data:`Check` that records each failed check in ``failures`` and goes on (the sanitizer runs)."""

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    return check


def _good_connect() -> bytes:
    return connect_x("10.0.0.5", "5.5.5.5")


#: (what is checked, the event extracted, whether the fields are right) against :data:`TABLE_V1`
EXTRACTIONS: list[tuple[str, Callable[[], bytes], Callable[[dict[str, Any]], bool]]] = [
    (
        "connect to an entry relay: its role",
        _good_connect,
        lambda got: got.get("tor.server_role") == "entry" and got.get("tor.server_is_entry") is True,
    ),
    (
        "connect to an entry relay: its fingerprint and nickname",
        _good_connect,
        lambda got: got.get("tor.fingerprint") == GUARD and got.get("tor.nickname") == "guardian",
    ),
    (
        "connect to an entry relay: the local client is none",
        _good_connect,
        lambda got: got.get("tor.client_role") == "none" and got.get("tor.client_is_exit") is False,
    ),
    *[
        (
            f"accept ({event_type}) from an exit relay",
            lambda event_type=event_type: accept_x("6.6.6.6", "10.0.0.5", event_type),
            lambda got: (
                got.get("tor.client_is_exit") is True
                and got.get("tor.remote_role") == "exit"
                and got.get("tor.fingerprint") == EXIT_RELAY
            ),
        )
        for event_type in (247, 249, 389)
    ],
    (
        "accept4 from an IPv4-mapped exit relay",
        lambda: accept_x("::ffff:6.6.6.6", "::ffff:10.0.0.5", 389),
        lambda got: got.get("tor.client_is_exit") is True,
    ),
    (
        "IPv6 accept from an exit relay",
        lambda: accept_x("2a01::6", "2001:db8::1"),
        lambda got: got.get("tor.client_role") == "exit" and got.get("tor.is_relay") is True,
    ),
    (
        "connect to an entry and exit relay",
        lambda: connect_x("10.0.0.5", "7.7.7.7"),
        lambda got: got.get("tor.server_role") == "entry,exit",
    ),
    (
        "connect to a relay of neither role",
        lambda: connect_x("10.0.0.5", "8.8.8.1"),
        lambda got: (
            got.get("tor.server_role") == "relay"
            and got.get("tor.server_is_relay") is True
            and got.get("tor.server_is_entry") is False
        ),
    ),
    (
        "connect to a canary: an entry with no fingerprint",
        lambda: connect_x("10.0.0.5", "198.51.100.7"),
        lambda got: got.get("tor.server_is_entry") is True and "tor.fingerprint" not in got,
    ),
    (
        "connect to no relay",
        lambda: connect_x("10.0.0.5", "5.5.5.6"),
        lambda got: (
            got.get("tor.server_role") == "none" and "tor.fingerprint" not in got and got.get("tor.is_relay") is False
        ),
    ),
    # first and last entries, and just outside them (binary search bounds)
    *[
        (
            f"connect just outside the table's entries: {address}",
            lambda address=address: connect_x("10.0.0.5" if ":" not in address else "2001:db8::1", address),
            lambda got: got.get("tor.server_role") == "none",
        )
        for address in ("5.5.5.4", "198.51.100.8", "2a01::4", "2a01::7")
    ],
    # events that are not ours, or not well formed: no value (or role none), never a crash
    (
        "connect on a unix socket",
        lambda: event(23, [struct.pack("<q", 0), b"\x01" + bytes(16), struct.pack("<q", 3), b""]),
        lambda got: got.get("tor.server_role") == "none" and got.get("tor.is_relay") is False,
    ),
    ("an event of another type", lambda: event(3, [b"x", b"y"]), lambda got: got == {}),
    *[
        (
            f"malformed connect: {what}",
            make,
            lambda got: "tor.server_is_entry" not in got or got["tor.server_is_entry"] is False,
        )
        for what, make in (
            ("header only, nparams 0", lambda: _good_connect()[:20] + bytes(6)),
            (
                "len shorter than the header",
                lambda: _good_connect()[:16] + struct.pack("<I", 10) + _good_connect()[20:],
            ),
            ("absurd nparams", lambda: _good_connect()[:22] + struct.pack("<I", 0xFFFFFFFF) + _good_connect()[26:]),
            (
                "tuple length beyond the event",
                lambda: _good_connect()[:28] + struct.pack("<H", 0xFFFF) + _good_connect()[30:],
            ),
            (
                "first parameter beyond the event",
                lambda: _good_connect()[:26] + struct.pack("<H", 0xFFF0) + _good_connect()[28:],
            ),
            ("one parameter only", lambda: event(23, [struct.pack("<q", 0)])),
            (
                "short tuple",
                lambda: event(23, [struct.pack("<q", 0), tuple_param("10.0.0.5", 1, "5.5.5.5", 2)[:-1], b"", b""]),
            ),
        )
    ],
]


def started(plugin: Plugin, workdir: Path, check: Check) -> tuple[State, Path]:
    """A state of ``plugin`` on :data:`TABLE_V1` written in ``workdir``, its start and metrics checked."""
    table = workdir / "tor.table"
    write_table(table, encode(TABLE_V1))
    state = plugin.init(config(table))
    check(state.rc == SUCCESS, f"init: {state.last_error}")
    metrics = state.metrics()
    check(metrics.get("table_loads") == (METRIC_MONOTONIC, 1), f"metrics: {metrics}")
    check(metrics.get("table_rejects") == (METRIC_MONOTONIC, 0), f"metrics: {metrics}")
    age = metrics.get("table_age_s", (None, 0))
    check(age[0] == METRIC_NON_MONOTONIC and age[1] >= time.time() - TABLE_V1.published - 60, f"age: {metrics}")
    return state, table


def reload_scenario(plugin: Plugin, workdir: Path, check: Check) -> None:
    """Reloads in order: a corrupt table is refused (once), the old one kept; a good one is taken; a missing file
    is noted and the table kept; the file back is taken; reloads run off the extraction thread; a second state is
    independent."""
    state, table = started(plugin, workdir, check)
    corrupt = bytearray(encode(TABLE_V2))
    corrupt[-1] ^= 1
    write_table(table, bytes(corrupt))
    check(wait_until(lambda: "checksum mismatch" in state.last_error), f"last error: {state.last_error}")
    check(role_of(state, "5.5.5.5") == "entry" and state.metric("table_loads") == 1, "kept after corrupt")
    time.sleep(0.05)  # some fifty more checks of the same bad file
    state.extract(_good_connect())
    errors = [m for sev, m in state.logs if sev == 3]
    check(len(errors) == 1 and "keeping the loaded table" in errors[0], f"error logs: {state.logs}")
    check(state.metric("table_rejects") == 1, f"rejects: {state.metrics()}")
    write_table(table, encode(TABLE_V2))
    check(wait_until(lambda: role_of(state, "9.9.9.9") == "entry"), "reloaded")
    got = state.extract(connect_x("10.0.0.5", "9.9.9.9"))
    check(got.get("tor.fingerprint") == NEW_RELAY and "tor.nickname" not in got, f"reloaded: {got}")
    check(state.metric("table_loads") == 2, f"loads: {state.metrics()}")
    check(state.metric("table_age_s") is not None, f"age after reload: {state.metrics()}")
    got = state.extract(connect_x("10.0.0.5", "5.5.5.5"))
    check(got.get("tor.server_role") == "none", f"removed relay: {got}")
    os.unlink(table)
    check(wait_until(lambda: any("is gone" in m for _, m in state.logs)), f"missing file: {state.logs}")
    time.sleep(0.05)
    check(sum("is gone" in m for _, m in state.logs) == 1, f"missing file: {state.logs}")
    check(state.extract(connect_x("10.0.0.5", "9.9.9.9")).get("tor.server_is_entry") is True, "kept while missing")
    write_table(table, encode(TABLE_V1))
    check(wait_until(lambda: role_of(state, "5.5.5.5") == "entry"), "back")
    check(state.metric("table_loads") == 3, f"loads: {state.metrics()}")
    reload_threads = {t for t, (_, m) in zip(state.log_threads, state.logs, strict=True) if "reloaded" in m}
    check(bool(reload_threads) and threading.get_ident() not in reload_threads, "reloads off the extraction thread")
    # a second state is independent (the framework may run one per thread)
    other = plugin.init(config(table, 3600))
    check(other.rc == SUCCESS and role_of(other, "5.5.5.5") == "entry", "second state")
    check(other.metric("table_loads") == 1, f"second state: {other.metrics()}")
    other.close()
    state.close()


def run_scenario(plugin: Plugin, workdir: Path, check: Check) -> None:
    """Every extraction of :data:`EXTRACTIONS` on one state, then the reloads (:func:`reload_scenario`)."""
    state, _ = started(plugin, workdir, check)
    for what, make, right in EXTRACTIONS:
        got = state.extract(make())
        check(right(got), f"{what}: {got}")
    state.close()
    reloads = workdir / "reloads"
    reloads.mkdir()
    reload_scenario(plugin, reloads, check)


def _rename_over(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it over whatever ``path`` is (tor-sets' own writer refuses a FIFO)."""
    tmp = path.with_name(f".{path.name}.swap")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fifo_scenario(plugin: Plugin, workdir: Path, check: Check) -> None:
    """A FIFO at the table path, at init and swapped in for a reload: nothing blocks, the table in use stays."""
    table = workdir / "tor.table"
    os.mkfifo(table)
    state, blocked = bounded(lambda: plugin.init(config(table)), table)
    check(not blocked, "plugin_init blocked on a FIFO at the table path")
    if state is not None:
        check(
            state.rc == FAILURE and "is not a regular file" in state.last_error, f"init on a FIFO: {state.last_error}"
        )
        state.close()

    _rename_over(table, encode(TABLE_V1))  # the FIFO replaced by a table, as a deploy tool's rename would
    state = plugin.init(config(table))
    check(state.rc == SUCCESS, f"init: {state.last_error}")
    replace_with_fifo(table)
    for _ in range(20):  # extraction goes on while the loader meets the FIFO
        role, blocked = bounded(lambda: role_of(state, "5.5.5.5"), table)
        check(not blocked, "extraction blocked on a FIFO swapped in at the table path")
        if blocked:
            break
        check(role == "entry", f"table kept while a FIFO is at the path: {role}")
        time.sleep(0.005)
    check(wait_until(lambda: "is not a regular file" in state.last_error), f"last error: {state.last_error}")
    time.sleep(0.05)  # some fifty more checks of the same FIFO
    complaints = [m for _, m in state.logs if "is not a regular file" in m]
    check(len(complaints) == 1 and "keeping the loaded table" in complaints[0], f"logs: {state.logs}")
    check(state.metric("table_rejects") == 1, f"rejects: {state.metrics()}")
    _rename_over(table, encode(TABLE_V2))  # the loader is not stuck: the next good table is taken
    check(wait_until(lambda: role_of(state, "9.9.9.9") == "entry"), "no reload after the FIFO")
    check(state.metric("table_loads") == 2, f"loads: {state.metrics()}")
    _, blocked = bounded(state.close, table)
    check(not blocked, "plugin_destroy blocked")


def size_limit_scenario(plugin: Plugin, workdir: Path, check: Check, *, measure_memory: bool = True) -> None:
    """A sparse table file one byte over the limit, at init and swapped in: refused unread, memory not grown.

    ``measure_memory``: compare the process's peak RSS before and after (not under AddressSanitizer).
    """
    limit_message = f"more than the {MAX_BYTES}-byte limit"
    slack_kb = 16 * 1024  # far below the 64 MiB a read would cost
    table = workdir / "tor.table"
    replace_with_sparse(table, MAX_BYTES + 1)
    before = reset_peak_rss() if measure_memory else 0
    state = plugin.init(config(table))
    check(state.rc == FAILURE and limit_message in state.last_error, f"init on a huge file: {state.last_error}")
    if measure_memory:
        check(peak_rss_kb() - before < slack_kb, f"init read the huge file: peak RSS +{peak_rss_kb() - before} KiB")
    state.close()

    write_table(table, encode(TABLE_V1))
    state = plugin.init(config(table))
    check(state.rc == SUCCESS, f"init: {state.last_error}")
    before = reset_peak_rss() if measure_memory else 0
    replace_with_sparse(table, MAX_BYTES + 1)
    check(wait_until(lambda: limit_message in state.last_error), f"last error: {state.last_error}")
    check(role_of(state, "5.5.5.5") == "entry", "table kept while a huge file is at the path")
    if measure_memory:
        check(peak_rss_kb() - before < slack_kb, f"reload read the huge file: peak RSS +{peak_rss_kb() - before} KiB")
    check(state.metric("table_rejects") == 1 and state.metric("table_loads") == 1, f"metrics: {state.metrics()}")
    state.close()


def big_table(marker: str, count: int) -> Table:
    """A valid table of ``count`` entry addresses from 20.0.0.0 up, plus ``marker`` (an entry relay)."""
    base = int(ipaddress.IPv4Address("20.0.0.0"))
    entries = [TableEntry(ipaddress.IPv4Address(base + 3 * i), ENTRY | RELAY, GUARD, "guardian") for i in range(count)]
    entries.append(TableEntry(ipaddress.ip_address(marker), ENTRY | RELAY, NEW_RELAY, "marker"))
    return Table(tuple(sorted(entries, key=lambda e: int(e.address))), published=1_700_000_000)


def swap_under_load_scenario(
    plugin: Plugin, workdir: Path, check: Check, *, count: int = 250_000, swaps: int = 6
) -> None:
    """Valid tables of ``count`` addresses replaced ``swaps`` times while this thread extracts without pause.

    Every extraction must succeed and answer from one whole table (the marker address of table A or B is an entry
    relay, the other none), the last table written must win, and every reload must be logged from a thread other
    than the extracting one: reading and checking a table happens off the extraction path. The tables are
    replaced by a child process (copy, then rename), so that no thread of this process competes for the GIL
    with the extracting one; the times per extraction printed at the end are for information, not asserted.
    """
    table = workdir / "tor.table"
    order = ["9.9.0.2", "9.9.0.1"] * (swaps // 2)
    for marker in set(order):
        (workdir / f"{marker}.table").write_bytes(encode(big_table(marker, count)))
    write_table(table, (workdir / "9.9.0.1.table").read_bytes())
    state = plugin.init(config(table))
    check(state.rc == SUCCESS, f"init: {state.last_error}")
    script = (
        "import os, shutil, sys, time\n"
        "table = sys.argv[1]\n"
        "for image in sys.argv[2:]:\n"
        "    time.sleep(0.03)\n"
        "    shutil.copyfile(image, table + '.tmp')\n"
        "    os.replace(table + '.tmp', table)\n"
    )
    images = [str(workdir / f"{marker}.table") for marker in order]
    feeder = subprocess.Popen([sys.executable, "-c", script, str(table), *images])
    calls, times = 0, []
    while feeder.poll() is None or calls < 100:
        a, b = connect_x("10.0.0.5", "9.9.0.1"), connect_x("10.0.0.5", "9.9.0.2")
        started = time.perf_counter()
        try:
            got_a = state.extract(a, ["tor.server_role", "tor.fingerprint"])
            got_b = state.extract(b, ["tor.server_role", "tor.fingerprint"])
        except RuntimeError as exc:
            check(False, f"extraction failed: {exc}")
            break
        times.append((time.perf_counter() - started) / 2)
        calls += 2
        roles = (got_a.get("tor.server_role"), got_b.get("tor.server_role"))
        # a swap may fall between the two calls: each answer alone must come from table A or table B
        check(roles[0] in ("entry", "none") and roles[1] in ("entry", "none"), f"roles {roles}")
        for got in (got_a, got_b):
            check((got.get("tor.server_role") == "entry") == ("tor.fingerprint" in got), f"torn answer {got}")
    check(feeder.wait(timeout=60) == 0, "the table writer failed")
    last = order[-1]
    check(wait_until(lambda: role_of(state, last) == "entry"), "the last table written is not in use")
    other = "9.9.0.1" if last == "9.9.0.2" else "9.9.0.2"
    check(role_of(state, other) == "none", "the other marker is still known")
    loads = state.metric("table_loads") or 0
    check(2 <= loads <= swaps + 1, f"loads: {state.metrics()}")
    reload_threads = {t for t, (_, m) in zip(state.log_threads, state.logs, strict=True) if "reloaded" in m}
    check(bool(reload_threads) and threading.get_ident() not in reload_threads, "a reload ran on the extraction thread")
    state.close()
    times.sort()
    median, p99, worst = (times[len(times) // 2] * 1e3, times[len(times) * 99 // 100] * 1e3, times[-1] * 1e3)
    print(
        f"swap under load: {calls} extractions, {loads} loads; ms per extraction: median {median:.3f}, "
        f"p99 {p99:.3f}, max {worst:.3f}",
        file=sys.stderr,
    )


def run_all(plugin: Plugin, workdir: Path, *, measure_memory: bool = True) -> list[str]:
    """Every scenario, each in a folder of its own; the checks that failed, each named (empty: all good)."""
    failures: list[str] = []
    scenarios: list[tuple[str, Callable[[Path, Check], None]]] = [
        ("run", lambda d, check: run_scenario(plugin, d, check)),
        ("fifo", lambda d, check: fifo_scenario(plugin, d, check)),
        ("size", lambda d, check: size_limit_scenario(plugin, d, check, measure_memory=measure_memory)),
        ("swap", lambda d, check: swap_under_load_scenario(plugin, d, check, count=20_000)),
    ]
    for name, scenario in scenarios:
        folder = workdir / name
        folder.mkdir()
        found: list[str] = []
        scenario(folder, collector(found))
        failures.extend(f"{name}: {f}" for f in found)
    return failures


if __name__ == "__main__":  # python -m tests.support.plugin_abi LIBRARY WORKDIR
    problems = run_all(Plugin(Path(sys.argv[1])), Path(sys.argv[2]), measure_memory=False)
    print(json.dumps(problems))
    sys.exit(1 if problems else 0)
