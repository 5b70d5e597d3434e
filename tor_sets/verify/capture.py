"""Capture files (.scap) for libsinsp engines: a fast writer of synthetic connections.

Bytes out: nothing here knows about sysdig or Falco. The format is the Falco libraries' savefile
(falcosecurity/libs ``userspace/libscap/scap_savefile.h``, read by ``userspace/libscap/engine/savefile/``); every
block is ``u32 type, u32 total_len, body, zero pad to 4, u32 total_len``. docs/verify.md shows what a scenario's
capture holds.

Exports :class:`Process`, :class:`Interface`, :class:`Connection` and :func:`write_capture`, which writes a
section header, machine info, an interface list (IL_V2), a process list (PL_V9) and then, per connection, the
syscall events a kernel would have recorded (``socket``/``connect``/``close`` for outbound,
``accept``/``accept4``/``close`` for inbound) in EV_V2 blocks with the legacy parameter layouts that both the
2022 and the current readers accept; and the format's numbers, :class:`BlockType` and :data:`EVENT_TYPES`.

Errors are :class:`tor_sets.errors.CaptureError` with a one-line message; ``OSError`` is translated once and
chained.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeAlias

from tor_sets.errors import CaptureError

__all__ = [
    "EVENT_TYPES",
    "MIN_GAP_NS",
    "BlockType",
    "Connection",
    "ConnectionKind",
    "Interface",
    "Process",
    "write_capture",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
ConnectionKind: TypeAlias = Literal["connect", "accept", "accept4"]


class BlockType:
    """Block type numbers of the capture format (``scap_savefile.h``)."""

    SHB = 0x0A0D0D0A
    MI = 0x201
    PL_V1 = 0x202
    FDL = 0x203
    EV = 0x204
    IL = 0x205
    UL = 0x206
    PL_V2 = 0x207
    EVF = 0x208
    PL_V3 = 0x209
    PL_V4 = 0x210
    PL_V5 = 0x211
    PL_V6 = 0x212
    PL_V7 = 0x213
    PL_V8 = 0x214
    PL_V9 = 0x215
    EV_V2 = 0x216
    EVF_V2 = 0x217
    FDL_V2 = 0x218
    IL_V2 = 0x219
    UL_V2 = 0x220
    EV_V2_LARGE = 0x221
    EVF_V2_LARGE = 0x222
    # numbers used before the library's first release, still accepted by libscap
    EV_INT = 0x8010ABCD


#: event type numbers (``ppm_event_code``) this module writes or decodes
EVENT_TYPES: dict[str, int] = {
    "close_e": 4,
    "close_x": 5,
    "socket_e": 18,
    "socket_x": 19,
    "connect_e": 22,
    "connect_x": 23,
    "accept_old_e": 26,
    "accept_old_x": 27,
    "accept4_old_e": 56,
    "accept4_old_x": 57,
    "accept_e": 246,
    "accept_x": 247,
    "accept4_e": 248,
    "accept4_x": 249,
    "accept4_6_e": 388,
    "accept4_6_x": 389,
}

#: smallest allowed distance between the ``ts_ns`` of two connections given to :func:`write_capture`
MIN_GAP_NS = 10


_SHB_MAGIC = 0x1A2B3C4D
_PPM_AF_INET = 2
_PPM_AF_INET6 = 10


@dataclass(frozen=True, slots=True)
class Process:
    """A single-threaded process of the capture's process list (its one thread has ``tid == pid``).

    Attributes:
        pid: process id (> 0).
        comm: command name, what ``proc.name`` shows; at most 15 bytes, like the kernel's.
        exe: executable, recorded as both ``proc.exe`` and ``proc.exepath``.
        args: command-line arguments after the executable.
        cwd: working directory.
    """

    pid: int
    comm: str
    exe: str
    args: tuple[str, ...] = ()
    cwd: str = "/"


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface address of the capturing host; decides ``fd.lip``/``fd.rip``."""

    name: str
    address: IPAddress
    prefixlen: int


@dataclass(frozen=True, slots=True)
class Connection:
    """One TCP connection to write, labelled by the timestamp of its exit event.

    Attributes:
        kind: ``connect`` (outbound) or ``accept``/``accept4`` (inbound).
        client: the connecting side (the local host for ``connect``, the remote peer for accepts).
        client_port: client port.
        server: the listening side.
        server_port: server port.
        ts_ns: timestamp of the connect/accept exit event, the one carrying the socket tuple.
        pid: the process (one of ``processes``) doing the syscall.
        result: connect only: 0, or a negative errno such as -115 (EINPROGRESS) or -111 (ECONNREFUSED).
    """

    kind: ConnectionKind
    client: IPAddress
    client_port: int
    server: IPAddress
    server_port: int
    ts_ns: int
    pid: int
    result: int = 0


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_BLOCK_HEADER = struct.Struct("<II")

