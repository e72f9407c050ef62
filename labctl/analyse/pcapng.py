"""pcapng, transcoded on the fly into chunks of pcap-format records (see ``pcap``).

Enhanced, Simple and Obsolete Packet Blocks become records with a nanosecond fraction. Times are
carried as integers throughout: each interface's timestamp (in its ``if_tsresol`` units, plus its
``if_tsoffset``, which may be negative) is split into seconds and nanoseconds, and the seconds are
counted from the chunk's ``epoch`` so that times before 1970 or after 2106 (which tshark reads) fit
the record's 32-bit field. Damaged or crafted blocks (too short for their type, longer than 32 MiB, a
packet longer than its block or than the snapshot length) are refused at once with where they are.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from labctl.analyse.chunks import (
    BLOCK,
    EPOCH_SPAN,
    MAX_BLOCK,
    MAX_RECORD,
    PAD,
    PCAPNG_SHB,
    CaptureFileError,
    Chunk,
    ReadInfo,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

IDB, OPB, SPB, EPB = 1, 2, 3, 6
MIN_LEN = {IDB: 20, OPB: 32, SPB: 16, EPB: 32, PCAPNG_SHB: 28}   # whole block, without options


def pcapng_chunks(f: BinaryIO, head: bytes, info: ReadInfo, read: Callable[[BinaryIO, int], bytes]
                  ) -> Iterator[Chunk]:
    """Transcode pcapng blocks into pcap-record chunks (one link type per chunk)."""
    path = info.path
    buf = head + read(f, BLOCK)
    pos = 0
    base = 0                 # file offset of buf[0]
    endian = "<"
    ifaces: list[tuple[int, int, int, int]] = []   # (linktype, units per second, offset s, limit)
    out: list[bytes] = []
    out_len = 0
    cur_lt = -1
    epoch: int | None = None
    clamped = 0
    packets = 0
    rec = struct.Struct("<IIII")

    def flush() -> Chunk | None:
        nonlocal out, out_len
        if not out:
            return None
        data = b"".join(out)
        out, out_len = [], 0
        return Chunk(data + bytes(PAD), len(data), cur_lt, False, 1e-9, len(data), epoch or 0)

    while True:
        if len(buf) - pos < 12:
            more = read(f, BLOCK)
            if not more:
                break
            buf, base, pos = buf[pos:] + more, base + pos, 0
            continue
        btype, blen = struct.unpack_from(endian + "II", buf, pos)
        if btype == PCAPNG_SHB:
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise CaptureFileError(f"{path}: damaged pcapng section header at byte {base + pos} "
                                       f"(byte-order mark {bom.hex()})")
            btype, blen = struct.unpack_from(endian + "II", buf, pos)
            if len(buf) - pos >= 16:
                version = struct.unpack_from(endian + "HH", buf, pos + 12)
                if version not in ((1, 0), (1, 2)):
                    raise CaptureFileError(f"{path}: pcapng section version {version[0]}.{version[1]} at "
                                           f"byte {base + pos} is not one tshark or any capture tool "
                                           "writes (1.0): the file is damaged")
            ifaces = []
        if blen < MIN_LEN.get(btype, 12) or blen % 4:
            raise CaptureFileError(f"{path}: damaged pcapng block at byte {base + pos} (type {btype}, "
                                   f"length {blen})")
        if blen > MAX_BLOCK:
            raise CaptureFileError(f"{path}: the pcapng block at byte {base + pos} claims {blen:,} bytes "
                                   f"(more than {MAX_BLOCK >> 20} MiB): the file is damaged from there on")
        if len(buf) - pos < blen:
            more = read(f, max(BLOCK, blen - (len(buf) - pos)))
            if not more:
                break
            buf, base, pos = buf[pos:] + more, base + pos, 0
            continue
        body = pos + 8
        if btype == IDB:
            lt, _res, snaplen = struct.unpack_from(endian + "HHI", buf, body)
            units, tsoff = _idb_options(buf, body + 8, pos + blen - 4, endian)
            ifaces.append((lt, units, tsoff, max(snaplen, MAX_RECORD)))
            info.snaplen = max(info.snaplen, snaplen)
            if lt not in info.linktypes:
                info.linktypes.append(lt)
        elif btype in (EPB, OPB, SPB):
            packets += 1
            if btype == EPB:
                ifid, tshi, tslo, incl, orig = struct.unpack_from(endian + "IIIII", buf, body)
                data_at, room = body + 20, blen - 32
            elif btype == OPB:
                ifid, _drops, tshi, tslo, incl, orig = struct.unpack_from(endian + "HHIIII", buf, body)
                data_at, room = body + 20, blen - 32
            else:
                ifid, tshi, tslo = 0, 0, 0
                (orig,) = struct.unpack_from(endian + "I", buf, body)
                data_at, room = body + 4, blen - 16
                incl = min(orig, room)
            if ifid >= len(ifaces):
                raise CaptureFileError(f"{path}: packet {packets} (byte {base + pos}) refers to "
                                       f"interface {ifid}, which the file never describes (damaged "
                                       "pcapng)")
            lt, units, tsoff, limit = ifaces[ifid]
            if incl > room or incl > limit:
                raise CaptureFileError(f"{path}: packet {packets} (byte {base + pos}) claims {incl:,} "
                                       f"captured bytes, more than its block holds ({room:,}) or than "
                                       f"the snapshot length allows: the file is damaged")
            if lt != cur_lt:
                chunk = flush()
                if chunk:
                    yield chunk
                cur_lt = lt
            sec, frac = divmod((tshi << 32) | tslo, units)
            sec += tsoff
            if epoch is None:
                epoch = 0 if 0 <= sec < EPOCH_SPAN else sec - (EPOCH_SPAN >> 1)
            sec -= epoch
            if not 0 <= sec < EPOCH_SPAN:    # more than 68 years from the first packet
                clamped += 1
                sec = 0 if sec < 0 else EPOCH_SPAN - 1
            out.append(rec.pack(sec, frac * 1_000_000_000 // units, incl, orig))
            out.append(buf[data_at:data_at + incl])
            out_len += 16 + incl
            if out_len >= BLOCK:
                chunk = flush()
                if chunk:
                    yield chunk
        pos += blen
    chunk = flush()
    if chunk:
        yield chunk
    if clamped:
        info.warnings.append(f"{clamped} packet(s) carry timestamps more than 68 years from the first "
                             "packet's: their times were set to the nearest time this tool can hold")
    if len(buf) - pos > 0:
        info.truncated = True
        info.warnings.append(f"the file ends in the middle of a pcapng block ({len(buf) - pos} bytes "
                             "left over); analysed the complete packets before it")


def _idb_options(buf: bytes, o: int, end: int, endian: str) -> tuple[int, int]:
    """Timestamp units per second (if_tsresol) and offset in seconds (if_tsoffset) of an IDB."""
    units, tsoff = 1_000_000, 0
    while o + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, o)
        if code == 0:
            break
        val = buf[o + 4:min(o + 4 + length, end)]
        if code == 9 and len(val) >= 1:
            r = val[0]
            units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** r
        elif code == 14 and len(val) == 8:
            (tsoff,) = struct.unpack(endian + "q", val)
        o += 4 + ((length + 3) & ~3)
    return units, tsoff
