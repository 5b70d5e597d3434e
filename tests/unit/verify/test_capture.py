"""The capture writer (tor_sets.verify.capture), checked with the tests' strict reader (tests/support/scap_reader.py),
and that reader itself on real captures and crafted blocks: layout, round trips, errors (no engines)."""

from __future__ import annotations

import doctest
import gzip
import io
import itertools
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import DATA
from tests.support import scap_reader
from tests.support.scap_reader import (
    Block,
    ConnectionRecord,
    connections,
    decode_sockaddr,
    decode_socktuple,
    read_blocks,
    read_events,
    section_options,
)
from tor_sets.errors import CaptureError
from tor_sets.verify import capture
from tor_sets.verify.capture import MIN_GAP_NS, BlockType, Connection, Interface, Process, write_capture

CAPTURES = DATA / "captures"
T0 = 1_700_000_000_000_000_000
TOR = Process(pid=4242, comm="tor", exe="/usr/bin/tor", args=("-f", "/etc/tor/torrc"), cwd="/var/lib/tor")
CURL = Process(pid=77, comm="curl", exe="/usr/bin/curl")
PROCESSES = (TOR, CURL)


def make_connection(**overrides: Any) -> Connection:
    """A valid outbound IPv4 connection from the tor process; override any field."""
    fields: dict[str, Any] = {
        "kind": "connect",
        "client": ip_address("10.0.0.5"),
        "client_port": 40000,
        "server": ip_address("198.51.100.7"),
        "server_port": 9001,
        "ts_ns": T0,
        "pid": TOR.pid,
        "result": 0,
    }
    fields.update(overrides)
    return Connection(**fields)


MIXED = (
    make_connection(ts_ns=T0, result=0),
    make_connection(ts_ns=T0 + 100, client_port=40001, server=ip_address("198.51.100.8"), result=-115),
    make_connection(ts_ns=T0 + 200, client_port=40002, pid=CURL.pid, server_port=443, result=-111),
    make_connection(
        ts_ns=T0 + 300, client=ip_address("2001:db8::5"), server=ip_address("2001:db8:ff::1"), client_port=40003
    ),
    make_connection(
        kind="accept", ts_ns=T0 + 400, client=ip_address("203.0.113.4"), client_port=50000,
        server=ip_address("10.0.0.5"), server_port=9001,
    ),
    make_connection(
        kind="accept4", ts_ns=T0 + 500, client=ip_address("2001:db8:aa::4"), client_port=50001,
        server=ip_address("2001:db8::5"), server_port=9030,
    ),
)  # fmt: skip


