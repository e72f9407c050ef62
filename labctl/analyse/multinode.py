"""One analysis of several capture points: every packet once, with where it went and how long it took.

``analyse_captures(paths)`` reads one or more captures (``points.py``), matches the sightings of each
packet (``matching.py``) and feeds every packet *once* (at its sender's time) through the usual
conversation analysis, so the figures are those of the packets on the wire, not of the sightings: a
packet seen at client and server is not a retransmission. The ``Analysis`` it returns carries a
``MultiNode``: the capture points, the events, and per conversation its ``Crossings`` (one-way times
each way, the packets lost and where they were last seen), which ``Analysis.tcp()``/``udp()`` attach
to each ``Conversation`` and its ladder.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from labctl.analyse.chunks import BLOCK, EPOCH_SPAN, PAD, Chunk, ReadInfo
from labctl.analyse.conversations import DEFAULT_DETAIL, Builder, feed_all
from labctl.analyse.matching import Event, match
from labctl.analyse.model import Analysis, Conversation
from labctl.analyse.points import CapturePoint, Captures, read_captures


def _ms(ns: float) -> float:
    return ns / 1e6


@dataclass
class LostPacket:
    """A packet that left its sender and never reached its destination's capture point."""

    label: str
    sender: str
    sent_ms: float           # since the conversation's first packet
    receiver: str
    last_seen: str           # the node of the last capture point that saw it
    last_seen_ms: float

    @property
    def text(self) -> str:
        where = "" if self.last_seen == self.sender else \
            f", last seen at {self.last_seen} at {self.last_seen_ms:.3f} ms"
        return (f"{self.label} left {self.sender} at {self.sent_ms:.3f} ms{where}, "
                f"never reached {self.receiver}")

    def as_dict(self) -> dict:
        return {"packet": self.label, "from": self.sender, "sent_ms": round(self.sent_ms, 6),
                "to": self.receiver, "last_seen": self.last_seen,
                "last_seen_ms": round(self.last_seen_ms, 6), "text": self.text}


@dataclass
class OneWay:
    """One-way times of the packets seen at both ends, one direction."""

    packets: int = 0
    min_ms: float | None = None
    median_ms: float | None = None
    max_ms: float | None = None

    @classmethod
    def of(cls, times_ns: list[int]) -> OneWay:
        if not times_ns:
            return cls()
        s = sorted(times_ns)
        n = len(s)
        med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
        return cls(n, _ms(s[0]), _ms(med), _ms(s[-1]))

    def as_dict(self) -> dict:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {"packets": self.packets, "min": r(self.min_ms), "median": r(self.median_ms),
                "max": r(self.max_ms)}

    @property
    def text(self) -> str:
        if not self.packets:
            return "no packet seen at both ends"
        spread = "" if self.packets == 1 else f" ({self.min_ms:.3f}–{self.max_ms:.3f})"
        return f"{self.packets} packet(s), one-way median {self.median_ms:.3f} ms{spread}"


@dataclass
class Crossings:
    """What the capture points say about one conversation."""

    client_node: str
    server_node: str
    to_server: OneWay
    to_client: OneWay
    lost: list[LostPacket]
    seen_at: list[str]       # capture point names
    files: list[str]

    def as_dict(self) -> dict:
        return {"files": self.files, "seen_at": self.seen_at, "client_node": self.client_node or None,
                "server_node": self.server_node or None,
                "one_way_ms": {"to_server": self.to_server.as_dict(), "to_client": self.to_client.as_dict()},
                "lost": [x.as_dict() for x in self.lost]}


