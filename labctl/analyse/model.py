"""A capture's conversations in the exercise's words: Analysis, Conversation, Exchange, Packet.

``analyse_file`` (``__init__.py``) returns an ``Analysis``: the capture's facts (packets, bytes, link
types, what was not analysed, warnings) and its conversations' compact state. ``tcp()``, ``udp()`` and
``conversations()`` turn that into ``Conversation`` objects one at a time (from ``figures.py``, with
times as floats: ``milliseconds.FloatClock``), so a capture of 100,000 conversations never holds
100,000 objects at once unless asked to. Only the conversations whose packets were kept (the first
``detail`` of each protocol) come with a ``ladder``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from labctl.analyse import decode as dec
from labctl.analyse import wire
from labctl.analyse.conversations import Builder
from labctl.analyse.figures import (
    TCP_CLIENT,
    tcp_figures,
    tcp_rows,
    tcp_times,
    udp_figures,
    udp_rows,
    udp_times,
)
from labctl.analyse.milliseconds import FloatClock
from labctl.analyse.pcap import LINKTYPE_NAMES, ReadInfo
from labctl.analyse.resent import Resent, cost_ms, explain, segments
from labctl.analyse.tcp import F_ISN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from labctl.analyse.multinode import Crossings, MultiNode

FLAG_NAMES = ((wire.SYN, "SYN"), (wire.FIN, "FIN"), (wire.RST, "RST"), (wire.PSH, "PSH"), (wire.ACK, "ACK"))


def split_key(key: bytes) -> tuple[str, str]:
    """(source endpoint, destination endpoint) of a key: "10.0.0.1:80", "[2001:db8::1]:80"."""
    import socket

    n = (len(key) - 4) // 2
    fam = socket.AF_INET if n == 4 else socket.AF_INET6
    a, b = socket.inet_ntop(fam, key[:n]), socket.inet_ntop(fam, key[n:2 * n])
    if n != 4:
        a, b = f"[{a}]", f"[{b}]"
    return f"{a}:{key[2 * n] << 8 | key[2 * n + 1]}", f"{b}:{key[2 * n + 2] << 8 | key[2 * n + 3]}"


def flag_text(flags: int) -> str:
    """Wireshark-style flag label: SYN, SYN-ACK, ACK, PSH-ACK, FIN-ACK, RST, RST-ACK."""
    names = [n for bit, n in FLAG_NAMES if flags & bit]
    if flags & wire.SYN and flags & wire.ACK:
        return "SYN-ACK"
    return "-".join(names) if names else "(none)"


@dataclass
class Packet:
    """One packet of a conversation shown as a ladder (client/server view)."""

    t_ms: float          # since the conversation's first packet
    from_client: bool
    label: str           # SYN, SYN-ACK, PSH-ACK, UDP, ...
    seq: int | None      # relative
    ack: int | None      # relative (None when the ACK flag is not set)
    length: int          # payload bytes
    wire: int            # frame bytes on the wire
    notes: list[str] = field(default_factory=list)   # retransmission, duplicate ACK, ...
    # with several capture points (multinode.py): when it reached the other end, or where it was lost
    arrive_ms: float | None = None   # since the conversation's first packet, at the receiver
    lost_to: str = ""                # the node it never reached
    last_seen: str = ""              # "server at 12.300 ms"

    @property
    def one_way_ms(self) -> float | None:
        return None if self.arrive_ms is None else self.arrive_ms - self.t_ms


@dataclass
class Exchange:
    """A request and its reply (UDP datagrams, or TCP bursts of data each way)."""

    request_ms: float | None
    request_bytes: int
    reply_ms: float | None
    reply_bytes: int
    note: str = ""

    @property
    def answered(self) -> bool:
        return self.reply_ms is not None


class ByteCounts:
    """Bytes on the wire vs payload, for anything with ``bytes`` and ``payload_bytes``."""

    bytes: int
    payload_bytes: int

    @property
    def header_bytes(self) -> int:
        return self.bytes - self.payload_bytes

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.header_bytes / self.bytes if self.bytes else 0.0


@dataclass
class Conversation(ByteCounts):
    proto: str                   # "tcp" or "udp"
    index: int                   # order of first packet within its protocol
    client: str
    server: str
    start: float                 # capture time of the first packet (seconds since the epoch)
    packets: int
    bytes: int                   # frame lengths on the wire
    payload_bytes: int
    client_payload: int
    server_payload: int
    duration_ms: float
    rtt_ms: float | None = None          # TCP: SYN -> ACK of the handshake; UDP: first request -> reply
    ttfb_ms: float | None = None         # first packet -> first payload byte from the server
    retransmissions: int = 0
    fast_retransmissions: int = 0
    spurious_retransmissions: int = 0
    out_of_order: int = 0
    dup_acks: int = 0
    syn: int = 0
    synack: int = 0
    fin: int = 0
    rst: int = 0
    closed_by: str | None = None         # "client", "server", "client (RST)", ...
    refused: bool = False
    handshake: bool = False
    exchanges: list[Exchange] = field(default_factory=list)
    ladder: list[Packet] | None = None
    client_node: str = ""                # with several capture points: the nodes at either end,
    server_node: str = ""
    crossings: Crossings | None = None   # and what the points saw of it (multinode.Crossings)
    resent: list[Resent] = field(default_factory=list)   # TCP: the segments sent again (``resent.py``)
    retransmission_ms: float | None = None   # TCP: the time they added (None: none resent, or not known)

    @property
    def retransmission_story(self) -> str:
        """TCP: its retransmissions and what they cost, in one sentence."""
        return explain(self.resent, self.handshake or bool(self.syn))

    @property
    def unanswered(self) -> int:
        return sum(1 for e in self.exchanges if e.request_ms is not None and not e.answered)

    @property
    def got_answer(self) -> bool:
        return self.server_payload > 0

    @property
    def unusual(self) -> bool:
        """Retransmitted, refused, reset, unanswered or out of order: worth a ladder of its own."""
        return bool(self.retransmissions or self.refused or self.rst or self.unanswered or self.out_of_order)


@dataclass
class Analysis:
    """One capture file read into its conversations."""

    path: str
    info: ReadInfo
    builder: Builder
    multi: MultiNode | None = None     # several capture points (multinode.py): what each saw

    @property
    def packets(self) -> int:
        return self.builder.packets

    @property
    def bytes(self) -> int:
        return self.builder.bytes

    @property
    def warnings(self) -> list[str]:
        w = list(self.info.warnings)
        for reason, n in sorted(self.builder.skipped.items()):
            if reason in (dec.SKIP_CUT, dec.SKIP_BAD):
                w.append(f"{n} packet(s) {reason}: not analysed" + (
                    f" (snapshot length {self.info.snaplen}; capture with -s 0)"
                    if reason == dec.SKIP_CUT else ""))
        return w + list(self.builder.notes)

    @property
    def linktype_names(self) -> list[str]:
        return [LINKTYPE_NAMES.get(lt, str(lt)) for lt in self.info.linktypes]

    @property
    def tcp_count(self) -> int:
        return len(self.builder.tcp)

    @property
    def udp_count(self) -> int:
        return len(self.builder.udp)

    def tcp(self) -> Iterator[Conversation]:
        b = self.builder
        clock = FloatClock(b.times)
        for i, (ca, cp, sa, sp, t0, k) in enumerate(tcp_rows(b, exact=False)):
            conv = tcp_conversation(i, f"{ca}:{cp}", f"{sa}:{sp}", t0, k, clock)
            if i in b.tcp.resent:
                conv.resent = segments(b, i, k[TCP_CLIENT], t0)
                conv.retransmission_ms = cost_ms(conv.resent)
            detail = b.tcp.detail_of(i)
            if detail is not None:
                f = b.tcp.flat(i)
                isns = [f[F_ISN], f[F_ISN + 12]]
                conv.ladder = _tcp_ladder(detail, isns, k[TCP_CLIENT], t0, b.times.seconds)
            if self.multi is not None:
                self.multi.annotate(conv)
            yield conv

    def udp(self) -> Iterator[Conversation]:
        b = self.builder
        clock = FloatClock(b.times)
        for i, (ca, cp, sa, sp, t0, k) in enumerate(udp_rows(b)):
            conv = udp_conversation(i, f"{ca}:{cp}", f"{sa}:{sp}", t0, k, clock)
            detail = b.udp.detail_of(i)
            if detail is not None:
                conv.ladder = _udp_ladder(detail, t0, b.times.seconds)
            if self.multi is not None:
                self.multi.annotate(conv)
            yield conv

    def conversations(self) -> Iterator[Conversation]:
        yield from self.tcp()
        yield from self.udp()


def tcp_conversation(index: int, client: str, server: str, t0: int, k: tuple, clock: FloatClock
                     ) -> Conversation:
    """A TCP conversation from its figures (``figures.tcp_rows``)."""
    fig = tcp_figures(k)
    since = clock.since
    exchanges = [Exchange(None if rq is None else since(t0, rq), rqb,
                          None if rp is None else since(t0, rp), rpb) for rq, rqb, rp, rpb in fig.exchanges]
    rtt, ttfb, duration = tcp_times(fig, clock, t0)
    return Conversation(
        proto="tcp", index=index, client=client, server=server, start=clock.seconds(t0),
        packets=fig.packets, bytes=fig.bytes, payload_bytes=fig.client_payload + fig.server_payload,
        client_payload=fig.client_payload, server_payload=fig.server_payload, duration_ms=duration,
        rtt_ms=rtt, ttfb_ms=ttfb,
        retransmissions=fig.retransmissions, fast_retransmissions=fig.fast_retransmissions,
        spurious_retransmissions=fig.spurious_retransmissions, out_of_order=fig.out_of_order,
        dup_acks=fig.dup_acks, syn=fig.syn, synack=fig.synack, fin=fig.fin, rst=fig.rst,
        closed_by=fig.closed_by, refused=fig.refused, handshake=fig.handshake, exchanges=exchanges)


def udp_conversation(index: int, client: str, server: str, t0: int, k: tuple, clock: FloatClock
                     ) -> Conversation:
    """A UDP conversation from its figures (``figures.udp_rows``)."""
    fig = udp_figures(k)
    since = clock.since
    exchanges = [Exchange(None if rq is None else since(t0, rq), rqb,
                          None if rp is None else since(t0, rp), rpb, note or "")
                 for rq, rqb, rp, rpb, note in fig.exchanges]
    rtt, ttfb, duration = udp_times(fig, clock, t0)
    return Conversation(
        proto="udp", index=index, client=client, server=server, start=clock.seconds(t0),
        packets=fig.packets, bytes=fig.bytes, payload_bytes=fig.client_payload + fig.server_payload,
        client_payload=fig.client_payload, server_payload=fig.server_payload, duration_ms=duration,
        rtt_ms=rtt, ttfb_ms=ttfb, exchanges=exchanges)


def _tcp_ladder(detail: list, isns: list[int], cd: int, t0: int, seconds) -> list[Packet]:
    """The packets kept for a TCP conversation, with sequence numbers relative to each side's first."""
    start = seconds(t0)
    isn = [None if x < 0 else x for x in isns]
    out: list[Packet] = []
    for rec in detail:
        if rec[0] == "note":
            if out:
                out[-1].notes.append(rec[1])
            continue
        t, d, flags, seq, ack_sw, plen, orig, _win = rec
        base = isn[d]
        if base is None:   # no SYN seen in this direction: count from the first sequence number
            base = isn[d] = (seq - 1) & wire.M32 if not flags & wire.SYN else seq
        rseq = (seq - base) & wire.M32
        rack = None
        if flags & wire.ACK:
            ack = wire.swap32(ack_sw)
            obase = isn[1 - d]
            if obase is None:
                obase = isn[1 - d] = (ack - 1) & wire.M32
            rack = (ack - obase) & wire.M32
        out.append(Packet((seconds(t) - start) * 1000.0, d == cd, flag_text(flags), rseq, rack, plen, orig))
    # point at the original of each retransmission: the picture then tells its story
    for i, p in enumerate(out):
        if any(n in ("retransmission", "fast retransmission") for n in p.notes):
            for q in out[:i]:
                if (q.from_client == p.from_client and q.seq == p.seq and q.length == p.length
                        and q.label == p.label and not q.notes):
                    q.notes.append(f"lost? sent again at {p.t_ms:.1f} ms")
                    break
    return out


def _udp_ladder(detail: list, t0: int, seconds) -> list[Packet]:
    """The datagrams (and ICMP errors) kept for a UDP conversation."""
    start = seconds(t0)
    out: list[Packet] = []
    for t, d, kind, _s, _a, plen, orig, text in detail:
        if kind == -1:
            out.append(Packet((seconds(t) - start) * 1000.0, False, "ICMP", None, None, 0, orig, [text]))
        else:
            out.append(Packet((seconds(t) - start) * 1000.0, d == 0, "UDP", None, None, plen, orig))
    return out