def write(conns: tuple[Connection, ...] | list[Connection] = MIXED, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    kwargs.setdefault("processes", PROCESSES)
    write_capture(out, conns, **kwargs)
    return out.getvalue()


def expected_record(conn: Connection) -> ConnectionRecord:
    # connect exits carry the connect result, accept exits the accepted descriptor (4)
    result = conn.result if conn.kind == "connect" else 4
    return ConnectionRecord(
        conn.ts_ns, conn.pid, conn.kind, conn.client, conn.client_port, conn.server, conn.server_port, result
    )


# --- writer: layout -------------------------------------------------------------------------------------------


def test_header_blocks_come_first_in_order_with_their_documented_sizes() -> None:
    blocks = list(read_blocks(write(hostname="relay-7")))
    assert [b.type for b in blocks[:4]] == [BlockType.SHB, BlockType.MI, BlockType.IL_V2, BlockType.PL_V9]
    assert all(b.type == BlockType.EV_V2 for b in blocks[4:])
    shb, mi = blocks[0], blocks[1]
    assert (shb.offset, mi.offset) == (0, 28)  # SHB is 28 bytes in all
    assert struct.unpack("<IHHq", shb.body) == (0x1A2B3C4D, 1, 2, -1)
    assert len(mi.body) == 180
    assert mi.body[20:148].rstrip(b"\0") == b"relay-7"
    assert mi.body[148:] == bytes(32)


def test_every_event_block_is_framed_as_ev_v2() -> None:
    data = write()
    for block in read_blocks(data):
        if block.type != BlockType.EV_V2:
            continue
        cpuid, _ts, _tid, length, _etype, nparams = struct.unpack_from("<HQQIHI", block.body)
        lens = struct.unpack_from(f"<{nparams}H", block.body, 28)
        assert cpuid == 0
        assert length == 26 + 2 * nparams + sum(lens)
        total = len(block.body) + 12
        assert total == (8 + 2 + length + 4 + 3) & ~3
        assert data[block.offset + total - 4 : block.offset + total] == struct.pack("<I", total)


def test_outbound_connection_is_socket_connect_close_around_its_timestamp() -> None:
    conn = make_connection(ts_ns=T0 + 50, result=-115)
    events = list(read_events(write([conn])))
    assert [e.type for e in events] == [18, 19, 22, 23, 4, 5]
    assert [e.ts_ns - conn.ts_ns for e in events] == [-5, -4, -1, 0, 1, 2]
    assert {e.tid for e in events} == {TOR.pid}
    socket_e, socket_x, connect_e, connect_x, close_e, close_x = events
    assert socket_e.params == (struct.pack("<I", 2), struct.pack("<I", 1), struct.pack("<I", 0))
    fd = socket_x.params[0]
    assert connect_e.params[0] == fd and close_e.params[0] == fd
    assert decode_sockaddr(connect_e.params[1]) == (conn.server, conn.server_port)
    assert struct.unpack("<q", connect_x.params[0]) == (-115,)
    assert decode_socktuple(connect_x.params[1]) == (conn.client, 40000, conn.server, 9001)
    assert len(connect_x.params) == 2  # the legacy layout
    assert close_x.params == (struct.pack("<q", 0),)


def test_ipv6_socket_uses_domain_10() -> None:
    conn = make_connection(client=ip_address("2001:db8::5"), server=ip_address("2001:db8::9"))
    socket_e = next(read_events(write([conn])))
    assert socket_e.params[0] == struct.pack("<I", 10)


@pytest.mark.parametrize(("kind", "types", "enter_params"), [
    ("accept", [246, 247, 4, 5], ()),
    ("accept4", [248, 249, 4, 5], (struct.pack("<i", 0),)),
])  # fmt: skip
def test_inbound_connection_is_accept_then_close(kind: str, types: list[int], enter_params: tuple[bytes]) -> None:
    conn = make_connection(kind=kind, client=ip_address("203.0.113.4"), server=ip_address("10.0.0.5"))
    events = list(read_events(write([conn])))
    assert [e.type for e in events] == types
    assert [e.ts_ns - conn.ts_ns for e in events] == [-1, 0, 1, 2]
    enter, exit_, close_e, _ = events
    assert enter.params == enter_params
    assert exit_.params[0] == close_e.params[0]  # the accepted descriptor is the one closed
    assert decode_socktuple(exit_.params[1]) == (conn.client, conn.client_port, conn.server, conn.server_port)
    assert exit_.params[2:] == (b"\0", struct.pack("<I", 0), struct.pack("<I", 128))


def test_descriptor_is_closed_before_the_next_connection_reuses_it() -> None:
    open_fds: dict[int, set[bytes]] = {}
    for event in read_events(write()):
        fds = open_fds.setdefault(event.tid, set())
        if event.type in (19, 247, 249):  # socket / accept exits create the descriptor
            assert event.params[0] not in fds
            fds.add(event.params[0])
        elif event.type == 4:
            fds.remove(event.params[0])
    assert all(not fds for fds in open_fds.values())


def test_timestamps_increase_across_the_whole_file() -> None:
    stamps = [e.ts_ns for e in read_events(write())]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def parse_process_entries(body: bytes) -> list[dict[str, Any]]:
    """A small PL_V9 parser: the fields this writer sets."""
    entries = []
    pos = 0
    while pos + 4 <= len(body) and (size := struct.unpack_from("<I", body, pos)[0]):
        entry = body[pos : pos + size]
        tid, pid, ptid, sid, vpgid = struct.unpack_from("<5q", entry, 4)
        at = 44
        strings = []
        for _ in range(5):  # comm, exe, exepath, args, cwd
            (n,) = struct.unpack_from("<H", entry, at)
            strings.append(entry[at + 2 : at + 2 + n])
            at += 2 + n
        at += 8 + 4 * 6 + 16  # fdlimit, flags uid gid vmsize vmrss vmswap, pfmajor pfminor
        (env_len,) = struct.unpack_from("<H", entry, at)
        at += 2 + env_len
        vtid, vpid = struct.unpack_from("<2q", entry, at)
        at += 16
        (cg_len,) = struct.unpack_from("<H", entry, at)
        at += 2 + cg_len
        (root_len,) = struct.unpack_from("<H", entry, at)
        root = entry[at + 2 : at + 2 + root_len]
        assert at + 2 + root_len == size  # entry_len counts itself and ends after root
        entries.append(dict(tid=tid, pid=pid, ptid=ptid, sid=sid, vpgid=vpgid, strings=strings, vtid=vtid,
                            vpid=vpid, root=root))  # fmt: skip
        pos += size
    return entries


def test_process_list_has_one_v9_entry_per_process() -> None:
    pl = next(b for b in read_blocks(write()) if b.type == BlockType.PL_V9)
    entries = parse_process_entries(pl.body)
    assert [e["pid"] for e in entries] == [TOR.pid, CURL.pid]
    tor = entries[0]
    assert tor["tid"] == tor["vtid"] == tor["vpid"] == TOR.pid
    assert tor["strings"] == [b"tor", b"/usr/bin/tor", b"/usr/bin/tor", b"-f\0/etc/tor/torrc\0", b"/var/lib/tor"]
    assert tor["root"] == b"/"


def il_entries(block: Block) -> list[bytes]:
    """The IL_V2 entries of a block, verbatim (each ``u32 entry_len`` not counting itself)."""
    entries = []
    pos = 0
    while pos + 4 <= len(block.body) and (size := struct.unpack_from("<I", block.body, pos)[0]):
        entries.append(block.body[pos : pos + 4 + size])
        pos += 4 + size
    return entries


def real_interface_entries() -> list[bytes]:
    return il_entries(next(b for b in read_blocks(CAPTURES / "libs_single_ipv6_conn.scap") if b.type == 0x219))


def interface_entries(*interfaces: Interface) -> list[bytes]:
    return il_entries(next(b for b in read_blocks(write(interfaces=interfaces)) if b.type == BlockType.IL_V2))


def test_interface_entries_match_a_real_capture_byte_for_byte() -> None:
    real = real_interface_entries()
    mine = interface_entries(
        Interface("enp0s3", ip_address("10.0.2.15"), 24),
        Interface("lo", ip_address("2001:db8::4"), 128),
        Interface("enp0s3", ip_address("fe80::a00:27ff:fe19:228f"), 64),
    )
    assert mine[0] in real  # IPv4: address, netmask, broadcast
    assert mine[1] in real  # IPv6: address, netmask, zero broadcast
    assert mine[2] in real


def test_empty_interface_list_still_writes_the_block() -> None:
    blocks = list(read_blocks(write(interfaces=())))
    assert blocks[2].type == BlockType.IL_V2 and blocks[2].body == b""


def test_output_is_deterministic_and_counts_events() -> None:
    out = io.BytesIO()
    count = write_capture(out, MIXED, processes=PROCESSES)
    assert count == 4 * 6 + 2 * 4
    assert out.getvalue() == write()


def test_many_connections_span_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "_CHUNK_CONNECTIONS", 3)
    conns = [make_connection(ts_ns=T0 + 10 * i, client_port=1000 + i) for i in range(10)]
    out = io.BytesIO()
    assert write_capture(out, iter(conns), processes=PROCESSES) == 60
    assert [r.client_port for r in connections(out.getvalue())] == list(range(1000, 1010))