@dataclass
class MultiNode:
    """The capture points of an analysis and its matched packets."""

    captures: Captures
    events: list[Event]
    by_conv: dict[tuple, list[Event]] = field(default_factory=dict)
    _memo: dict[tuple, Crossings] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for ev in self.events:
            if ev.conv is not None:
                self.by_conv.setdefault(ev.conv, []).append(ev)

    @property
    def points(self) -> list[CapturePoint]:
        return self.captures.points

    def conversation_events(self, proto: str, client: str, server: str, start: float, duration_ms: float
                            ) -> list[Event]:
        """The events of one conversation (its 4-tuple, between its first and last packet)."""
        evs = self.by_conv.get((proto, *sorted((client, server))), [])
        lo = round(start * 1e9) - 2000
        hi = lo + round(duration_ms * 1e6) + 4000
        return [e for e in evs if lo <= e.t_ns <= hi]

    def crossings(self, proto: str, client: str, server: str, start: float, duration_ms: float,
                  events: list[Event] | None = None) -> Crossings:
        """What the points saw of one conversation (computed once: the JSON, the ladders and the
        report all ask)."""
        evs = events if events is not None else self.conversation_events(proto, client, server, start,
                                                                         duration_ms)
        memo = (proto, client, id(evs[0]) if evs else start, len(evs))
        known = self._memo.get(memo)
        if known is None:
            known = self._memo[memo] = self._crossings(client, start, evs)
        return known

    def _crossings(self, client: str, start: float, evs: list[Event]) -> Crossings:
        base = evs[0].t_ns if evs else round(start * 1e9)
        pts = self.points
        up = [e.one_way_ns for e in evs if e.src == client and e.one_way_ns is not None]
        down = [e.one_way_ns for e in evs if e.src != client and e.one_way_ns is not None]
        lost = []
        for e in evs:
            if e.lost:
                i = max(e.seen, key=e.seen.__getitem__)
                lost.append(LostPacket(e.label, e.sender, _ms(e.sent_ns - base), e.receiver, pts[i].node,
                                       _ms(e.seen[i] - base)))
        seen = sorted({i for e in evs for i in e.seen})
        c_node = next((e.sender for e in evs if e.src == client and e.sender), "")
        s_node = next((e.sender for e in evs if e.src != client and e.sender), "") or \
            next((e.receiver for e in evs if e.src == client and e.receiver), "")
        c_node = c_node or next((e.receiver for e in evs if e.src != client and e.receiver), "")
        return Crossings(c_node, s_node, OneWay.of(up), OneWay.of(down), lost, [pts[i].name for i in seen],
                         sorted({pts[i].file for i in seen}))

    def annotate(self, conv: Conversation) -> None:
        """Attach the conversation's crossings, and to its ladder each packet's arrival or loss."""
        evs = self.conversation_events(conv.proto, conv.client, conv.server, conv.start, conv.duration_ms)
        conv.crossings = cr = self.crossings(conv.proto, conv.client, conv.server, conv.start,
                                             conv.duration_ms, evs)
        conv.client_node, conv.server_node = cr.client_node, cr.server_node
        if not conv.ladder or not evs:
            return
        base = evs[0].t_ns
        for from_client in (True, False):
            mine = [e for e in evs if (e.src == conv.client) == from_client]
            j = 0
            for p in conv.ladder:
                if p.from_client != from_client or p.label == "ICMP":
                    continue
                while j < len(mine) and _ms(mine[j].t_ns - base) < p.t_ms - 0.002:
                    j += 1
                if j >= len(mine) or abs(_ms(mine[j].t_ns - base) - p.t_ms) > 0.002:
                    continue
                e = mine[j]
                j += 1
                if e.one_way_ns is not None:
                    p.arrive_ms = p.t_ms + _ms(e.one_way_ns)
                    # the capture can only guess that a packet sent again was lost; the points know
                    p.notes = [n.replace("lost? sent again", "arrived, yet sent again") for n in p.notes]
                elif e.lost:
                    p.notes = [n.replace("lost? sent again", "sent again") for n in p.notes]
                    p.lost_to = e.receiver
                    node, at = max(((self.points[i].node, t) for i, t in e.seen.items()), key=lambda x: x[1])
                    p.last_seen = f"{node} at {_ms(at - base):.3f} ms"

    def report(self) -> NodeReport:
        """The whole capture's figures between nodes (for the summary)."""
        hops: dict[tuple[str, str], list[int]] = {}
        lost = []
        sent = arrived = only_received = 0
        for e in self.events:
            if e.sent_ns is not None and e.receiver:
                sent += 1
            w = e.one_way_ns
            if w is not None:
                arrived += 1
                hops.setdefault((e.sender, e.receiver), []).append(w)
            elif e.lost:
                lost.append(e)
            elif e.received_ns is not None and e.sender:
                only_received += 1
        conv_lost = []
        for e in lost:
            proto, a, b = e.conv if e.conv else ("ip", "", "")
            if e.conv and self.by_conv[e.conv][0].src == b:    # the client (who spoke first) first
                a, b = b, a
            first = self.by_conv[e.conv][0].t_ns if e.conv else e.t_ns    # (its conversation's start)
            i = max(e.seen, key=e.seen.__getitem__)
            conv_lost.append((f"{proto.upper()} {a} ⇄ {b}" if e.conv else "IP",
                              LostPacket(e.label, e.sender, _ms(e.sent_ns - first), e.receiver,
                                         self.points[i].node, _ms(e.seen[i] - first))))
        per_conv = []
        for key, evs in self.by_conv.items():
            client = evs[0].src
            server = key[1] if key[2] == client else key[2]
            per_conv.append((f"{key[0].upper()} {client} ⇄ {server}",
                             self.crossings(key[0], client, server, 0, 0, evs)))
        return NodeReport(list(self.points), sent, arrived, len(lost), only_received,
                          {f"{s} → {r}": OneWay.of(v) for (s, r), v in sorted(hops.items())}, conv_lost,
                          len(self.events), sum(p.packets for p in self.points), per_conv)


