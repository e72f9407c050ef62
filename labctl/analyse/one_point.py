"""One capture point of a capture: a pcapng with one interface per node (``labctl capture --nodes``,
``labctl exercise --nodes all``) holds every packet once per node that saw it, so a client's SYN is
there twice, as client1 sent it and as the server received it. Until packets are matched across nodes,
figures are counted at one capture point: :func:`at_point` hands the analysis that point's packets
only (as a pcap in memory), so nothing is counted twice. A pcap, or a pcapng with one interface, is
read as it is.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

from labctl.analyse.chunks import CaptureFileError
from labctl.analyse.pcap import PCAP_MAGIC_NS, Source
from labctl.analyse.pcap_stream import read_points

SNAPLEN = 262144


def points(path: str | Path) -> dict[str, int]:
    """Every capture point of the file (``server/eth0``, or ``capture`` for a pcap) and its packets."""
    names, _lt, packets, _hosts = read_points(path)
    counts = dict.fromkeys(names, 0)
    for index, _pkt in packets:
        counts[names[index]] += 1
    return counts


def at_point(path: str | Path, node: str) -> tuple[str | Path | Source, str | None]:
    """What to analyse for the figures of ``node``'s capture point, and that point's name.

    A file with one capture point: the file itself and None. Several: that node's packets (interface
    ``NODE/IFACE``) as a pcap in memory, and its name; a node the file does not hold is one clear line.
    """
    names, linktypes, packets, _hosts = read_points(path)
    if len(names) <= 1:
        return path, None
    index = next((i for i, n in enumerate(names) if n.split("/", 1)[0] == node), None)
    if index is None:
        raise CaptureFileError(f"{path}: no capture point of {node} (it holds {', '.join(names)})")
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, SNAPLEN, linktypes[index]))
    for i, pkt in packets:
        if i == index:
            sec, ns = divmod(pkt.ts_ns, 1_000_000_000)
            out.write(struct.pack("<IIII", sec, ns, len(pkt.frame), pkt.orig_len))
            out.write(pkt.frame)
    out.seek(0)
    return Source(out, f"{path} at {names[index]}"), names[index]
