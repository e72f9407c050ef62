"""Capture points: one or more capture files read as the places their packets were seen.

A pcapng file from ``labctl capture --nodes all`` has one interface per node (``if_name``
``NODE/IFACE``, ``if_description`` ``NODE ADDRESS``); a plain pcap (or a pcapng without those
descriptions) is one point named after its file, whose address is the IP address found in most of its
packets (a capture taken on a node sees that node's address in every packet it sent or received;
its first ``SAMPLE`` packets tell).
``read_captures`` returns the points and every packet as ``(point, ns, frame, length on the wire)``
in time order. Standard library only.
"""
from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from labctl.analyse.decode import network_start
from labctl.analyse.linktypes import ET_IPV4, linktype_name
from labctl.analyse.pcap import CaptureFileError


@dataclass
class CapturePoint:
    """One place packets were captured: a node's interface, in one file."""

    file: str
    name: str            # "client2/eth0", or the file's name for a plain pcap
    node: str            # "client2"
    address: str         # "192.168.69.4" ("" when it could not be told)
    linktype: int
    packets: int = 0
    bytes: int = 0       # frame lengths on the wire

    def as_dict(self) -> dict:
        return {"file": self.file, "name": self.name, "node": self.node, "address": self.address or None,
                "link_type": linktype_name(self.linktype), "packets": self.packets, "bytes": self.bytes}


@dataclass
class Captures:
    """Every point of every file read, and their packets in time order."""

    files: list[str]
    formats: list[str]
    points: list[CapturePoint]
    packets: list[tuple[int, int, bytes, int]]     # (point index, ns since the epoch, frame, orig_len)
    warnings: list[str] = field(default_factory=list)


HEAD = 1 << 16     # bytes read to count a file's interfaces
SAMPLE = 2000      # packets of a point without a described address that tell it


def count_points(path: str | Path) -> int:
    """How many capture points a file holds, from its first blocks (1 for a pcap; 0 if unreadable)."""
    try:
        with open(path, "rb") as f:
            return count_points_in(f.read(HEAD))
    except OSError:
        return 0


def count_points_in(head: bytes) -> int:
    """How many interfaces the first bytes of a capture describe (1 for a pcap). Reads only up to the
    first packet: labctl, tshark and dumpcap describe every interface first."""
    if len(head) < 12 or struct.unpack_from("<I", head)[0] != 0x0A0D0D0A:
        return 1
    e = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    pos, n = 0, 0
    while len(head) - pos >= 12:
        btype, blen = struct.unpack_from(e + "II", head, pos)
        if btype in (2, 3, 6) or blen < 12:
            break
        n += btype == 1
        pos += blen
    return max(n, 1)


class Prefixed:
    """A stream whose first bytes were already read (to count its interfaces): those, then the rest."""

    def __init__(self, head: bytes, rest) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(n)
        if n < 0:
            out, self.head = self.head + self.rest.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out

    def close(self) -> None:
        self.rest.close()


def read_captures(paths: list[str | Path | io.BytesIO]) -> Captures:
    """Read every file (pcap or pcapng, one or many points each; a ``BytesIO`` with a ``name``: a
    stream read into memory) into one time-ordered list."""
    from labctl.analyse.pcap_stream import read_points

    warnings: list[str] = []
    points: list[CapturePoint] = []
    packets: list[tuple[int, int, bytes, int]] = []
    files, formats = [], []
    labels = [p.name if isinstance(p, io.BytesIO) else str(p) for p in paths]
    stems = [Path(label).stem for label in labels]
    for path, label, stem in zip(paths, labels, stems):
        name_of = stem if stems.count(stem) == 1 else label
        if isinstance(path, io.BytesIO):      # standard input, read into memory
            first = path.getvalue()[:4]
        else:
            with open(path, "rb") as f:
                first = f.read(4)
        formats.append("pcapng" if first == b"\x0a\x0d\x0d\x0a" else "pcap")
        names, linktypes, pkts, hosts = read_points(path, warnings, raw=True)
        files.append(label)
        base = len(points)
        node_address = {node: addr for addr, node in hosts.items()}
        for name, lt in zip(names, linktypes):
            described = "/" in name and name.split("/", 1)[0] in node_address
            node = (name.split("/", 1)[0] if described
                    else name_of if len(names) == 1 else f"{name_of}:{name}")
            points.append(CapturePoint(files[-1], name if described or len(names) > 1 else name_of, node,
                                       node_address.get(node, ""), lt))
        counts = [0] * len(names)
        sizes = [0] * len(names)
        for idx, _ts, _frame, orig in pkts:
            counts[idx] += 1
            sizes[idx] += orig
        for i, (n, b) in enumerate(zip(counts, sizes)):
            points[base + i].packets, points[base + i].bytes = n, b
        packets += pkts if not base else [(base + i, ts, fr, o) for i, ts, fr, o in pkts]
    unknown = {i for i, pt in enumerate(points) if not pt.address}
    samples: dict[int, list[bytes]] = {i: [] for i in unknown}
    for i, _ts, frame, _orig in packets if unknown else ():
        if i in unknown and len(samples[i]) < SAMPLE:
            samples[i].append(frame)
    guesses = {i: _main_addresses(points[i].linktype, samples[i]) for i in sorted(unknown)}
    while guesses:       # the clear ones first: a tie is then settled by the addresses they took
        claimed = {pt.address for pt in points if pt.address}
        left = {i: [a for a in c if a not in claimed] if len(c) > 1 else c for i, c in guesses.items()}
        clear = [i for i, c in left.items() if len(c) == 1]
        for i in clear or list(guesses):
            points[i].address = left[i][0] if len(left[i]) == 1 else ""
            del guesses[i]
    if len(files) > 1 or any(a[0] < b[0] for a, b in zip(packets, packets[1:])):
        packets.sort(key=lambda p: p[1])       # (stable: a file's order is kept for equal times)
    if not packets and not points:
        raise CaptureFileError(f"{', '.join(files)}: no capture point and no packet in "
                               f"{'these files' if len(files) > 1 else 'this file'}")
    return Captures(files, formats, points, packets, warnings)


def ip_addresses(linktype: int, frame: bytes) -> tuple[str, str] | None:
    """(source, destination) IP address of a frame as text, or None when it carries no IP."""
    r = network_start(linktype, frame, 0, len(frame))
    if type(r) is str:
        return None
    et, off = r
    if et == ET_IPV4:
        if len(frame) < off + 20:
            return None
        return socket.inet_ntoa(frame[off + 12:off + 16]), socket.inet_ntoa(frame[off + 16:off + 20])
    if len(frame) < off + 40:
        return None
    return (socket.inet_ntop(socket.AF_INET6, frame[off + 8:off + 24]),
            socket.inet_ntop(socket.AF_INET6, frame[off + 24:off + 40]))


def _main_addresses(linktype: int, frames) -> list[str]:
    """The address in most of these frames (a node's own), or those tied for it (a capture of one
    conversation has both ends' in every packet)."""
    counts: dict[str, int] = {}
    n = 0
    for frame in frames:
        r = ip_addresses(linktype, frame)
        if r is None:
            continue
        n += 1
        for a in set(r):
            counts[a] = counts.get(a, 0) + 1
    top = max(counts.values(), default=0)
    return sorted(a for a, c in counts.items() if c == top)