@dataclass
class NodeReport:
    """Between the nodes: the capture points, how many packets crossed, their one-way times, the lost."""

    points: list[CapturePoint]
    sent: int                # packets seen leaving a captured sender for a captured receiver
    arrived: int             # of which seen arriving
    lost: int
    only_received: int       # seen arriving but not leaving (the sender's capture started late?)
    hops: dict[str, OneWay]  # "client2 → server" -> one-way times
    lost_packets: list[tuple[str, LostPacket]]   # (conversation, packet)
    packets: int             # distinct packets
    sightings: int           # packets in the files (each point's count added up)
    conversations: list[tuple[str, Crossings]] = field(default_factory=list)   # each 4-tuple's

    def as_dict(self) -> dict:
        return {"capture_points": [p.as_dict() for p in self.points], "packets": self.packets,
                "sightings": self.sightings, "sent": self.sent, "arrived": self.arrived, "lost": self.lost,
                "seen_only_arriving": self.only_received,
                "one_way_ms": {k: v.as_dict() for k, v in self.hops.items()},
                "lost_packets": [dict(conversation=c, **x.as_dict()) for c, x in self.lost_packets]}

    def lines(self) -> list[str]:
        """The report in sentences (terminal and HTML)."""
        out = [f"{len(self.points)} capture points saw {self.sightings} packets: {self.packets} distinct "
               f"packets on the wire."]
        if self.sent:
            out.append(f"{self.sent} packet(s) left a captured node for another: {self.arrived} arrived, "
                       f"{self.lost} never did.")
        out += [f"{hop}: {ow.text}" for hop, ow in self.hops.items()]
        if len(self.points) > 1 and self.packets == self.sightings:
            out.append("No packet was seen at more than one point: were the nodes' captures of the same "
                       "traffic (and the files of the same run)?")
        if self.only_received:
            out.append(f"{self.only_received} packet(s) were seen arriving but not leaving (did the sender's "
                       "capture start late?).")
        return out


def analyse_captures(paths: list[str | Path], detail: int = DEFAULT_DETAIL) -> Analysis:
    """Read and match several capture points (one or more files) into one ``Analysis``."""
    captures = read_captures(paths)
    events = match(captures)
    captures.packets = []      # (the events keep one frame each; the other sightings' can go)
    fmt = "+".join(sorted(set(captures.formats)))
    info = ReadInfo(", ".join(captures.files), fmt)
    for pt in captures.points:
        if pt.linktype not in info.linktypes:
            info.linktypes.append(pt.linktype)
    info.warnings += captures.warnings
    b = Builder(detail)
    feed_all(b, _chunks(events, captures.points))
    return Analysis(info.path, info, b, MultiNode(captures, events))


def _chunks(events: list[Event], points: list[CapturePoint]):
    """Each event once, as pcap records with nanosecond fractions, a link type per chunk."""
    rec = struct.Struct("<IIII").pack
    epoch = 0
    if events and not 0 <= events[0].t_ns // 1_000_000_000 < EPOCH_SPAN - 10**6:
        epoch = events[0].t_ns // 1_000_000_000 - (EPOCH_SPAN >> 1)
    out: list[bytes] = []
    size = 0
    lt = None
    for ev in events:
        plt = points[ev.point].linktype
        if (plt != lt or size >= BLOCK) and out:
            yield _chunk(out, lt, epoch)
            out, size = [], 0
        lt = plt
        sec, ns = divmod(ev.t_ns, 1_000_000_000)
        sec = min(max(sec - epoch, 0), EPOCH_SPAN - 1)
        out.append(rec(sec, ns, len(ev.frame), ev.orig_len))
        out.append(ev.frame)
        size += 16 + len(ev.frame)
        ev.frame = b""       # (read once by the analysis; the events keep what the points saw)
    if out:
        yield _chunk(out, lt, epoch)


def _chunk(parts: list[bytes], linktype: int, epoch: int) -> Chunk:
    data = b"".join(parts)
    return Chunk(data + bytes(PAD), len(data), linktype, False, 1e-9, epoch=epoch)