_LEAD_NS = 5  # the socket enter event comes this long before ts_ns
_OUTBOUND_FD = 5  # socket of every outbound connection, closed before the next one
_ACCEPTED_FD = 4  # descriptor accept returns (a listening socket would hold 3)
_CHUNK_CONNECTIONS = 8192  # connections packed per write
_TASK_COMM_LEN = 15  # bytes of a command name the kernel keeps
_SCAP_MAX_PATH_SIZE = 1024
_SCAP_MAX_ARGS_SIZE = 4096


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _block(block_type: int, body: bytes) -> bytes:
    total = _align4(8 + len(body) + 4)
    return b"".join(
        (
            _BLOCK_HEADER.pack(block_type, total),
            body,
            b"\0" * (total - 12 - len(body)),
            _U32.pack(total),
        )
    )


@dataclass(frozen=True, slots=True)
class _Var:
    """A variable field of an event template, as a ``struct`` code (``Q``, ``4s`` ...)."""

    code: str

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.code)


_Part: TypeAlias = bytes | _Var


def _event_parts(event_type: int, tid: int, params: Sequence[Sequence[_Part]]) -> list[_Part]:
    """Lay out one EV_V2 block of thread ``tid`` as constant bytes and variable fields.

    The block's ``ts`` is variable (``Q``); each parameter is a sequence of parts (a socket tuple, say, is a
    constant family byte and four variable fields).
    """
    sizes = [sum(len(p) if isinstance(p, bytes) else p.size for p in param) for param in params]
    length = 26 + 2 * len(params) + sum(sizes)
    total = _align4(8 + 2 + length + 4)
    parts: list[_Part] = [_BLOCK_HEADER.pack(BlockType.EV_V2, total) + _U16.pack(0), _Var("Q")]
    parts.append(struct.pack("<QIHI", tid, length, event_type, len(params)) + b"".join(_U16.pack(s) for s in sizes))
    for param in params:
        parts.extend(param)
    parts.append(b"\0" * (total - 8 - 2 - length - 4) + _U32.pack(total))
    return parts


@dataclass(frozen=True, slots=True)
class _Template:
    """A connection's events compiled into one struct: runs of constants become single ``Ns`` fields.

    ``packer`` takes the constant runs and the variable fields interleaved as the layout has them (see the
    template functions); ``events`` counts the event blocks.
    """

    packer: struct.Struct
    constants: tuple[bytes, ...]
    events: int


def _compile(events: Sequence[list[_Part]], layout: str) -> _Template:
    """Compile event parts; ``layout`` names the expected sequence (``C`` constant run, ``v`` variable)."""
    code = ["<"]
    constants: list[bytes] = []
    seen = []
    pending = b""
    for part in (part for event in events for part in event):
        if isinstance(part, bytes):
            pending += part
            continue
        if pending:
            code.append(f"{len(pending)}s")
            constants.append(pending)
            seen.append("C")
            pending = b""
        code.append(part.code)
        seen.append("v")
    code.append(f"{len(pending)}s")
    constants.append(pending)
    seen.append("C")
    if "".join(seen) != layout:  # pragma: no cover - guards the hand-written pack calls
        raise AssertionError(f"template layout {''.join(seen)} is not {layout}")
    return _Template(struct.Struct("".join(code)), tuple(constants), len(events))


def _address_fields(family: int) -> list[_Part]:
    return [_Var("4s" if family == 4 else "16s"), _Var("H")]


def _outbound_template(family: int, tid: int) -> _Template:
    """socket E/X, connect E/X, close E/X of one outbound connection on socket :data:`_OUTBOUND_FD`.

    Variable fields in order: ts (socket E), ts (socket X), ts, server address, server port (connect E), ts,
    result, client address, client port, server address, server port (connect X), ts (close E), ts (close X).
    """
    domain = 2 if family == 4 else 10
    af = bytes([_PPM_AF_INET if family == 4 else _PPM_AF_INET6])
    address = _address_fields(family)
    fd = _I64.pack(_OUTBOUND_FD)
    return _compile(
        [
            _event_parts(EVENT_TYPES["socket_e"], tid, [[_U32.pack(domain)], [_U32.pack(1)], [_U32.pack(0)]]),
            _event_parts(EVENT_TYPES["socket_x"], tid, [[fd]]),
            _event_parts(EVENT_TYPES["connect_e"], tid, [[fd], [af, *address]]),
            _event_parts(EVENT_TYPES["connect_x"], tid, [[_Var("q")], [af, *address, *address]]),
            _event_parts(EVENT_TYPES["close_e"], tid, [[fd]]),
            _event_parts(EVENT_TYPES["close_x"], tid, [[_I64.pack(0)]]),
        ],
        "CvCvCvCvvCvCvCvvvvCvCvC",
    )


