"""Ladders drawn as packets arrive (``capture --live``) or replayed from a file (``analyse --replay``).

:class:`LiveView` takes packets one by one (``packet(capture_point, StreamPacket)``). On a terminal it
redraws, ten times a second, one lane per conversation, TCP on the left and UDP on the right, each
lane the last arrows of that conversation (a packet seen at several capture points is one arrow, with
the one-way time between them); otherwise it prints one line per packet, as it comes. Sequence
numbers are relative to each side's first, as Wireshark shows them.
"""
from __future__ import annotations

import struct
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from labctl.analyse.decode import TCP, UDP, Decoder
from labctl.analyse.linktypes import LINK
from labctl.analyse.model import flag_text, split_key
from labctl.analyse.pcap_stream import StreamPacket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

ROWS = 10          # arrows kept per lane on the terminal
LANES = 6          # lanes per protocol on the terminal (the most recent)
ARROW = 36         # width of an arrow


@dataclass
class Arrow:
    """One packet in a lane: when first seen, which way, its label, where else it was seen and when."""

    t_ms: float
    to_server: bool
    label: str
    seen: list[tuple[str, float]] = field(default_factory=list)   # (capture point, ms)


@dataclass
class Lane:
    proto: str
    client: str
    server: str
    arrows: list[Arrow] = field(default_factory=list)
    bases: dict[bool, int] = field(default_factory=dict)          # first seq per direction
    packets: int = 0


def _ip_id(linktype: int, frame: bytes) -> int | None:
    link = LINK.get(linktype)
    ns = link(frame, 0, len(frame)) if link is not None else "not IP"
    if isinstance(ns, str) or ns[0] != 0x0800 or len(frame) < ns[1] + 6:
        return None
    return struct.unpack_from(">H", frame, ns[1] + 4)[0]


