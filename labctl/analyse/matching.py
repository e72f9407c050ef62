"""The same packet seen at several capture points is one event: match the sightings.

A packet's identity is a hash of its IP header and everything it carries, minus what a hop may change
(IPv4 TTL and header checksum, IPv6 hop limit): the IP ID, addresses, ports, TCP sequence and
acknowledgement numbers and the payload are all in it, and the link layer is not (a routed packet
gets new MAC addresses). Sightings of one identity within ``WINDOW`` seconds, at different points, are
one event; the same bytes seen twice at one point are two packets (a UDP client asking again).

Each event then knows where it was sent from (the point whose address is its source), where it
arrived (the point whose address is its destination), its one-way time, and, when it never arrived,
where it was last seen. ``match(captures)`` returns the events in time order, each with the time
and frame that stand for it in the one analysis of the capture (the sender's, or the first sighting).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from labctl.analyse.decode import network_start
from labctl.analyse.linktypes import ET_IPV4
from labctl.analyse.model import flag_text
from labctl.analyse.points import Captures

WINDOW = 2_000_000_000     # ns: sightings further apart than this are different packets

_H = struct.Struct(">H").unpack_from
_PORTS = struct.Struct(">HH").unpack_from


@dataclass(slots=True)
class Event:
    """One packet on its way: where it was seen, sent, received; its conversation and label."""

    t_ns: int                       # the time that stands for it (its sender's, else its first sighting)
    point: int                      # the point of the frame kept (its first sighting: hops change only
    frame: bytes                    # TTL, checksum and MACs, which the analysis ignores; emptied once fed)
    orig_len: int
    seen: dict[int, int]            # point index -> ns
    conv: tuple | None = None       # (proto, endpoint, endpoint) sorted; None for what is not TCP/UDP
    src: str = ""                   # "192.168.69.3:40000"
    label: str = ""                 # "SYN", "PSH-ACK len=20", "UDP len=9"
    sent_ns: int | None = None      # seen leaving its sender
    received_ns: int | None = None  # seen at its destination
    sender: str = ""                # node names ("" when that node was not captured)
    receiver: str = ""

    @property
    def one_way_ns(self) -> int | None:
        if self.sent_ns is None or self.received_ns is None:
            return None
        return self.received_ns - self.sent_ns

    @property
    def lost(self) -> bool:
        """Sent, bound for a captured node, and never seen there."""
        return self.sent_ns is not None and bool(self.receiver) and self.received_ns is None


def identity(linktype: int, frame: bytes):
    """(hash of the packet minus what hops change, source, destination (address bytes), proto, ports,
    label) of a frame, or (hash of the whole frame, None, ...) when it carries no IP."""
    if linktype == 1 and frame[12:14] == b"\x08\x00":     # IPv4 over Ethernet, untagged: most frames
        et, o = ET_IPV4, 14
    else:
        r = network_start(linktype, frame, 0, len(frame))
        if type(r) is str:
            return hash(frame), None, None, 0, None, ""
        et, o = r
    if et == ET_IPV4:
        if len(frame) < o + 20:
            return hash(frame), None, None, 0, None, ""
        ihl = (frame[o] & 15) * 4
        end = min(o + _H(frame, o + 2)[0], len(frame))
        key = hash(frame[o:o + 8] + frame[o + 9:o + 10] + frame[o + 12:end])
        proto = frame[o + 9]
        src, dst = frame[o + 12:o + 16], frame[o + 16:o + 20]
        if _H(frame, o + 6)[0] & 0x3FFF:
            return key, src, dst, proto, None, "IP fragment"
        l4 = o + ihl
    else:
        if len(frame) < o + 40:
            return hash(frame), None, None, 0, None, ""
        end = min(o + 40 + _H(frame, o + 4)[0], len(frame))
        key = hash(frame[o:o + 7] + frame[o + 8:end])
        proto = frame[o + 6]
        src, dst = frame[o + 8:o + 24], frame[o + 24:o + 40]
        l4 = o + 40
    if proto not in (6, 17) or end - l4 < (20 if proto == 6 else 8):
        return key, src, dst, proto, None, {1: "ICMP", 58: "ICMPv6"}.get(proto, f"IP proto {proto}")
    ports = _PORTS(frame, l4)
    if proto == 6:
        plen = end - l4 - (frame[l4 + 12] >> 4) * 4
        label = flag_text(frame[l4 + 13]) + (f" len={plen}" if plen > 0 else "")
    else:
        label = f"UDP len={end - l4 - 8}"
    return key, src, dst, proto, ports, label


def _key(linktype: int, frame: bytes) -> int:
    """The identity's hash alone (the common case, IPv4 over Ethernet, without the general decoder)."""
    if linktype == 1 and frame[12:14] == b"\x08\x00" and len(frame) >= 34:
        end = min(14 + (frame[16] << 8 | frame[17]), len(frame))
        return hash(frame[14:22] + frame[23:24] + frame[26:end])
    return identity(linktype, frame)[0]


def _text(address: bytes, cache: dict[bytes, str]) -> str:
    t = cache.get(address)
    if t is None:
        fam = socket.AF_INET if len(address) == 4 else socket.AF_INET6
        t = cache[address] = socket.inet_ntop(fam, address)
    return t


def endpoint(address: str, port: int) -> str:
    """"10.0.0.1:80", "[2001:db8::1]:80" (as the conversations name them)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def match(captures: Captures) -> list[Event]:
    """Group every sighting into events (see the module's text); events in time order."""
    points = captures.points
    linktypes = [pt.linktype for pt in points]
    nodes_at: dict[str, list[int]] = {}
    for i, pt in enumerate(points):
        if pt.address:
            nodes_at.setdefault(pt.address, []).append(i)
    open_events: dict[int, list[Event]] = {}
    events: list[Event] = []
    for idx, ts, frame, orig in captures.packets:
        key = _key(linktypes[idx], frame)
        bucket = open_events.get(key)
        ev = None
        if bucket is None:
            bucket = open_events[key] = []
        else:
            for cand in bucket:
                if idx not in cand.seen and abs(ts - cand.t_ns) <= WINDOW:
                    ev = cand
                    break
        if ev is None:
            ev = Event(ts, idx, frame, orig, {idx: ts})
            events.append(ev)
            if bucket and ts - bucket[0].t_ns > WINDOW:
                bucket[:] = [e for e in bucket if ts - e.t_ns <= WINDOW]   # forget the old ones
            bucket.append(ev)
        else:
            ev.seen[idx] = ts
    names: dict[bytes, str] = {}
    for ev in events:
        _, src_b, dst_b, proto, ports, ev.label = identity(linktypes[ev.point], ev.frame)
        if src_b is None:
            continue
        src, dst = _text(src_b, names), _text(dst_b, names)
        if ports is not None:
            a, b = endpoint(src, ports[0]), endpoint(dst, ports[1])
            ev.conv = ("tcp" if proto == 6 else "udp", *sorted((a, b)))
            ev.src = a
        senders, receivers = nodes_at.get(src), nodes_at.get(dst)
        seen = ev.seen
        if senders:
            ev.sender = points[senders[0]].node
            sent = [seen[i] for i in senders if i in seen]
            if sent:
                ev.t_ns = ev.sent_ns = min(sent)
        if receivers:
            ev.receiver = points[receivers[0]].node
            got = [seen[i] for i in receivers if i in seen]
            if got:
                ev.received_ns = min(got)
    events.sort(key=lambda e: e.t_ns)
    return events