def _inbound_template(family: int, tid: int, accept4: bool) -> _Template:
    """accept(4) E/X, close E/X of one inbound connection accepted as :data:`_ACCEPTED_FD`.

    Variable fields in order: ts (accept E), ts, client address, client port, server address, server port
    (accept X), ts (close E), ts (close X).
    """
    af = bytes([_PPM_AF_INET if family == 4 else _PPM_AF_INET6])
    address = _address_fields(family)
    fd = _I64.pack(_ACCEPTED_FD)
    queue: list[list[_Part]] = [[b"\0"], [_U32.pack(0)], [_U32.pack(128)]]  # queuepct, queuelen, queuemax
    if accept4:
        enter = _event_parts(EVENT_TYPES["accept4_e"], tid, [[struct.pack("<i", 0)]])  # flags
        exit_type = EVENT_TYPES["accept4_x"]
    else:
        enter = _event_parts(EVENT_TYPES["accept_e"], tid, [])
        exit_type = EVENT_TYPES["accept_x"]
    return _compile(
        [
            enter,
            _event_parts(exit_type, tid, [[fd], [af, *address, *address], *queue]),
            _event_parts(EVENT_TYPES["close_e"], tid, [[fd]]),
            _event_parts(EVENT_TYPES["close_x"], tid, [[_I64.pack(0)]]),
        ],
        "CvCvCvvvvCvCvC",
    )


def _template(kind: ConnectionKind, family: int, tid: int) -> _Template:
    if kind == "connect":
        template = _outbound_template(family, tid)
        expected = _OUTBOUND_EVENTS
    else:
        template = _inbound_template(family, tid, accept4=kind == "accept4")
        expected = _INBOUND_EVENTS
    if template.events != expected:  # pragma: no cover - guards the event counts
        raise AssertionError(f"{kind} template has {template.events} events")
    return template


def _string(value: str, what: str, limit: int) -> bytes:
    data = value.encode()
    if len(data) > limit:
        raise CaptureError(f"{what} is {len(data)} bytes, more than the format's {limit}: {value[:40]!r}...")
    return _U16.pack(len(data)) + data


def _process_entry(process: Process) -> bytes:
    """One PL_V9 entry (``u32 entry_len`` including itself, then the thread's fields)."""
    pid = process.pid
    comm = process.comm.encode()
    if not comm or len(comm) > _TASK_COMM_LEN:
        raise CaptureError(f"process {pid}: comm {process.comm!r} must be 1 to {_TASK_COMM_LEN} bytes")
    args = "".join(arg + "\0" for arg in process.args)
    body = b"".join(
        (
            struct.pack("<qqqqq", pid, pid, 1, pid, pid),  # tid, pid, ptid, sid, vpgid
            _U16.pack(len(comm)) + comm,
            _string(process.exe, f"process {pid}: exe", _SCAP_MAX_PATH_SIZE),
            _string(process.exe, f"process {pid}: exepath", _SCAP_MAX_PATH_SIZE),
            _string(args, f"process {pid}: args", _SCAP_MAX_ARGS_SIZE),
            _string(process.cwd, f"process {pid}: cwd", _SCAP_MAX_PATH_SIZE),
            # fdlimit, flags, uid, gid, vmsize_kb, vmrss_kb, vmswap_kb, pfmajor, pfminor
            struct.pack("<QIIIIIIQQ", 1024, 0, 0, 0, 0, 0, 0, 0, 0),
            _U16.pack(0),  # env
            struct.pack("<qq", pid, pid),  # vtid, vpid
            _U16.pack(0),  # cgroups
            _U16.pack(1) + b"/",  # root
        )
    )
    return _U32.pack(4 + len(body)) + body


