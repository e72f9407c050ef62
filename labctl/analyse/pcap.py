"""Streaming reader for pcap and pcapng files, in big chunks of pcap-format records.

The conversation builder's hot loop walks pcap records (16-byte header + frame) inside a bytes buffer,
so both formats are delivered that way: a pcap file is read in blocks as it is; a pcapng file is
transcoded on the fly (its Enhanced/Simple/Obsolete Packet Blocks become pcap records, its timestamps
seconds + nanoseconds). Nothing here keeps per-packet objects.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import LabctlError

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO

BLOCK = 4 << 20          # bytes read at a time
PAD = 96                 # zero bytes after each chunk, so fixed-size unpacks near its end never fail

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
BYTE_ORDER_MAGIC = 0x1A2B3C4D

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_NAMES = {
    LINKTYPE_NULL: "BSD loopback", LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_RAW: "raw IP",
    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)", LINKTYPE_IPV4: "raw IPv4", LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)


class CaptureFileError(LabctlError):
    """The file is not a capture this tool can read (the message says why and what to do)."""


@dataclass
class Chunk:
    """A run of pcap-format records in ``data[0:end]`` (then ``PAD`` zero bytes).

    The last record may be incomplete: whoever walks the chunk sets ``consumed`` to the offset of the
    first record it could not finish, and the reader carries the rest over into the next chunk.
    """

    data: bytes
    end: int
    linktype: int
    big_endian: bool      # record headers' byte order
    frac_scale: float     # seconds per unit of the timestamp's fraction field (1e-6 or 1e-9)
    consumed: int = 0


@dataclass
class ReadInfo:
    """What the reader learnt about the file while streaming it."""

    path: str
    format: str = "pcap"
    linktypes: list[int] = field(default_factory=list)
    snaplen: int = 0
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False


def _open(path: str | Path) -> BinaryIO:
    p = Path(path)
    try:
        if not p.exists():
            raise CaptureFileError(f"{p}: no such file; give the path of a .pcap or .pcapng capture")
        if p.is_dir():
            raise CaptureFileError(f"{p} is a directory; give the path of a .pcap or .pcapng capture file")
        return p.open("rb")
    except OSError as exc:  # also what exists() raises: a name too long, a loop of symlinks
        raise CaptureFileError(f"{p}: cannot open ({exc.strerror or exc})") from None


def read_chunks(path: str | Path, info: ReadInfo | None = None) -> Iterator[Chunk]:
    """Yield the file's packets as chunks of pcap records; fill ``info`` (format, link types, warnings).

    A file that ends in the middle of a packet yields everything before it and adds a warning.
    """
    info = info if info is not None else ReadInfo(str(path))
    f = _open(path)
    with f:
        head = f.read(24)
        if not head:
            raise CaptureFileError(f"{path}: the file is empty (0 bytes); was the capture stopped "
                                   "before tcpdump wrote its header?")
        if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == PCAPNG_SHB:
            info.format = "pcapng"
            yield from _pcapng_chunks(f, head, info)
            return
        if len(head) < 4:
            raise CaptureFileError(f"{path}: not a pcap or pcapng file (only {len(head)} bytes)")
        for endian in "<>":
            magic = struct.unpack(endian + "I", head[:4])[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            raise CaptureFileError(
                f"{path}: not a pcap or pcapng file (starts with {head[:4].hex()}); write captures "
                "with 'tcpdump -w FILE' or Wireshark's 'Save As' pcap/pcapng")
        if len(head) < 24:
            raise CaptureFileError(f"{path}: the pcap header is cut short ({len(head)} of 24 bytes)")
        _, _vmaj, _vmin, _tz, _sig, snaplen, network = struct.unpack(endian + "IHHiIII", head)
        linktype = network & 0x0FFFFFFF
        info.snaplen = snaplen
        info.linktypes.append(linktype)
        _check_linktype(path, linktype)
        scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
        big = endian == ">"
        hdr = struct.Struct(endian + "8xI")
        leftover = b""
        pad = bytes(PAD)
        while True:
            block = f.read(BLOCK)
            if not block:
                break
            buf = b"".join((leftover, block, pad))    # one copy
            chunk = Chunk(buf, len(buf) - PAD, linktype, big, scale)
            yield chunk
            leftover = buf[chunk.consumed:chunk.end]
        if leftover:
            info.truncated = True
            if len(leftover) < 16:
                what = f"a packet header ({len(leftover)} of 16 bytes)"
            else:
                want = hdr.unpack_from(leftover, 0)[0]
                what = f"a packet ({len(leftover) - 16} of {want} bytes)"
            info.warnings.append(f"the file ends in the middle of {what}; it was cut short (capture "
                                 "still running or copied too early?) - analysed the complete packets "
                                 "before it")


def _check_linktype(path: str | Path, linktype: int) -> None:
    if linktype not in SUPPORTED_LINKTYPES:
        raise CaptureFileError(
            f"{path}: link type {linktype} is not supported (supported: "
            + ", ".join(f"{n} ({k})" for k, n in sorted(LINKTYPE_NAMES.items()))
            + "); capture on an Ethernet interface or with 'tcpdump -i any'")


# --- pcapng -------------------------------------------------------------------------------------------

def _pcapng_chunks(f: BinaryIO, head: bytes, info: ReadInfo) -> Iterator[Chunk]:
    """Transcode pcapng blocks into pcap-record chunks (one link type per chunk)."""
    buf = head + f.read(BLOCK)
    pos = 0
    endian = "<"
    ifaces: list[tuple[int, int, int]] = []   # (linktype, units per second, ts offset seconds)
    out: list[bytes] = []
    out_len = 0
    cur_lt = -1
    rec = struct.Struct("<IIII")

    def flush():
        nonlocal out, out_len
        if out:
            data = b"".join(out)
            out, out_len = [], 0
            return Chunk(data + bytes(PAD), len(data), cur_lt, False, 1e-9, len(data))
        return None

    while True:
        if len(buf) - pos < 12:
            more = f.read(BLOCK)
            if not more:
                break
            buf = buf[pos:] + more
            pos = 0
            continue
        btype, blen = struct.unpack_from(endian + "II", buf, pos)
        if btype == PCAPNG_SHB:
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise CaptureFileError(f"{info.path}: damaged pcapng section header (byte-order mark "
                                       f"{bom.hex()})")
            btype, blen = struct.unpack_from(endian + "II", buf, pos)
            ifaces = []
        if blen < 12 or blen % 4:
            raise CaptureFileError(f"{info.path}: damaged pcapng block at byte {pos} (length {blen})")
        if len(buf) - pos < blen:
            more = f.read(max(BLOCK, blen))
            if not more:
                break
            buf = buf[pos:] + more
            pos = 0
            continue
        body = pos + 8
        if btype == 1:  # Interface Description Block
            lt, _res, snaplen = struct.unpack_from(endian + "HHI", buf, body)
            units, tsoff = _idb_options(buf, body + 8, pos + blen - 4, endian)
            ifaces.append((lt, units, tsoff))
            info.snaplen = max(info.snaplen, snaplen)
            if lt not in info.linktypes:
                info.linktypes.append(lt)
            _check_linktype(info.path, lt)
        elif btype in (6, 2, 3):  # Enhanced / Obsolete / Simple Packet Block
            if btype == 6:
                ifid, tshi, tslo, incl, orig = struct.unpack_from(endian + "IIIII", buf, body)
                data_at = body + 20
            elif btype == 2:
                ifid, _drops, tshi, tslo, incl, orig = struct.unpack_from(endian + "HHIIII", buf, body)
                data_at = body + 20
            else:
                ifid, tshi, tslo = 0, 0, 0
                (orig,) = struct.unpack_from(endian + "I", buf, body)
                incl = min(orig, blen - 16)
                data_at = body + 4
            if ifid >= len(ifaces):
                raise CaptureFileError(f"{info.path}: packet block refers to interface {ifid}, which "
                                       "the file never describes (damaged pcapng)")
            lt, units, tsoff = ifaces[ifid]
            if lt != cur_lt:
                chunk = flush()
                if chunk:
                    yield chunk
                cur_lt = lt
            t = (tshi << 32) | tslo
            sec, frac = divmod(t, units)
            ns = frac * 1_000_000_000 // units
            out.append(rec.pack(sec + tsoff, ns, incl, orig))
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
    if len(buf) - pos > 0:
        info.truncated = True
        info.warnings.append(f"the file ends in the middle of a pcapng block ({len(buf) - pos} bytes "
                             "left over); analysed the complete packets before it")


def _idb_options(buf: bytes, o: int, end: int, endian: str) -> tuple[int, int]:
    """Timestamp units per second (if_tsresol) and offset (if_tsoffset) from an IDB's options."""
    units, tsoff = 1_000_000, 0
    while o + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, o)
        if code == 0:
            break
        val = buf[o + 4:o + 4 + length]
        if code == 9 and length >= 1:
            r = val[0]
            units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** r
        elif code == 14 and length == 8:
            (tsoff,) = struct.unpack(endian + "q", val)
        o += 4 + ((length + 3) & ~3)
    return units, tsoff