# --- writer: round trip -------------------------------------------------------------------------------------


def test_round_trip_through_the_reader() -> None:
    assert list(connections(write())) == [expected_record(c) for c in MIXED]


def test_gzip_output_round_trips_and_is_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.scap"
    write_capture(path, MIXED, processes=PROCESSES, compress=True)
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert gzip.decompress(data) == write()
    assert list(connections(path)) == list(connections(data)) == [expected_record(c) for c in MIXED]


def test_path_and_bytes_sources_agree(tmp_path: Path) -> None:
    path = tmp_path / "x.scap"
    assert write_capture(path, MIXED, processes=PROCESSES) == 32
    assert path.read_bytes() == write()
    assert list(read_events(path)) == list(read_events(path.read_bytes()))
    assert [p.name for p in tmp_path.iterdir()] == ["x.scap"]  # no temporary file left behind


addresses_v4 = st.integers(0, 2**32 - 1).map(IPv4Address)
addresses_v6 = st.integers(0, 2**128 - 1).map(IPv6Address)


@st.composite
def connection_lists(draw: st.DrawFn) -> list[Connection]:
    conns = []
    ts = draw(st.integers(5, 2**40))
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["connect", "accept", "accept4"]))
        family = draw(st.sampled_from([addresses_v4, addresses_v6]))
        result = draw(st.sampled_from([0, -115, -111, -113])) if kind == "connect" else 0
        conns.append(
            Connection(
                kind=kind, client=draw(family), client_port=draw(st.integers(0, 65535)), server=draw(family),
                server_port=draw(st.integers(0, 65535)), ts_ns=ts, pid=draw(st.sampled_from([TOR.pid, CURL.pid])),
                result=result,
            )
        )  # fmt: skip
        ts += draw(st.integers(MIN_GAP_NS, 10**9))
    return conns