def _interface_entry(interface: Interface) -> bytes:
    """One IL_V2 entry (``u32 entry_len`` not including itself, type, name length, addresses, speed, name)."""
    name = interface.name.encode()
    if not name or len(name) > 0xFFFF:
        raise CaptureError(f"interface name {interface.name!r} is empty or too long")
    address = interface.address
    if isinstance(address, IPv4Address):
        try:
            network: IPv4Network | IPv6Network = IPv4Network((address, interface.prefixlen), strict=False)
        except ValueError as exc:
            raise CaptureError(f"interface {interface.name}: bad prefix length {interface.prefixlen}") from exc
        body = (
            struct.pack("<HH", 1, len(name))
            + address.packed
            + network.netmask.packed
            + network.broadcast_address.packed
        )
    else:
        try:
            network = IPv6Network((address, interface.prefixlen), strict=False)
        except ValueError as exc:
            raise CaptureError(f"interface {interface.name}: bad prefix length {interface.prefixlen}") from exc
        body = struct.pack("<HH", 2, len(name)) + address.packed + network.netmask.packed + bytes(16)
    body += struct.pack("<Q", 0) + name  # linkspeed, name
    return _U32.pack(len(body)) + body


def _header_blocks(processes: Sequence[Process], interfaces: Sequence[Interface], hostname: str) -> bytes:
    host = hostname.encode()
    if len(host) > 127:
        raise CaptureError(f"hostname is {len(host)} bytes, more than the format's 127")
    shb = _block(BlockType.SHB, struct.pack("<IHHq", _SHB_MAGIC, 1, 2, -1))
    # cpus, memory, max pid, hostname, 4 reserved u64
    mi = _block(BlockType.MI, struct.pack("<IQQ128s32x", 1, 8 << 30, 4194304, host))
    il = _block(BlockType.IL_V2, b"".join(_interface_entry(i) for i in interfaces))
    pl = _block(BlockType.PL_V9, b"".join(_process_entry(p) for p in processes))
    return shb + mi + il + pl


def _invalid(conn: Connection, previous_ts: int, tids: Collection[int]) -> CaptureError:
    """Explain why a connection the fast path refused is invalid (the slow path, run only on failure)."""
    where = f"connection at ts_ns {conn.ts_ns}"
    if not isinstance(conn.ts_ns, int) or not _LEAD_NS <= conn.ts_ns < 1 << 63:
        return CaptureError(f"{where}: ts_ns must be an integer from {_LEAD_NS} to 2**63-1")
    if conn.ts_ns - previous_ts < MIN_GAP_NS:
        return CaptureError(f"{where}: must come at least {MIN_GAP_NS} ns after the previous one ({previous_ts})")
    if conn.pid not in tids:
        return CaptureError(f"{where}: pid {conn.pid} is not one of the processes")
    if not isinstance(conn.client, IPv4Address | IPv6Address) or not isinstance(conn.server, IPv4Address | IPv6Address):
        return CaptureError(f"{where}: client and server must be IPv4Address or IPv6Address values")
    if conn.client.version != conn.server.version:
        return CaptureError(f"{where}: client and server address families differ")
    if not all(isinstance(p, int) and 0 <= p <= 0xFFFF for p in (conn.client_port, conn.server_port)):
        return CaptureError(f"{where}: ports must be integers from 0 to 65535")
    if conn.kind not in ("connect", "accept", "accept4"):
        return CaptureError(f"{where}: unknown kind {conn.kind!r}")
    if conn.kind != "connect" and conn.result != 0:
        return CaptureError(f"{where}: only connect takes a result, {conn.kind} got {conn.result}")
    return CaptureError(f"{where}: connect result {conn.result!r} must be 0 or a negative errno")


_OUTBOUND_EVENTS = 6
_INBOUND_EVENTS = 4