class LiveView:
    """Draws lanes as packets come; ``points`` names each capture point, ``names`` maps addresses to
    node names for the lane titles. Call :meth:`done` at the end (it leaves the last picture)."""

    def __init__(self, out: TextIO | None = None, points: list[str] | None = None,
                 names: dict[str, str] | None = None, *, terminal: bool | None = None,
                 linktypes: list[int] | None = None) -> None:
        self.out = out or sys.stdout
        self.points = points or []
        self.names = names or {}
        self.linktypes = linktypes or []
        self.terminal = self.out.isatty() if terminal is None else terminal
        self.lanes: OrderedDict[tuple[str, str, str], Lane] = OrderedDict()
        self.count = 0
        self.t0: int | None = None
        self._seen: dict[tuple, Arrow] = {}
        self._lock = threading.Lock()
        self._live = None
        self._decoder = Decoder()   # one per view: it holds fragments being reassembled

    # --- input ------------------------------------------------------------------------------------

    def packet(self, index: int, pkt: StreamPacket) -> None:
        frame = pkt.frame
        linktype = self.linktypes[index] if index < len(self.linktypes) else 1
        d = self._decoder.decode(linktype, frame, 0, len(frame), pkt.orig_len)
        if type(d) is list:        # a tunnel: the packet inside is the one to draw
            d = d[-1]
        if d is None:              # a fragment held until its datagram is whole
            return
        if self.t0 is None:
            self.t0 = pkt.ts_ns
        t_ms = (pkt.ts_ns - self.t0) / 1e6
        point = self.points[index] if index < len(self.points) else f"if{index}"
        if isinstance(d, str) or d[0] not in (TCP, UDP):
            if not self.terminal:
                self._line(t_ms, point, "other", "", "", d if isinstance(d, str) else d[-1])
            return
        proto, key, seq, ack, flags, _win, plen = d[:7]
        src, dst = split_key(key)
        with self._lock:
            self.count += 1
            lane, to_server = self._lane("tcp" if proto == TCP else "udp", src, dst)
            lane.packets += 1
            label = self._label(lane, to_server, proto, seq, ack, flags, plen)
            if not self.terminal:
                self._line(t_ms, point, lane.proto, src, dst, label)
                return
            fp = (key, seq, ack, flags, plen, _ip_id(linktype, frame))
            arrow = self._seen.get(fp)
            if arrow is not None and all(p != point for p, _ in arrow.seen):
                arrow.seen.append((point, t_ms))
                return
            arrow = Arrow(t_ms, to_server, label, [(point, t_ms)])
            self._seen[fp] = arrow
            if len(self._seen) > 4096:
                self._seen.pop(next(iter(self._seen)))
            lane.arrows.append(arrow)
            del lane.arrows[:-ROWS]
        self._start()

    def _lane(self, proto: str, src: str, dst: str) -> tuple[Lane, bool]:
        for k, to_server in (((proto, src, dst), True), ((proto, dst, src), False)):
            if k in self.lanes:
                self.lanes.move_to_end(k)
                return self.lanes[k], to_server
        self.lanes[(proto, src, dst)] = Lane(proto, src, dst)   # the first sender is the client
        return self.lanes[(proto, src, dst)], True

    def _label(self, lane: Lane, to_server: bool, proto: int, seq: int, ack: int, flags: int,
               plen: int) -> str:
        if proto == UDP:
            return f"UDP len={plen}"
        base = lane.bases.setdefault(to_server, seq)
        parts = [flag_text(flags), f"seq={(seq - base) & 0xFFFFFFFF}"]
        if flags & 0x10 and (not to_server) in lane.bases:
            parts.append(f"ack={(ack - lane.bases[not to_server]) & 0xFFFFFFFF}")
        if plen:
            parts.append(f"len={plen}")
        return " ".join(parts)

    def _name(self, endpoint: str) -> str:
        host = endpoint.rsplit(":", 1)[0].strip("[]")
        return self.names.get(host, host)

    # --- one line per packet ------------------------------------------------------------------------

    def _line(self, t_ms: float, point: str, proto: str, src: str, dst: str, label: str) -> None:
        try:
            self.out.write(f"{t_ms:10.3f} ms  {point:<14} {proto.upper():<5} {src:>21} → {dst:<21} "
                           f"{label}\n")
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    # --- the terminal picture -----------------------------------------------------------------------

    def _start(self) -> None:
        if self._live is not None or not self.terminal:
            return
        from rich.console import Console
        from rich.live import Live

        self._live = Live(console=Console(file=self.out, highlight=False), get_renderable=self.render,
                          refresh_per_second=10, transient=False, redirect_stdout=False,
                          redirect_stderr=False)
        self._live.start()

    def render(self):
        from rich.columns import Columns
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        with self._lock:
            lanes = list(self.lanes.values())
            groups = []
            for proto in ("tcp", "udp"):
                shown = [ln for ln in lanes if ln.proto == proto][-LANES:]
                panels = [Panel(Text("\n".join(self._arrow(a) for a in ln.arrows) or " "),
                                title=f"{self._name(ln.client)} {ln.client.rsplit(':', 1)[1]} ⇄ "
                                      f"{self._name(ln.server)} {ln.server.rsplit(':', 1)[1]}",
                                subtitle=f"{ln.packets} packets", title_align="left",
                                subtitle_align="right", expand=False)
                          for ln in shown]
                if panels:
                    groups.append(Group(Text(proto.upper(), style="bold"), *panels))
            head = Text(f"{self.count} packets", style="dim")
        return Group(head, Columns(groups, padding=(0, 2))) if groups else head

    @staticmethod
    def _arrow(a: Arrow) -> str:
        body = f" {a.label} ".center(ARROW - 2, "─")
        arrow = f"│{body}▶│" if a.to_server else f"│◀{body}│"
        seen = ""
        if a.seen:
            first, t = a.seen[0]
            seen = f" @{first.split('/')[0]}"
            for other, t2 in a.seen[1:]:
                seen += f" → {other.split('/')[0]} {t2 - t:.3f} ms"
        return f"{a.t_ms:9.3f} {arrow}{seen}"

    def done(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None


def replay(packets, view: LiveView, speed: float = 1.0, sleep=time.sleep) -> int:
    """Feed ``(capture point index, StreamPacket)`` pairs to ``view`` at their own pace / ``speed``."""
    first_ts = first_wall = None
    n = 0
    for index, pkt in packets:
        if first_ts is None:
            first_ts, first_wall = pkt.ts_ns, time.monotonic()
        due = first_wall + (pkt.ts_ns - first_ts) / 1e9 / speed
        wait = due - time.monotonic()
        if wait > 0:
            sleep(wait)
        view.packet(index, pkt)
        n += 1
    view.done()
    return n
