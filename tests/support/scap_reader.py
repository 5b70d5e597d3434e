"""A strict reader of capture files (.scap), for the tests: they check what the writer wrote, and real captures.

TEST SUPPORT, not shipped: tor-sets itself only writes captures (:mod:`tor_sets.verify.capture`); the engines read
them. The format is the Falco libraries' savefile (falcosecurity/libs ``userspace/libscap/scap_savefile.h``).

Exports :func:`read_blocks` (plain or gzip, trailers checked, pcapng-style section header options),
:func:`section_options`, :func:`read_events` (EV/EVF blocks, versions 1 and 2, large-payload blocks),
:func:`decode_socktuple`, :func:`decode_sockaddr` and :func:`connections`, which decodes connect/accept/accept4
exit events into :class:`ConnectionRecord` values; :class:`Block` and :class:`Event`.

Errors are :class:`tor_sets.errors.CaptureError` with a one-line message; foreign errors (``OSError``, gzip,
zlib) are translated once and chained.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import NoReturn, TypeAlias

from tor_sets.errors import CaptureError
from tor_sets.verify.capture import EVENT_TYPES, BlockType, ConnectionKind, IPAddress

__all__ = [
    "Block",
    "ConnectionRecord",
    "Event",
    "connections",
    "decode_sockaddr",
    "decode_socktuple",
    "read_blocks",
    "read_events",
    "section_options",
]

Source: TypeAlias = Path | bytes

_SHB_MAGIC = 0x1A2B3C4D
_SHB_MAGIC_SWAPPED = 0x4D3C2B1A
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_BLOCK = 256 * 1024 * 1024  # no real block comes near; stops garbage from asking for gigabytes

# Event block flavours: (header length, flags before the header?)
_EVENT_BLOCKS: dict[int, tuple[int, bool]] = {
    BlockType.EV: (22, False),
    BlockType.EV_INT: (22, False),
    BlockType.EVF: (22, True),
    BlockType.EV_V2: (26, False),
    BlockType.EVF_V2: (26, True),
    BlockType.EV_V2_LARGE: (26, False),
    BlockType.EVF_V2_LARGE: (26, True),
}
# Events flagged EF_LARGE_PAYLOAD in the event table carry u32 parameter lengths instead of u16:
# pluginevent (322), container JSON 2 (324/325), asyncevent (402).
_LARGE_PAYLOAD_TYPES = frozenset({322, 324, 325, 402})
# Old (v1) captures record a wrong length for notification (280) and infrastructure (286) events; libscap
# subtracts 3 before it counts the parameters, and so do we.
_V1_LENGTH_FIXUP_TYPES = frozenset({280, 286})

_CONNECT_EXITS = frozenset({EVENT_TYPES["connect_x"]})
_ACCEPT_EXITS = frozenset({EVENT_TYPES["accept_old_x"], EVENT_TYPES["accept_x"]})
_ACCEPT4_EXITS = frozenset({EVENT_TYPES["accept4_old_x"], EVENT_TYPES["accept4_x"], EVENT_TYPES["accept4_6_x"]})

_PPM_AF_UNIX = 1
_PPM_AF_INET = 2
_PPM_AF_INET6 = 10


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_BLOCK_HEADER = struct.Struct("<II")


def _align4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True, slots=True)
class Block:
    """One block of a capture: its type, its offset in the uncompressed stream, and its body.

    The body is everything between the 8-byte header and the 4-byte trailer, padding included.
    """

    type: int
    offset: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Event:
    """One syscall event: timestamp, thread, event type number and raw parameter values."""

    ts_ns: int
    tid: int
    type: int
    params: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """A connect/accept/accept4 exit event with an IPv4 or IPv6 socket tuple, as read from a capture.

    Attributes:
        ts_ns: event timestamp.
        tid: thread id.
        kind: ``connect``, ``accept`` or ``accept4``.
        client: tuple source address (``fd.cip``).
        client_port: ``fd.cport``.
        server: tuple destination address (``fd.sip``).
        server_port: ``fd.sport``.
        result: the exit event's first parameter: connect's return value (0 or a negative errno) or the
            accepted file descriptor.
    """

    ts_ns: int
    tid: int
    kind: ConnectionKind
    client: IPAddress
    client_port: int
    server: IPAddress
    server_port: int
    result: int


def _open(src: Source) -> tuple[io.BufferedIOBase, str]:
    """Open a capture for reading, decompressing gzip (detected by its magic); return the stream and a name."""
    if isinstance(src, bytes):
        if src[:2] == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=io.BytesIO(src), mode="rb"), "capture"
        return io.BytesIO(src), "capture"
    try:
        with src.open("rb") as raw:
            magic = raw.read(2)
        if magic == _GZIP_MAGIC:
            return gzip.GzipFile(src, mode="rb"), str(src)
        return src.open("rb"), str(src)
    except OSError as exc:
        raise CaptureError(f"cannot open capture {src}: {exc.strerror or exc}") from exc


_READ_CHUNK = 1 << 20


def _scan(src: Source) -> Iterator[tuple[int, int, bytes, int, int]]:
    """Walk the blocks of a capture, checking their framing, without copying their bodies.

    Yields ``(block type, offset in the stream, buffer, body start, body end)``; the body is
    ``buffer[body start:body end]`` and the buffer is only valid until the next step.
    """
    stream, name = _open(src)
    unpack_header = _BLOCK_HEADER.unpack_from
    unpack_u32 = _U32.unpack_from
    try:
        buf, base, pos, eof = _refill(stream, name, b"", 0, 0, 8)
        if not buf:
            raise CaptureError(f"{name}: empty file")
        if len(buf) >= 4 and unpack_u32(buf, 0)[0] != BlockType.SHB:
            raise CaptureError(f"{name}: not a capture file (first block type {unpack_u32(buf, 0)[0]:#x})")
        while True:
            size = len(buf)
            # every complete block in the buffer
            while pos + 8 <= size:
                block_type, total = unpack_header(buf, pos)
                if pos + total > size or total < 12:
                    break
                end = pos + total - 4
                if total & 3 or unpack_u32(buf, end)[0] != total:
                    _bad_block(buf, pos, base, name)
                if block_type == BlockType.SHB:
                    _check_section_header(buf[pos + 8 : end], name, base + pos)
                yield block_type, base + pos, buf, pos + 8, end
                pos += total
            if pos == size and eof:
                return
            need = 8
            if size - pos >= 8:
                block_type, total = unpack_header(buf, pos)
                if total < 12 or total & 3 or total > _MAX_BLOCK:
                    _bad_block(buf, pos, base, name)
                need = total
            if eof:
                what = "block header" if size - pos < 8 else f"block {block_type:#x} ({size - pos} of {need} bytes)"
                raise CaptureError(f"{name}: truncated {what} at offset {base + pos}")
            buf, base, pos, eof = _refill(stream, name, buf, base, pos, need)
    finally:
        stream.close()


def _bad_block(buf: bytes, pos: int, base: int, name: str) -> NoReturn:
    block_type, total = _BLOCK_HEADER.unpack_from(buf, pos)
    where = f"{name}: block {block_type:#x} at offset {base + pos}"
    if total < 12 or total & 3 or total > _MAX_BLOCK:
        raise CaptureError(f"{where} has bad length {total}")
    (trailer,) = _U32.unpack_from(buf, pos + total - 4)
    raise CaptureError(f"{where} has trailer {trailer}, header {total}")


def _refill(
    stream: io.BufferedIOBase, name: str, buf: bytes, base: int, pos: int, need: int
) -> tuple[bytes, int, int, bool]:
    """Keep ``buf[pos:]`` and read until at least ``need`` bytes are buffered or the stream ends."""
    parts = [buf[pos:]]
    have = len(buf) - pos
    eof = False
    try:
        while have < need:
            data = stream.read(max(_READ_CHUNK, need - have))
            if not data:
                eof = True
                break
            parts.append(data)
            have += len(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise CaptureError(f"cannot read capture {name}: {exc}") from exc
    return b"".join(parts), base + pos, 0, eof


def read_blocks(src: Source) -> Iterator[Block]:
    """Read the blocks of a capture, plain or gzip-compressed, checking each block's framing.

    Args:
        src: a path or the file's bytes.

    Yields:
        Each block in file order (unknown block types included, as libscap skips rather than rejects them).

    Raises:
        CaptureError: the file cannot be read, is empty, does not start with a section header, has a bad
            magic or version, or a block is truncated or has a trailer that disagrees with its header.
    """
    for block_type, offset, buf, start, end in _scan(src):
        yield Block(block_type, offset, buf[start:end])


def _check_section_header(body: bytes, name: str, offset: int) -> None:
    if len(body) < 16:
        raise CaptureError(f"{name}: section header at offset {offset} is too short")
    magic, major, _minor = struct.unpack_from("<IHH", body)
    if magic == _SHB_MAGIC_SWAPPED:
        raise CaptureError(f"{name}: big-endian captures are not supported")
    if magic != _SHB_MAGIC:
        raise CaptureError(f"{name}: bad section header magic {magic:#010x} at offset {offset}")
    if major != 1:
        raise CaptureError(f"{name}: unsupported capture format version {major}")
    _parse_options(body[16:], name, offset)


def _parse_options(data: bytes, name: str, offset: int) -> tuple[tuple[int, bytes], ...]:
    # pcapng-style options, e.g. b"\x01\x00\x12\x00File-level comment\x00\x00" + b"\x00\x00\x00\x00":
    # u16 code, u16 length, value padded to 4 bytes; code 0 ends the list; trailing zero padding is allowed.
    options: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 4 <= len(data):
        code, length = struct.unpack_from("<HH", data, pos)
        if code == 0:
            return tuple(options)
        end = pos + 4 + length
        if end > len(data):
            raise CaptureError(f"{name}: section header option {code} at offset {offset} overruns its block")
        options.append((code, data[pos + 4 : end]))
        pos = _align4(end)
    if any(data[pos:]):
        raise CaptureError(f"{name}: malformed section header options at offset {offset}")
    return tuple(options)


def section_options(block: Block) -> tuple[tuple[int, bytes], ...]:
    """Return the pcapng-style options of a section header block as ``(code, value)`` pairs.

    Code 1 is a comment, 4 the writing application (as ``editcap`` leaves them).

    Raises:
        CaptureError: the block is not a section header or its options are malformed.
    """
    if block.type != BlockType.SHB:
        raise CaptureError(f"block {block.type:#x} at offset {block.offset} is not a section header")
    _check_section_header(block.body, "capture", block.offset)
    return _parse_options(block.body[16:], "capture", block.offset)


_HEADER_V1 = struct.Struct("<QQIH")
_HEADER_V2 = struct.Struct("<QQIHI")


def _decode_event(
    buf: bytes, start: int, end: int, block_type: int, offset: int, types: Collection[int] | None
) -> Event | None:
    """Decode the event in the block body ``buf[start:end]``; ``None`` if its type is filtered out."""
    header_len, has_flags = _EVENT_BLOCKS[block_type]
    at = start + (6 if has_flags else 2)  # after cpuid (and flags)
    if at + header_len > end:
        raise CaptureError(f"event block at offset {offset} is too short")
    if header_len == 26:
        ts, tid, length, etype, nparams = _HEADER_V2.unpack_from(buf, at)
    else:
        ts, tid, length, etype = _HEADER_V1.unpack_from(buf, at)
        nparams = -1
    if types is not None and etype not in types:
        return None
    if nparams == -1 and etype in _V1_LENGTH_FIXUP_TYPES:
        length -= 3
    event_end = at + length
    if length < header_len or event_end > end:
        raise CaptureError(f"event type {etype} at offset {offset} has bad length {length}")
    width = 4 if etype in _LARGE_PAYLOAD_TYPES else 2
    lens_at = at + header_len
    if nparams == -1:
        nparams = _infer_nparams(buf, lens_at, event_end, width, offset)
    values_at = lens_at + width * nparams
    if values_at > event_end:
        raise CaptureError(f"event type {etype} at offset {offset} has more parameters than bytes")
    lens = struct.unpack_from(f"<{nparams}{'I' if width == 4 else 'H'}", buf, lens_at)
    params = []
    pos = values_at
    for n in lens:
        params.append(buf[pos : pos + n])
        pos += n
    if pos != event_end:
        raise CaptureError(
            f"event type {etype} at offset {offset}: parameters take {pos - values_at} bytes, "
            f"its length leaves {event_end - values_at}"
        )
    return Event(ts, tid, etype, tuple(params))


def _infer_nparams(body: bytes, lens_at: int, end: int, width: int, offset: int) -> int:
    # Version-1 events have no parameter count: find the one count whose lengths fill the event exactly (the
    # consumed size grows strictly with the count, so at most one fits).
    count = 0
    pos = lens_at
    total = 0
    unpack = _U32.unpack_from if width == 4 else _U16.unpack_from
    while True:
        if pos + total == end:
            return count
        if pos + width + total > end:
            raise CaptureError(f"event at offset {offset}: cannot work out its number of parameters")
        total += unpack(body, pos)[0]
        pos += width
        count += 1


def read_events(src: Source, *, types: Collection[int] | None = None) -> Iterator[Event]:
    """Read the events of a capture, from EV and EVF blocks of versions 1 and 2 (large ones included).

    Args:
        src: a path or the file's bytes.
        types: if given, only events of these type numbers are decoded and yielded.

    Yields:
        Each event in file order.

    Raises:
        CaptureError: the capture is malformed (see :func:`read_blocks`) or an event's lengths disagree.
    """
    # where the u16 event type sits in each kind of event block's body: after cpuid (and flags), ts, tid, len
    type_at = {block_type: (6 if flags else 2) + 20 for block_type, (_, flags) in _EVENT_BLOCKS.items()}
    for block_type, offset, buf, start, end in _scan(src):
        at = type_at.get(block_type)
        if at is None:
            continue
        at += start
        if types is not None and at + 2 <= end and buf[at] | buf[at + 1] << 8 not in types:
            continue
        event = _decode_event(buf, start, end, block_type, offset, types)
        if event is not None:
            yield event


def _ip(data: bytes) -> IPAddress:
    return IPv4Address(data) if len(data) == 4 else IPv6Address(data)


def decode_sockaddr(param: bytes) -> tuple[IPAddress, int] | None:
    """Decode a ``sockaddr`` parameter (connect enter's ``addr``) into address and port.

    >>> decode_sockaddr(bytes([2, 192, 0, 2, 1, 0x50, 0]))
    (IPv4Address('192.0.2.1'), 80)

    Returns:
        ``(address, port)`` for IPv4 and IPv6, ``None`` for an empty parameter or another family.

    Raises:
        CaptureError: an IPv4/IPv6 sockaddr has the wrong size.
    """
    if not param or param[0] not in (_PPM_AF_INET, _PPM_AF_INET6):
        return None
    size = 4 if param[0] == _PPM_AF_INET else 16
    if len(param) != 1 + size + 2:
        raise CaptureError(f"sockaddr of family {param[0]} has {len(param)} bytes, expected {1 + size + 2}")
    (port,) = _U16.unpack_from(param, 1 + size)
    return _ip(param[1 : 1 + size]), port


def decode_socktuple(param: bytes) -> tuple[IPAddress, int, IPAddress, int] | None:
    """Decode a ``socktuple`` parameter into client address, client port, server address, server port.

    >>> decode_socktuple(bytes([2, 10, 0, 0, 1, 0x39, 0x30, 192, 0, 2, 1, 0xBB, 0x01]))
    (IPv4Address('10.0.0.1'), 12345, IPv4Address('192.0.2.1'), 443)

    Returns:
        The tuple for IPv4 and IPv6, ``None`` for an empty parameter or another family (unix sockets).

    Raises:
        CaptureError: an IPv4/IPv6 tuple has the wrong size.
    """
    if not param or param[0] not in (_PPM_AF_INET, _PPM_AF_INET6):
        return None
    size = 4 if param[0] == _PPM_AF_INET else 16
    if len(param) != 1 + 2 * (size + 2):
        raise CaptureError(f"socktuple of family {param[0]} has {len(param)} bytes, expected {1 + 2 * (size + 2)}")
    (cport,) = _U16.unpack_from(param, 1 + size)
    (sport,) = _U16.unpack_from(param, 3 + 2 * size)
    return _ip(param[1 : 1 + size]), cport, _ip(param[3 + size : 3 + 2 * size]), sport


_KINDS: dict[int, ConnectionKind] = {
    **dict.fromkeys(_CONNECT_EXITS, "connect"),
    **dict.fromkeys(_ACCEPT_EXITS, "accept"),
    **dict.fromkeys(_ACCEPT4_EXITS, "accept4"),
}


def connections(src: Source) -> Iterator[ConnectionRecord]:
    """Read the connect/accept/accept4 exit events of a capture that carry an IPv4 or IPv6 socket tuple.

    Exits without such a tuple (unix sockets, failed accepts, connects that recorded no address) are skipped.

    Raises:
        CaptureError: the capture or one of these events is malformed.
    """
    for event in read_events(src, types=_KINDS):
        if len(event.params) < 2 or len(event.params[0]) != 8:
            raise CaptureError(f"{event.type} exit at ts {event.ts_ns} lacks its result and tuple")
        decoded = decode_socktuple(event.params[1])
        if decoded is None:
            continue
        (result,) = _I64.unpack(event.params[0])
        client, cport, server, sport = decoded
        yield ConnectionRecord(event.ts_ns, event.tid, _KINDS[event.type], client, cport, server, sport, result)