def _pack_connections(connections: Iterable[Connection], tids: Collection[int]) -> Iterator[tuple[bytes, int]]:
    """Yield (chunk of packed event blocks, number of events in it).

    This loop is the writer's hot path (a million connections should take a few seconds). Everything constant
    for a (kind, family, process) is compiled into a template once; the loop checks only what is cheap and
    lets ``struct`` range-check the rest; :func:`_invalid` explains any failure.
    """
    # (kind, address class, pid) -> (pack, constant runs...)
    templates: dict[tuple[str, type, int], tuple[Any, ...]] = {}
    families = {IPv4Address: 4, IPv6Address: 6}
    previous = _LEAD_NS - MIN_GAP_NS  # so the first connection needs ts_ns >= _LEAD_NS
    chunk: list[bytes] = []
    append = chunk.append
    outbound = inbound = 0
    last_client: object = None
    last_server: object = None
    last_cip = last_sip = b""
    for conn in connections:
        ts = conn.ts_ns
        client = conn.client
        server = conn.server
        kind = conn.kind
        result = conn.result
        cls = type(client)
        key = (kind, cls, conn.pid)
        template = templates.get(key)
        if template is None:
            if cls not in families or kind not in ("connect", "accept", "accept4") or conn.pid not in tids:
                raise _invalid(conn, previous, tids)
            compiled = _template(kind, families[cls], conn.pid)
            template = templates[key] = (compiled.packer.pack, *compiled.constants)
        if type(server) is not cls or ts - previous < MIN_GAP_NS or (result and (result > 0 or kind != "connect")):
            raise _invalid(conn, previous, tids)
        # the local side of most connections is the same address object: pack it once
        if client is not last_client:
            last_client, last_cip = client, client.packed
        if server is not last_server:
            last_server, last_sip = server, server.packed
        try:
            if kind == "connect":
                pack, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = template
                sport = conn.server_port
                append(
                    pack(
                        c0, ts - 5,  # socket E
                        c1, ts - 4,  # socket X
                        c2, ts - 1, c3, last_sip, sport,  # connect E
                        c4, ts, c5, result, c6, last_cip, conn.client_port, last_sip, sport,  # connect X
                        c7, ts + 1,  # close E
                        c8, ts + 2, c9,  # close X
                    )
                )  # fmt: skip
                outbound += 1
            else:
                pack, c0, c1, c2, c3, c4, c5 = template
                append(
                    pack(
                        c0, ts - 1,  # accept(4) E
                        c1, ts, c2, last_cip, conn.client_port, last_sip, conn.server_port,  # accept(4) X
                        c3, ts + 1,  # close E
                        c4, ts + 2, c5,  # close X
                    )
                )  # fmt: skip
                inbound += 1
        except struct.error as exc:
            raise _invalid(conn, previous, tids) from exc
        previous = ts
        if outbound + inbound == _CHUNK_CONNECTIONS:
            yield b"".join(chunk), outbound * _OUTBOUND_EVENTS + inbound * _INBOUND_EVENTS
            chunk.clear()
            outbound = inbound = 0
    if chunk:
        yield b"".join(chunk), outbound * _OUTBOUND_EVENTS + inbound * _INBOUND_EVENTS


def _write_stream(
    out: BinaryIO,
    connections: Iterable[Connection],
    processes: Sequence[Process],
    interfaces: Sequence[Interface],
    hostname: str,
    compress: bool,
) -> int:
    tids = {p.pid for p in processes}
    if len(tids) != len(processes):
        raise CaptureError("process ids must be unique")
    if any(not 0 < pid < 1 << 62 for pid in tids):
        raise CaptureError("process ids must be positive and below 2**62")
    zipped = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) if compress else None
    write = out.write if zipped is None else zipped.write
    try:
        write(_header_blocks(processes, interfaces, hostname))
        written = 0
        for data, count in _pack_connections(connections, tids):
            write(data)
            written += count
        if written == 0:
            raise CaptureError("no connections to write: engines refuse a capture without events")
    finally:
        if zipped is not None:
            zipped.close()
    return written


def write_capture(
    dest: Path | BinaryIO,
    connections: Iterable[Connection],
    *,
    processes: Sequence[Process],
    interfaces: Sequence[Interface] = (),
    hostname: str = "tor-sets",
    compress: bool = False,
) -> int:
    """Write a capture file in which each connection appears as the syscalls that made it.

    An outbound connection (``connect``) becomes ``socket`` enter/exit at ``ts_ns - 5``/``- 4``, ``connect``
    enter/exit at ``ts_ns - 1``/``ts_ns`` and ``close`` enter/exit at ``ts_ns + 1``/``+ 2``; an inbound one
    (``accept``/``accept4``) becomes the accept enter/exit at ``ts_ns - 1``/``ts_ns`` and the same ``close``
    pair, all on the thread of ``pid``. The socket is descriptor 5 for outbound and 4 for accepted
    connections, closed before the next connection starts. Engines sweep idle threads after about 30 s of
    event time, so keep a capture's timestamps within that.

    Args:
        dest: a path (written to a temporary file beside it, then renamed into place) or a binary stream.
        connections: the connections, ``ts_ns`` strictly increasing by at least :data:`MIN_GAP_NS`.
        processes: every process that appears in ``connections`` (the capture's process list).
        interfaces: the host's addresses, used by engines for ``fd.lip``/``fd.rip``.
        hostname: the machine-info host name.
        compress: gzip the file (level 1); engines read both.

    Returns:
        The number of events written.

    Raises:
        CaptureError: a connection or process is invalid, or the file cannot be written.
    """
    if not isinstance(dest, Path):
        try:
            return _write_stream(dest, connections, processes, interfaces, hostname, compress)
        except OSError as exc:
            raise CaptureError(f"cannot write capture: {exc.strerror or exc}") from exc
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            written = _write_stream(out, connections, processes, interfaces, hostname, compress)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CaptureError(f"cannot write capture {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