@settings(max_examples=60, deadline=None)
@given(connection_lists())
def test_round_trip_property(conns: list[Connection]) -> None:
    assert list(connections(write(conns))) == [expected_record(c) for c in conns]


# --- writer: errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conns", "message"), [
    ([make_connection(ts_ns=T0), make_connection(ts_ns=T0)], "at least 10 ns after"),
    ([make_connection(ts_ns=T0), make_connection(ts_ns=T0 - 100)], "at least 10 ns after"),
    ([make_connection(ts_ns=T0), make_connection(ts_ns=T0 + MIN_GAP_NS - 1)], "at least 10 ns after"),
    ([make_connection(ts_ns=4)], "ts_ns must be an integer from 5"),
    ([make_connection(ts_ns=2**64)], "ts_ns must be an integer"),
    ([make_connection(pid=9999)], "pid 9999 is not one of the processes"),
    ([make_connection(server=ip_address("2001:db8::1"))], "families differ"),
    ([make_connection(client="10.0.0.5")], "must be IPv4Address or IPv6Address"),
    ([make_connection(server_port=65536)], "ports must be integers from 0 to 65535"),
    ([make_connection(client_port=-1)], "ports must be integers"),
    ([make_connection(kind="accept", result=-11)], "only connect takes a result"),
    ([make_connection(result=3)], "must be 0 or a negative errno"),
    ([make_connection(kind="listen")], "unknown kind 'listen'"),
    ([], "no connections to write"),
])  # fmt: skip
def test_invalid_connections_are_refused(conns: list[Connection], message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        write(conns)


@pytest.mark.parametrize(("processes", "message"), [
    ((TOR, replace(CURL, pid=TOR.pid)), "process ids must be unique"),
    ((replace(TOR, comm="tor-browser-launcher"),), "comm 'tor-browser-launcher' must be 1 to 15 bytes"),
    ((replace(TOR, comm=""),), "must be 1 to 15 bytes"),
    ((replace(TOR, cwd="/" * 2000),), "cwd is 2000 bytes"),
    ((replace(TOR, pid=0),), "must be positive"),
])  # fmt: skip
def test_invalid_processes_are_refused(processes: tuple[Process, ...], message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        write([make_connection()], processes=processes)


def test_invalid_interface_and_hostname_are_refused() -> None:
    with pytest.raises(CaptureError, match="bad prefix length 33"):
        write(interfaces=(Interface("eth0", ip_address("10.0.0.5"), 33),))
    with pytest.raises(CaptureError, match="hostname is 200 bytes"):
        write(hostname="h" * 200)


def test_failed_write_to_a_path_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "x.scap"
    path.write_bytes(b"previous")
    with pytest.raises(CaptureError, match="at least 10 ns"):
        write_capture(path, [make_connection(), make_connection()], processes=PROCESSES)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["x.scap"]


def test_unwritable_destination_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot write capture") as info:
        write_capture(tmp_path / "missing" / "x.scap", MIXED, processes=PROCESSES)
    assert isinstance(info.value.__cause__, OSError)


# --- reader: real captures ----------------------------------------------------------------------------------

REAL = {
    # name: (block count, event blocks, event block type, first four block types, connect/accept exits with an
    # IPv4/IPv6 tuple); counted independently of this reader, and 123 exits is what PROVENANCE.md records
    "falco_connect_localhost.scap": (563, 374, 0x204, [0x0A0D0D0A, 0x201, 0x205, 0x206], 1),
    "falco_ping_sendto.scap": (1667, 1526, 0x216, [0x0A0D0D0A, 0x201, 0x219, 0x220], 0),
    "inspect_502Error.scap": (22390, 22381, 0x204, [0x0A0D0D0A, 0x201, 0x205, 0x206], 123),
    "libs_curl_google.scap": (1595, 1536, 0x204, [0x0A0D0D0A, 0x201, 0x205, 0x206], 2),
    "libs_curl_google_comments.scap": (1595, 1536, 0x204, [0x0A0D0D0A, 0x201, 0x205, 0x206], 2),
    "libs_single_ipv6_conn.scap": (1887, 1728, 0x216, [0x0A0D0D0A, 0x201, 0x219, 0x220], 2),
    "libs_test_ipv6_client.scap": (389, 326, 0x204, [0x0A0D0D0A, 0x201, 0x205, 0x206], 2),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_reader_parses_every_real_capture(name: str) -> None:
    n_blocks, n_events, event_block, first_types, n_connections = REAL[name]
    path = CAPTURES / name
    blocks = list(read_blocks(path))
    assert len(blocks) == n_blocks
    assert [b.type for b in blocks[:4]] == first_types
    assert sum(b.type == event_block for b in blocks) == n_events
    raw = path.read_bytes()
    size = len(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    assert blocks[-1].offset + len(blocks[-1].body) + 12 == size  # the blocks tile the whole file
    events = list(read_events(path))
    assert len(events) == n_events
    assert all(a.ts_ns <= b.ts_ns for a, b in itertools.pairwise(events))
    assert len(list(connections(path))) == n_connections


def test_real_capture_v1_events_decode_to_known_values() -> None:
    # falco_connect_localhost: curl's non-blocking connect to 127.0.0.1:80 (what sysdig prints for this file)
    (record,) = connections(CAPTURES / "falco_connect_localhost.scap")
    assert record == ConnectionRecord(
        1522704423470627540, 31699, "connect", IPv4Address("127.0.0.1"), 47192, IPv4Address("127.0.0.1"), 80, -115
    )
    # this 2018 capture's connect enter has only the descriptor (sysdig: "connect > fd=4(<4>)"): the version-1
    # block has no parameter count, so the reader must work it out from the lengths
    (enter,) = read_events(CAPTURES / "falco_connect_localhost.scap", types={22})
    assert enter.params == (struct.pack("<q", 4),)


def test_real_capture_v2_ipv6_accept_and_connect() -> None:
    records = list(connections(CAPTURES / "libs_single_ipv6_conn.scap"))
    assert [(r.kind, str(r.client), r.client_port, str(r.server), r.server_port) for r in records] == [
        ("accept", "2001:db8::4", 54405, "2001:db8::3", 1234),
        ("connect", "2001:db8::4", 54405, "2001:db8::3", 1234),
    ]


def test_section_header_options_are_read() -> None:
    shb = next(read_blocks(CAPTURES / "libs_curl_google_comments.scap"))
    options = section_options(shb)
    assert options[0] == (1, b"File-level comment")
    assert options[1][0] == 4 and options[1][1].startswith(b"Editcap (Wireshark) 4.5.0")
    assert section_options(next(read_blocks(CAPTURES / "libs_curl_google.scap"))) == ()


def test_options_do_not_change_the_events() -> None:
    plain = list(read_events(CAPTURES / "libs_curl_google.scap"))
    assert list(read_events(CAPTURES / "libs_curl_google_comments.scap")) == plain


# --- reader: older and rarer block types --------------------------------------------------------------------


def ev_block(block_type: int, ts: int, tid: int, etype: int, params: list[bytes], *, v1: bool = False,
             flags: int | None = None, width: int = 2) -> bytes:  # fmt: skip
    lens = b"".join(struct.pack("<I" if width == 4 else "<H", len(p)) for p in params)
    header_len = 22 if v1 else 26
    length = header_len + len(lens) + sum(map(len, params))
    header = struct.pack("<QQIH", ts, tid, length, etype) + (b"" if v1 else struct.pack("<I", len(params)))
    body = struct.pack("<H", 0) + (b"" if flags is None else struct.pack("<I", flags)) + header + lens
    body += b"".join(params)
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", block_type, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


SHB = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 2, -1, 28)
TUPLE = bytes([2, 10, 0, 0, 1]) + struct.pack("<H", 5555) + bytes([192, 0, 2, 1]) + struct.pack("<H", 443)


def test_v1_and_flagged_event_blocks_are_decoded() -> None:
    res = struct.pack("<q", 0)
    data = SHB + b"".join((
        ev_block(0x204, 10, 1, 23, [res, TUPLE], v1=True),
        ev_block(0x208, 20, 2, 23, [res, TUPLE], v1=True, flags=7),
        ev_block(0x217, 30, 3, 23, [res, TUPLE], flags=7),
        ev_block(0x8010ABCD, 40, 4, 5, [], v1=True),
        ev_block(0x221, 50, 5, 402, [b"x" * 70000, b"y"], width=4),  # asyncevent: u32 lengths, large block
    ))  # fmt: skip
    events = list(read_events(data))
    assert [(e.ts_ns, e.tid, e.type) for e in events] == [(10, 1, 23), (20, 2, 23), (30, 3, 23), (40, 4, 5),
                                                          (50, 5, 402)]  # fmt: skip
    assert events[0].params == events[1].params == events[2].params == (res, TUPLE)
    assert events[3].params == ()
    assert events[4].params == (b"x" * 70000, b"y")
    assert [r.ts_ns for r in connections(data)] == [10, 20, 30]


def test_v1_notification_events_with_their_known_length_error_are_decoded() -> None:
    # old captures record notification (280) events 3 bytes longer than they are; libscap subtracts 3
    block = bytearray(ev_block(0x204, 10, 1, 280, [struct.pack("<Q", 9), b"note\0"], v1=True))
    (length,) = struct.unpack_from("<I", block, 8 + 2 + 16)
    struct.pack_into("<I", block, 8 + 2 + 16, length + 3)
    (event,) = read_events(SHB + bytes(block))
    assert event.params == (struct.pack("<Q", 9), b"note\0")


def test_types_filter_skips_other_events() -> None:
    assert {e.type for e in read_events(write(), types={23})} == {23}
    assert len(list(read_events(write(), types={23}))) == 4


def test_unknown_block_types_are_passed_through() -> None:
    odd = struct.pack("<II", 0x999, 16) + b"abcd" + struct.pack("<I", 16)
    data = write()
    data = data[:28] + odd + data[28:]
    blocks = list(read_blocks(data))
    assert (blocks[1].type, blocks[1].offset, blocks[1].body) == (0x999, 28, b"abcd")
    assert list(connections(data)) == list(connections(write()))


# --- reader: errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 7, 27, 28 + 5, 28 + 100, -1, -4, -30])
def test_truncated_files_are_refused(cut: int) -> None:
    data = write()
    with pytest.raises(CaptureError, match="truncated"):
        list(read_blocks(data[:cut]))


def test_truncated_gzip_is_refused() -> None:
    data = gzip.compress(write())
    with pytest.raises(CaptureError, match="cannot read capture"):
        list(read_blocks(data[: len(data) // 2]))


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty file"),
    (b"PK\x03\x04" + bytes(40), "not a capture file"),
    (SHB.replace(struct.pack("<I", 0x1A2B3C4D), struct.pack("<I", 0xDEADBEEF)), "bad section header magic"),
    (SHB.replace(struct.pack("<I", 0x1A2B3C4D), struct.pack(">I", 0x1A2B3C4D)), "big-endian"),
    (SHB.replace(struct.pack("<HH", 1, 2), struct.pack("<HH", 2, 0)), "unsupported capture format version 2"),
    (SHB[:-4] + struct.pack("<I", 32), "has trailer 32, header 28"),
    (SHB + struct.pack("<II", 0x216, 13) + bytes(8), "bad length 13"),
    (SHB + struct.pack("<II", 0x216, 4) + bytes(8), "bad length 4"),
    (SHB + b"garbage!" * 4, "bad length"),
])  # fmt: skip
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        list(read_blocks(data))


def test_event_whose_lengths_disagree_is_refused() -> None:
    good = ev_block(0x216, 10, 1, 23, [struct.pack("<q", 0), TUPLE])
    bad = good[:38] + struct.pack("<H", 20) + good[40:]  # first parameter claims 20 bytes instead of 8
    with pytest.raises(CaptureError, match="parameters take"):
        list(read_events(SHB + bad))


def test_malformed_section_options_are_refused() -> None:
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 2, -1) + struct.pack("<HH", 1, 40) + b"short"
    body += b"\0" * (-len(body) % 4)
    block = struct.pack("<II", 0x0A0D0D0A, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    with pytest.raises(CaptureError, match="option 1 .* overruns"):
        list(read_blocks(block))


def test_missing_file_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot open capture") as info:
        list(read_blocks(tmp_path / "nope.scap"))
    assert isinstance(info.value.__cause__, FileNotFoundError)


# --- decoders -----------------------------------------------------------------------------------------------


def test_socktuple_and_sockaddr_decoding() -> None:
    v6 = bytes([10]) + IPv6Address("2001:db8::1").packed + struct.pack("<H", 1) + IPv6Address("::1").packed
    v6 += struct.pack("<H", 2)
    assert decode_socktuple(v6) == (IPv6Address("2001:db8::1"), 1, IPv6Address("::1"), 2)
    assert decode_socktuple(TUPLE) == (IPv4Address("10.0.0.1"), 5555, IPv4Address("192.0.2.1"), 443)
    assert decode_socktuple(b"") is None
    assert decode_socktuple(bytes([1]) + bytes(16) + b"/run/x.sock\0") is None  # unix socket
    assert decode_sockaddr(bytes([10]) + IPv6Address("::1").packed + struct.pack("<H", 80)) == (
        IPv6Address("::1"), 80)  # fmt: skip
    assert decode_sockaddr(bytes([1]) + b"/run/x.sock\0") is None
    with pytest.raises(CaptureError, match="socktuple of family 2 has 12 bytes"):
        decode_socktuple(TUPLE[:-1])
    with pytest.raises(CaptureError, match="sockaddr of family 10 has 18 bytes"):
        decode_sockaddr(bytes([10]) + bytes(17))


def test_docstring_examples() -> None:
    result = doctest.testmod(scap_reader)
    assert result.attempted >= 2 and result.failed == 0
