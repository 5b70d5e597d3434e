"""Drive the compiled plugin through its C ABI with ctypes, as a plugin framework would.

Used by tests/integration/test_plugin_abi.py, in-process for the normal build and, for the build with
AddressSanitizer and UndefinedBehaviorSanitizer, as ``python -m tests.support.plugin_abi LIB WORKDIR`` in a
subprocess that preloads the sanitizer runtime. The structures mirror plugin_api.h / plugin_types.h of plugin API
3.x (``ss_plugin_init_input``, ``ss_plugin_event_input``, ``ss_plugin_extract_field``,
``ss_plugin_field_extract_input``); only the members the plugin reads need real values.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tor_sets.plugin.rules import FIELDS
from tor_sets.plugin.table import ENTRY, EXIT, RELAY, Table, TableEntry, encode, write_table

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
        self._log = LOG_FN(self._on_log)  # kept alive as long as the state
        self._input = InitInput(config.encode(), None, None, None, self._log)
        rc = ctypes.c_int(-1)
        self.handle = plugin.lib.plugin_init(ctypes.byref(self._input), ctypes.byref(rc))
        self.rc = rc.value
        self._evtnum = 0

    def _on_log(self, owner: Any, component: bytes | None, message: bytes, severity: int) -> None:
        self.logs.append((severity, message.decode()))

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


def run_scenario(plugin: Plugin, workdir: Path) -> list[str]:
    """Exercise extraction, malformed input and reloads; return the checks that failed (empty: all good)."""
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    table = workdir / "tor.table"
    write_table(table, encode(TABLE_V1))
    state = plugin.init(config(table))
    check(state.rc == SUCCESS, f"init: {state.last_error}")
    got = state.extract(connect_x("10.0.0.5", "5.5.5.5"))
    check(got.get("tor.server_role") == "entry" and got.get("tor.server_is_entry") is True, f"connect entry: {got}")
    check(got.get("tor.fingerprint") == GUARD and got.get("tor.nickname") == "guardian", f"names: {got}")
    check(got.get("tor.client_role") == "none" and got.get("tor.client_is_exit") is False, f"client: {got}")
    check(got.get("tor.table_loads") == 1 and got.get("tor.table_age", 0) > 0, f"table fields: {got}")
    for event_type in (247, 249, 389):
        got = state.extract(accept_x("6.6.6.6", "10.0.0.5", event_type))
        check(got.get("tor.client_is_exit") is True and got.get("tor.remote_role") == "exit", f"{event_type}: {got}")
        check(got.get("tor.fingerprint") == EXIT_RELAY, f"{event_type} fingerprint: {got}")
    got = state.extract(accept_x("::ffff:6.6.6.6", "::ffff:10.0.0.5", 389))
    check(got.get("tor.client_is_exit") is True, f"v4-mapped: {got}")
    got = state.extract(accept_x("2a01::6", "2001:db8::1"))
    check(got.get("tor.client_role") == "exit" and got.get("tor.is_relay") is True, f"v6 accept: {got}")
    got = state.extract(connect_x("10.0.0.5", "7.7.7.7"))
    check(got.get("tor.server_role") == "entry,exit", f"entry,exit: {got}")
    got = state.extract(connect_x("10.0.0.5", "8.8.8.1"))
    check(got.get("tor.server_role") == "relay" and got.get("tor.server_is_relay") is True, f"relay: {got}")
    check(got.get("tor.server_is_entry") is False, f"relay not entry: {got}")
    got = state.extract(connect_x("10.0.0.5", "198.51.100.7"))
    check(got.get("tor.server_is_entry") is True and "tor.fingerprint" not in got, f"canary: {got}")
    got = state.extract(connect_x("10.0.0.5", "5.5.5.6"))
    check(got.get("tor.server_role") == "none" and "tor.fingerprint" not in got, f"miss: {got}")
    check(got.get("tor.is_relay") is False, f"miss is_relay: {got}")
    # first and last entries, and just outside them (binary search bounds)
    for address, role in (("5.5.5.4", "none"), ("198.51.100.8", "none"), ("2a01::4", "none"), ("2a01::7", "none")):
        got = state.extract(connect_x("10.0.0.5" if ":" not in address else "2001:db8::1", address))
        check(got.get("tor.server_role") == role, f"{address}: {got}")
    # events that are not ours, or not well formed: no value (or role none), never a crash
    unix = event(23, [struct.pack("<q", 0), b"\x01" + bytes(16), struct.pack("<q", 3), b""])
    got = state.extract(unix)
    check(got.get("tor.server_role") == "none" and got.get("tor.is_relay") is False, f"unix socket: {got}")
    check(set(state.extract(event(3, [b"x", b"y"]))) <= {"tor.table_loads", "tor.table_age"}, "other type")
    good = connect_x("10.0.0.5", "5.5.5.5")
    malformed = [
        good[:20] + bytes(6),  # header only, nparams 0
        good[:16] + struct.pack("<I", 10) + good[20:],  # len shorter than the header
        good[:22] + struct.pack("<I", 0xFFFFFFFF) + good[26:],  # absurd nparams
        good[:28] + struct.pack("<H", 0xFFFF) + good[30:],  # tuple length beyond the event
        good[:26] + struct.pack("<H", 0xFFF0) + good[28:],  # first parameter beyond the event
        event(23, [struct.pack("<q", 0)]),  # one parameter only
        event(23, [struct.pack("<q", 0), tuple_param("10.0.0.5", 1, "5.5.5.5", 2)[:-1], b"", b""]),  # short tuple
    ]
    for i, bad in enumerate(malformed):
        got = state.extract(bad)
        check("tor.server_is_entry" not in got or got["tor.server_is_entry"] is False, f"malformed {i}: {got}")
    # reloads: a corrupt table is refused (once), the old one kept; a good one is taken; a missing file is noted
    corrupt = bytearray(encode(TABLE_V2))
    corrupt[-1] ^= 1
    write_table(table, bytes(corrupt))
    got = state.extract(connect_x("10.0.0.5", "5.5.5.5"))
    check(got.get("tor.server_is_entry") is True and got.get("tor.table_loads") == 1, f"kept after corrupt: {got}")
    check("checksum mismatch" in state.last_error, f"last error: {state.last_error}")
    state.extract(connect_x("10.0.0.5", "5.5.5.5"))
    errors = [m for sev, m in state.logs if sev == 3]
    check(len(errors) == 1 and "keeping the loaded table" in errors[0], f"error logs: {state.logs}")
    write_table(table, encode(TABLE_V2))
    got = state.extract(connect_x("10.0.0.5", "9.9.9.9"))
    check(got.get("tor.server_is_entry") is True and got.get("tor.fingerprint") == NEW_RELAY, f"reloaded: {got}")
    check(got.get("tor.table_loads") == 2 and "tor.nickname" not in got, f"reloaded: {got}")
    got = state.extract(connect_x("10.0.0.5", "5.5.5.5"))
    check(got.get("tor.server_role") == "none", f"removed relay: {got}")
    os.unlink(table)
    state.extract(good)
    state.extract(good)
    check(sum("is gone" in m for _, m in state.logs) == 1, f"missing file: {state.logs}")
    check(state.extract(connect_x("10.0.0.5", "9.9.9.9")).get("tor.server_is_entry") is True, "kept while missing")
    write_table(table, encode(TABLE_V1))
    check(state.extract(good).get("tor.table_loads") == 3, "back")
    # a second state is independent (the framework may run one per thread)
    other = plugin.init(config(table, 3600))
    check(other.rc == SUCCESS and other.extract(good).get("tor.table_loads") == 1, "second state")
    other.close()
    state.close()
    return failures


if __name__ == "__main__":  # python -m tests.support.plugin_abi LIBRARY WORKDIR
    problems = run_scenario(Plugin(Path(sys.argv[1])), Path(sys.argv[2]))
    print(json.dumps(problems))
    sys.exit(1 if problems else 0)
