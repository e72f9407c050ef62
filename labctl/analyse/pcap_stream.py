"""Read a pcap *stream* as it arrives: bytes in, whole packets out (tcpdump ``-w -`` over SSH).

:class:`PcapStream` is fed whatever the pipe delivered (half a header, three packets and a bit) and
returns the packets that are now complete, with nanosecond timestamps. It keeps only the bytes of the
packet still being received. Standard library only, like the rest of :mod:`labctl.analyse`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from labctl.analyse.pcap import PCAP_MAGIC_NS, PCAP_MAGIC_US, CaptureFileError

MAX_RECORD = 1 << 20   # a record claiming more than 1 MiB is a damaged stream, not a packet


@dataclass(frozen=True)
class StreamPacket:
    """One packet from a stream: timestamp in ns since the epoch, captured bytes, length on the wire."""

    ts_ns: int
    frame: bytes
    orig_len: int


class PcapStream:
    """Incremental pcap parser: ``feed(data)`` returns the packets completed by ``data``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.header: bytes | None = None     # the 24-byte global header, once seen
        self.linktype: int | None = None
        self.snaplen = 0
        self.packets = 0                      # complete packets so far
        self.bytes = 0                        # bytes fed so far (header included)
        self.record_end = 0                   # bytes of the stream up to the end of the last packet
        self._rec: struct.Struct | None = None
        self._units = 1000                    # ns per fraction unit (1000 for µs files, 1 for ns)

    def feed(self, data: bytes) -> list[StreamPacket]:
        """Add ``data``; return every packet it completed (raises CaptureFileError for a bad stream)."""
        self.bytes += len(data)
        buf = self._buf
        buf += data
        out: list[StreamPacket] = []
        pos = 0
        if self.header is None:
            if len(buf) < 24:
                return out
            self._read_header(bytes(buf[:24]))
            pos = 24
            self.record_end = 24
        rec = self._rec
        assert rec is not None
        n = len(buf)
        while n - pos >= 16:
            sec, frac, incl, orig = rec.unpack_from(buf, pos)
            if incl > MAX_RECORD:
                raise CaptureFileError(f"the pcap stream is damaged: a record of {incl} bytes at byte "
                                       f"{self.record_end}")
            if n - pos - 16 < incl:
                break
            out.append(StreamPacket(sec * 1_000_000_000 + frac * self._units,
                                    bytes(buf[pos + 16:pos + 16 + incl]), orig))
            pos += 16 + incl
            self.record_end += 16 + incl
        del buf[:pos]
        self.packets += len(out)
        return out

    @property
    def pending(self) -> int:
        """Bytes received that are not (yet) a whole packet: a stream cut here ends mid-packet."""
        return len(self._buf)

    def _read_header(self, head: bytes) -> None:
        for endian in "<>":
            magic = struct.unpack(endian + "I", head[:4])[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            raise CaptureFileError(f"the stream is not pcap (starts with {head[:4].hex()})")
        _, _vmaj, _vmin, _tz, _sig, snaplen, network = struct.unpack(endian + "IHHiIII", head)
        self.header = head
        self.snaplen = snaplen
        self.linktype = network & 0x0FFFFFFF
        self._units = 1 if magic == PCAP_MAGIC_NS else 1000
        self._rec = struct.Struct(endian + "IIII")


def read_points(path, warnings: list[str] | None = None, raw: bool = False
                ) -> tuple[list[str], list[int], list[tuple[int, StreamPacket]], dict[str, str]]:
    """A pcap or pcapng file as capture points (pcapng ``if_name``, else ``capture``), their link
    types, every packet as ``(capture point index, StreamPacket)`` in file order (for replays), and the
    node names the interface descriptions give (``NODE ADDRESS``: address -> node).

    A file that ends in the middle of a packet (or block) gives the packets before it, and a line
    saying so in ``warnings`` when one is given. ``raw``: each packet as a plain tuple
    ``(capture point index, ns, frame, orig_len)`` instead (lighter, for the multi-node analysis)."""
    from contextlib import closing
    from pathlib import Path

    from labctl.analyse.pcap import PCAPNG_SHB, Source, open_source

    if hasattr(path, "read"):          # an open file (standard input read into memory)
        p = getattr(path, "name", "<stdin>")
        source = Source(path, p, stream=True, owned=False)
    else:
        p = Path(path)
        source = open_source(p)
    with closing(source):
        f = source.file
        head = f.read(4)
        if len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB:
            return _pcapng_points(head + f.read(), str(p), warnings, raw)
        stream = PcapStream()
        packets = []
        data = head
        while True:
            data = data or f.read(1 << 20)
            if not data:
                break
            packets += ([(0, k.ts_ns, k.frame, k.orig_len) for k in stream.feed(data)] if raw
                        else [(0, pkt) for pkt in stream.feed(data)])
            data = b""
        if stream.header is None:
            raise CaptureFileError(f"{p}: not a pcap or pcapng file (too short)")
        if stream.pending and warnings is not None:
            warnings.append(f"{p} ends in the middle of a packet ({stream.pending} bytes left over); "
                            "analysed the complete packets before it")
        return ["capture"], [stream.linktype or 1], packets, {}


def _pcapng_points(buf: bytes, path: str, warnings: list[str] | None = None, raw: bool = False):
    names: list[str] = []
    hosts: dict[str, str] = {}
    linktypes: list[int] = []
    units: list[tuple[int, int]] = []       # (ticks per second, offset seconds)
    packets: list[tuple[int, StreamPacket]] = []
    base = 0                                  # interfaces of earlier sections keep their numbers
    e = "<"
    pos = 0
    size = len(buf)
    head, epb = struct.Struct("<II").unpack_from, struct.Struct("<IIIII").unpack_from
    while size - pos >= 12:
        if struct.unpack_from("<I", buf, pos)[0] == 0x0A0D0D0A:
            e = "<" if buf[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            head, epb = struct.Struct(e + "II").unpack_from, struct.Struct(e + "IIIII").unpack_from
            base = len(names)
        btype, blen = head(buf, pos)
        if blen < 12 or pos + blen > size:
            break
        body = pos + 8
        if btype == 6:
            ifid, hi, lo, incl, orig = epb(buf, body)
            idx = base + ifid
            if idx >= len(names):
                raise CaptureFileError(f"{path}: a packet names interface {ifid}, never described")
            tps, off = units[idx]
            ticks = (hi << 32) | lo
            ts_ns = (ticks // tps + off) * 1_000_000_000 + (ticks % tps) * 1_000_000_000 // tps
            if raw:
                packets.append((idx, ts_ns, buf[body + 20:body + 20 + incl], orig))
            else:
                packets.append((idx, StreamPacket(ts_ns, bytes(buf[body + 20:body + 20 + incl]), orig)))
        elif btype == 1:
            lt = struct.unpack_from(e + "H", buf, body)[0]
            name, tps, off = f"if{len(names)}", 1_000_000, 0
            o, end = body + 8, pos + blen - 4
            while o + 4 <= end:
                code, n = struct.unpack_from(e + "HH", buf, o)
                val = buf[o + 4:o + 4 + n]
                if code == 0:
                    break
                if code == 2:
                    name = val.decode(errors="replace")
                elif code == 3 and len(val.split()) == 2:
                    node, address = val.decode(errors="replace").split()
                    hosts[address] = node
                elif code == 9 and n >= 1:
                    tps = 2 ** (val[0] & 0x7F) if val[0] & 0x80 else 10 ** val[0]
                elif code == 14 and n == 8:
                    off = struct.unpack(e + "q", val)[0]
                o += 4 + ((n + 3) & ~3)
            names.append(name)
            linktypes.append(lt)
            units.append((tps, off))
        pos += blen
    if pos < size and warnings is not None:
        warnings.append(f"{path} ends in the middle of a pcapng block ({len(buf) - pos} bytes left over); "
                        "analysed the complete packets before it")
    return names, linktypes, packets, hosts
