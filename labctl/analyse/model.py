"""What an analysis found, in the exercise's words: conversations, their packets and exchanges.

``Analysis`` wraps the builder's compact state and turns it into ``Conversation`` objects on demand
(``tcp()``, ``udp()``, ``conversations()``), so a capture with 100,000 conversations never holds
100,000 objects at once unless asked to.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from labctl.analyse import conversations as cv
from labctl.analyse import decode as dec
from labctl.analyse import tcp as T
from labctl.analyse import udp as U
from labctl.analyse import wire
from labctl.analyse.pcap import LINKTYPE_NAMES, ReadInfo

FLAG_NAMES = ((wire.SYN, "SYN"), (wire.FIN, "FIN"), (wire.RST, "RST"), (wire.PSH, "PSH"), (wire.ACK, "ACK"))


def flag_text(flags: int) -> str:
    """Wireshark-style flag label: SYN, SYN-ACK, ACK, PSH-ACK, FIN-ACK, RST, RST-ACK."""
    names = [n for bit, n in FLAG_NAMES if flags & bit]
    if flags & wire.SYN and flags & wire.ACK:
        return "SYN-ACK"
    return "-".join(names) if names else "(none)"


def endpoint(addr: bytes, port: int) -> str:
    import socket

    if len(addr) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"


def split_key(key: bytes) -> tuple[str, str]:
    """(source endpoint, destination endpoint) of a key."""
    n = (len(key) - 4) // 2
    sport = int.from_bytes(key[2 * n:2 * n + 2], "big")
    dport = int.from_bytes(key[2 * n + 2:], "big")
    return endpoint(key[:n], sport), endpoint(key[n:2 * n], dport)


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


@dataclass
class Exchange:
    """A request and its reply (UDP datagrams, or TCP bursts of data each way)."""

    request_ms: float | None
    request_bytes: int
    reply_ms: float | None
    reply_bytes: int
    replies: int = 0
    note: str = ""

    @property
    def answered(self) -> bool:
        return self.reply_ms is not None

    def as_dict(self) -> dict:
        return {"request_ms": _r(self.request_ms), "request_bytes": self.request_bytes,
                "reply_ms": _r(self.reply_ms), "reply_bytes": self.reply_bytes,
                "answered": self.answered, **({"note": self.note} if self.note else {})}


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

    @property
    def unanswered(self) -> int:
        return sum(1 for e in self.exchanges if e.request_ms is not None and not e.answered)

    @property
    def got_answer(self) -> bool:
        return self.server_payload > 0

    def as_dict(self) -> dict:
        d = {"proto": self.proto, "client": self.client, "server": self.server,
             "start": round(self.start, 6), "packets": self.packets, "bytes": self.bytes,
             "payload_bytes": self.payload_bytes, "client_payload_bytes": self.client_payload,
             "server_payload_bytes": self.server_payload, "header_bytes": self.header_bytes,
             "overhead_pct": round(self.overhead_pct, 1), "duration_ms": _r(self.duration_ms),
             "rtt_ms": _r(self.rtt_ms), "ttfb_ms": _r(self.ttfb_ms)}
        if self.proto == "tcp":
            d.update(retransmissions=self.retransmissions, fast_retransmissions=self.fast_retransmissions,
                     spurious_retransmissions=self.spurious_retransmissions,
                     out_of_order=self.out_of_order, dup_acks=self.dup_acks, syn=self.syn,
                     synack=self.synack, fin=self.fin, rst=self.rst, closed_by=self.closed_by,
                     handshake=self.handshake, refused=self.refused)
        else:
            d.update(requests=sum(1 for e in self.exchanges if e.request_ms is not None),
                     unanswered=self.unanswered)
        d["exchanges"] = [e.as_dict() for e in self.exchanges]
        return d


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else (t - t0) * 1000.0


@dataclass
class Analysis:
    """The result of analysing one capture file."""

    path: str
    info: ReadInfo
    builder: cv.Builder

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

    def tcp_spurious_retransmissions(self) -> int:
        """Retransmissions of data the other side had already acknowledged (no loss behind them)."""
        return sum(c[T.C_SPURIOUS] if type(c) is list else c[T.F_SPURIOUS] for c in self.builder.tcp.convs)

    @property
    def linktype_names(self) -> list[str]:
        return [LINKTYPE_NAMES.get(lt, str(lt)) for lt in self.info.linktypes]

    @property
    def tcp_count(self) -> int:
        return len(self.builder.tcp.convs)

    @property
    def udp_count(self) -> int:
        return len(self.builder.udp.convs)

    def tcp(self) -> Iterator[Conversation]:
        b = self.builder
        for i in range(len(b.tcp.convs)):
            yield tcp_conversation(i, b.tcp.flat(i), b.tcp.keys[i], b.tcp.detail_of(i), b.seconds)

    def udp(self) -> Iterator[Conversation]:
        b = self.builder
        for i, c in enumerate(b.udp.convs):
            yield udp_conversation(i, c, b.udp.icmp.get(c[U.U_KEY]), b.seconds)

    def conversations(self) -> Iterator[Conversation]:
        yield from self.tcp()
        yield from self.udp()

    def shown(self, proto: str, limit: int) -> list[Conversation]:
        """Conversations to draw: the first ``limit`` ordinary ones, then the first unusual one
        (retransmitted, refused, unanswered), or more unusual ones when there are no ordinary ones."""
        convs = [c for c in (self.tcp() if proto == "tcp" else self.udp()) if c.ladder is not None]
        if limit <= 0 or not convs:
            return []
        normal = [c for c in convs if not _unusual(c)][:limit]
        odd = [c for c in convs if _unusual(c)]
        return normal + odd[:max(1, limit - len(normal))]


def _unusual(c: Conversation) -> bool:
    return bool(c.retransmissions or c.refused or c.rst or c.unanswered or c.out_of_order)


def tcp_conversation(index: int, f, key: bytes, detail: list | None, seconds: Callable[[int], float]
                     ) -> Conversation:
    """A TCP conversation from its flat state ``f`` (see ``tcp.F_*``); times via ``seconds``."""
    a, b = split_key(key)
    # who is the client: whoever sent the SYN; without one, the side with the higher port
    syn_a, syn_b = f[T.F_SYN], f[T.F_SYN + 12]
    if syn_a or syn_b:
        cd = 0 if syn_a >= syn_b else 1
    elif f[T.F_SYNACK] or f[T.F_SYNACK + 12]:
        cd = 1 if f[T.F_SYNACK] else 0
    else:
        cd = 0 if _port(a) >= _port(b) else 1
    sd = 1 - cd
    c_, s_ = 12 * cd, 12 * sd
    t0 = seconds(f[T.F_FIRST])
    bursts = [(f[i], seconds(f[i + 1]), f[i + 2]) for i in range(T.F_SIZE, len(f), 3)]
    exchanges: list[Exchange] = []
    for d, first, nbytes in bursts:
        if d == cd:
            exchanges.append(Exchange(_ms(first, t0), nbytes, None, 0))
        elif exchanges and exchanges[-1].reply_ms is None:
            exchanges[-1].reply_ms = _ms(first, t0)
            exchanges[-1].reply_bytes = nbytes
            exchanges[-1].replies = 1
        else:
            exchanges.append(Exchange(None, 0, _ms(first, t0), nbytes, 1))
    first_server = next((first for d, first, _ in bursts if d == sd), None)
    fin_c, fin_s = f[T.F_FIN + c_], f[T.F_FIN + s_]
    fin_c = None if fin_c < 0 else seconds(fin_c)
    fin_s = None if fin_s < 0 else seconds(fin_s)
    rst_c, rst_s = f[T.F_RST + c_], f[T.F_RST + s_]
    closed_by = None
    if fin_c is not None or fin_s is not None:
        closed_by = "client" if fin_s is None or (fin_c is not None and fin_c <= fin_s) else "server"
    elif rst_c or rst_s:
        closed_by = "client (RST)" if rst_c and not rst_s else "server (RST)"
    refused = bool(rst_s) and not (f[T.F_SYNACK + s_]) and bool(f[T.F_SYN + c_])
    irtt = None if f[T.F_IRTT] < 0 else seconds(f[T.F_IRTT]) - seconds(f[T.F_IRTT0])
    handshake = bool(f[T.F_SYN + c_] and f[T.F_SYNACK + s_] and irtt is not None)
    conv = Conversation(
        proto="tcp", index=index, client=(a, b)[cd], server=(a, b)[sd], start=t0,
        packets=f[T.F_PKTS], bytes=f[T.F_BYTES], payload_bytes=f[T.F_PAY] + f[T.F_PAY + 12],
        client_payload=f[T.F_PAY + c_], server_payload=f[T.F_PAY + s_],
        duration_ms=(seconds(f[T.F_LAST]) - t0) * 1000.0,
        rtt_ms=None if irtt is None else irtt * 1000.0,
        ttfb_ms=_ms(first_server, t0), retransmissions=f[T.F_RETRANS],
        fast_retransmissions=f[T.F_FASTRT], spurious_retransmissions=f[T.F_SPURIOUS],
        out_of_order=f[T.F_OOO], dup_acks=f[T.F_DUPACK], syn=syn_a + syn_b,
        synack=f[T.F_SYNACK] + f[T.F_SYNACK + 12],
        fin=(fin_c is not None) + (fin_s is not None), rst=rst_c + rst_s, closed_by=closed_by,
        refused=refused, handshake=handshake, exchanges=exchanges)
    if detail is not None:
        conv.ladder = _tcp_ladder(detail, [f[T.F_ISN], f[T.F_ISN + 12]], cd, t0, seconds)
    return conv


def _port(ep: str) -> int:
    return int(ep.rsplit(":", 1)[1])


def _tcp_ladder(detail: list, isns: list[int], cd: int, t0: float, seconds: Callable[[int], float]
                ) -> list[Packet]:
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
        out.append(Packet((seconds(t) - t0) * 1000.0, d == cd, flag_text(flags), rseq, rack, plen, orig))
    # point at the original of each retransmission: the picture then tells its story
    for i, p in enumerate(out):
        if any(n in ("retransmission", "fast retransmission") for n in p.notes):
            for q in out[:i]:
                if (q.from_client == p.from_client and q.seq == p.seq and q.length == p.length
                        and q.label == p.label and not q.notes):
                    q.notes.append(f"lost? sent again at {p.t_ms:.1f} ms")
                    break
    return out


def udp_conversation(index: int, c: list, icmp: list | None, seconds: Callable[[int], float]
                     ) -> Conversation:
    a, b = split_key(c[U.U_KEY])
    t0 = seconds(c[U.U_FIRST])
    exchanges = []
    for i in range(U.U_SIZE, len(c), 5):
        rq, rqb, rp, rpb, n = c[i:i + 5]
        exchanges.append(Exchange(None if rq < 0 else _ms(seconds(rq), t0), rqb,
                                  None if rp < 0 else _ms(seconds(rp), t0), rpb, n))
    for num, _ts, text in icmp or ():
        if 0 <= num < len(exchanges):
            exchanges[num].note = text
    first_reply = next((e.reply_ms for e in exchanges if e.reply_ms is not None), None)
    rtt = next((e.reply_ms - e.request_ms for e in exchanges
                if e.reply_ms is not None and e.request_ms is not None), None)
    conv = Conversation(
        proto="udp", index=index, client=a, server=b, start=t0, packets=c[U.U_PKTS],
        bytes=c[U.U_BYTES], payload_bytes=c[U.U_PAY] + c[U.U_PAY + 1], client_payload=c[U.U_PAY],
        server_payload=c[U.U_PAY + 1], duration_ms=(seconds(c[U.U_LAST]) - t0) * 1000.0, rtt_ms=rtt,
        ttfb_ms=first_reply, exchanges=exchanges)
    if c[U.U_DETAIL] is not None:
        lad: list[Packet] = []
        for t, d, kind, _s, _a, plen, orig, text in c[U.U_DETAIL]:
            if kind == -1:
                lad.append(Packet((seconds(t) - t0) * 1000.0, False, "ICMP", None, None, 0, orig, [text]))
            else:
                lad.append(Packet((seconds(t) - t0) * 1000.0, d == 0, "UDP", None, None, plen, orig))
        conv.ladder = lad
    return conv


def median(xs) -> float | None:
    xs = sorted(xs) if not isinstance(xs, list) else sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2
