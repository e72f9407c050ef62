"""Streaming reader for pcap and pcapng files, in big chunks of pcap-format records.

The conversation builder's hot loop walks pcap records (16-byte header + frame) inside a bytes buffer,
so both formats are delivered that way: a pcap file is read in blocks as it is; a pcapng file is
transcoded on the fly (its Enhanced/Simple/Obsolete Packet Blocks become pcap records, its timestamps
seconds + nanoseconds, counted from ``Chunk.epoch``). Nothing here keeps per-packet objects.

A capture may be a regular file, a pipe or FIFO, or standard input (``-``): all are read once, front
to back, as a stream. A record longer than the file's snapshot length (at least 256 KiB, as tshark
allows) is refused at once with its number: nothing is buffered waiting for it.
"""
from __future__ import annotations

import os
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from labctl.analyse.chunks import (  # noqa: F401 (found here by the rest of labctl)
    BLOCK,
    EPOCH_SPAN,
    MAX_BLOCK,
    MAX_RECORD,
    PAD,
    PCAP_MAGIC_MODIFIED,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_SHB,
    CaptureFileError,
    Chunk,
    ReadInfo,
)
from labctl.analyse.linktypes import (  # noqa: F401 (the link types were always found here)
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NAMES,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["LINKTYPE_NAMES", "CaptureFileError", "Chunk", "ReadInfo", "Source", "open_source",
           "read_chunks"]


@dataclass
class Source:
    """An open capture: a regular file, or a stream (pipe, FIFO, standard input) read once."""

    file: BinaryIO
    name: str
    stream: bool = False
    owned: bool = True      # close it when done (not standard input)

    def __str__(self) -> str:
        return self.name

    def close(self) -> None:
        if self.owned:
            self.file.close()


def open_source(path: str | Path, on_wait: Callable[[str], None] | None = None) -> Source:
    """Open a capture for reading: ``-`` is standard input; a FIFO waits for its writer (``on_wait``
    is told once when none is there yet); anything that is not a file or a pipe is refused."""
    name = str(path)
    if name == "-":
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
        if fd < 0:
            raise CaptureFileError("standard input is closed; pipe a capture into 'labctl analyse -'")
        if os.isatty(fd):
            raise CaptureFileError("standard input is a terminal: pipe a capture into it "
                                   "(labctl capture -o - | labctl analyse -) or give a file")
        kind = os.fstat(fd).st_mode
        return Source(sys.stdin.buffer, "<stdin>", stream=not stat.S_ISREG(kind), owned=False)
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise CaptureFileError(f"{p}: no such file; give the path of a .pcap or .pcapng capture") from None
    except OSError as exc:  # a name too long, a loop of symlinks, no permission
        raise CaptureFileError(f"{p}: cannot open ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise CaptureFileError(f"{p} is a directory; give the path of a .pcap or .pcapng capture file")
    if stat.S_ISFIFO(mode):
        return Source(_open_fifo(p, on_wait), name, stream=True)
    if not stat.S_ISREG(mode):
        what = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise CaptureFileError(f"{p} is {what}, not a capture; give a .pcap/.pcapng file, a FIFO, or "
                               "'-' for standard input")
    try:
        return Source(p.open("rb"), name)
    except OSError as exc:
        raise CaptureFileError(f"{p}: cannot open ({exc.strerror or exc})") from exc


def _open_fifo(p: Path, on_wait: Callable[[str], None] | None) -> BinaryIO:
    """Open a FIFO without blocking in open(); wait (telling ``on_wait``) until a writer comes."""
    import fcntl
    import select

    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CaptureFileError(f"{p}: cannot open ({exc.strerror})") from exc
    try:
        poll = select.poll()
        poll.register(fd, select.POLLIN | select.POLLHUP)
        if not poll.poll(200) and on_wait is not None:
            on_wait(f"{p} is a FIFO with nothing written into it yet: waiting for a writer "
                    f"(e.g. tcpdump -w {p}); Ctrl-C to stop")
            while not poll.poll(1000):
                pass
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_chunks(path: str | Path | Source, info: ReadInfo | None = None) -> Iterator[Chunk]:
    """Yield the file's packets as chunks of pcap records; fill ``info`` (format, link types, warnings).

    A file that ends in the middle of a packet yields everything before it and adds a warning.
    """
    info = info if info is not None else ReadInfo(str(path))
    src = path if isinstance(path, Source) else open_source(path)
    try:
        yield from _chunks(src.file, src.name, info)
    finally:
        src.close()


def read_exactly(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream (a pipe hands over what it has)."""
    return _read(f, n)


def _read(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream (a pipe hands over what it has)."""
    data = f.read(n)
    if not data or len(data) == n:
        return data or b""
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _chunks(f: BinaryIO, path: str, info: ReadInfo) -> Iterator[Chunk]:
    head = _read(f, 24)
    if not head:
        raise CaptureFileError(f"{path}: the file is empty (0 bytes); was the capture stopped "
                               "before tcpdump wrote its header?")
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == PCAPNG_SHB:
        info.format = "pcapng"
        from labctl.analyse.pcapng import pcapng_chunks

        yield from pcapng_chunks(f, head, info, _read)
        return
    if len(head) < 4:
        raise CaptureFileError(f"{path}: not a pcap or pcapng file (only {len(head)} bytes)")
    for endian in "<>":
        magic = struct.unpack(endian + "I", head[:4])[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            break
        if magic == PCAP_MAGIC_MODIFIED:
            raise CaptureFileError(f"{path}: a 'modified pcap' file (Alexey Kuznetsov's format) is not "
                                   "supported; convert it with 'editcap -F pcap IN OUT'")
    else:
        if head[:2] == b"\x1f\x8b":
            raise CaptureFileError(f"{path}: a gzip-compressed file; uncompress it first (gunzip)")
        raise CaptureFileError(
            f"{path}: not a pcap or pcapng file (starts with {head[:4].hex()}); write captures "
            "with 'tcpdump -w FILE' or Wireshark's 'Save As' pcap/pcapng")
    if len(head) < 24:
        raise CaptureFileError(f"{path}: the pcap header is cut short ({len(head)} of 24 bytes)")
    _, vmaj, vmin, _tz, _sig, snaplen, network = struct.unpack(endian + "IHHiIII", head)
    if vmaj < 2:
        raise CaptureFileError(f"{path}: pcap version {vmaj}.{vmin} is not one any capture tool writes "
                               "(2.4 is; tshark refuses it too): the file is damaged or not a capture")
    linktype = network & 0xFFFF     # the upper bits say whether frames end in an FCS, and its length
    info.snaplen = snaplen
    info.linktypes.append(linktype)
    scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
    big = endian == ">"
    hdr = struct.Struct(endian + "8xI")
    limit = max(snaplen, MAX_RECORD)
    leftover = b""
    pad = bytes(PAD)
    records = 0
    while True:
        block = _read(f, BLOCK)
        if not block:
            break
        buf = b"".join((leftover, block, pad))    # one copy
        chunk = Chunk(buf, len(buf) - PAD, linktype, big, scale, limit=limit)
        yield chunk
        records += chunk.records
        leftover = buf[chunk.consumed:chunk.end]
        if len(leftover) >= 16:
            incl = hdr.unpack_from(leftover, 0)[0]
            if incl > limit:
                raise CaptureFileError(_too_long(path, records + 1, incl, snaplen))
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


def _too_long(path: str, number: int, incl: int, snaplen: int) -> str:
    return (f"{path}: packet {number} claims {incl:,} captured bytes, more than the file's snapshot "
            f"length ({snaplen:,}) and the {MAX_RECORD // 1024} KiB any capture tool writes: the file "
            "is damaged (or not really a capture) from there on")

