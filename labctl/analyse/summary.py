"""The summary of one capture: the facts every report shows, each protocol's totals, what to draw.

``summarise(analysis)`` computes it once, and the terminal, SVG and HTML renderers draw from the
``Summary`` alone. The totals are added up from every conversation's figures (``figures.py``) by
``Totals``; the JSON emitter adds up the same way while it writes the conversations' lines
(``json_report.py``), so both say the same.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from labctl.analyse.clients import Clients, Seen, see, seen_per_client, udp_clients
from labctl.analyse.figures import (
    TcpFigures,
    UdpFigures,
    tcp_figures,
    tcp_rows,
    tcp_times,
    udp_figures,
    udp_rows,
    udp_times,
)
from labctl.analyse.milliseconds import FloatClock, MicroClock, median
from labctl.analyse.model import Analysis, ByteCounts, Conversation
from labctl.analyse.resent import stories
from labctl.analyse.resent import totals as resent_totals

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from labctl.analyse.conversations import Builder
    from labctl.analyse.multinode import NodeReport

KNOWN_MAX = 16384        # distinct figures remembered while adding up
RESENT_LISTED = 20       # TCP conversations whose retransmissions the reports explain one by one


@dataclass
class ProtoSummary(ByteCounts):
    proto: str
    conversations: int = 0
    packets: int = 0
    bytes: int = 0
    payload_bytes: int = 0
    retransmissions: int = 0
    spurious_retransmissions: int = 0    # of the retransmissions: data already acknowledged (no loss)
    out_of_order: int = 0
    dup_acks: int = 0
    requests: int = 0            # UDP requests / TCP conversations opened by a client
    answered: int = 0            # UDP requests answered / TCP conversations where the server sent data
    refused: int = 0             # TCP connections refused with RST
    rtt_ms: float | None = None          # median handshake (TCP) / request-reply (UDP) time
    ttfb_ms: float | None = None         # median time to the first byte of the answer
    duration_ms: float | None = None     # median conversation duration
    packets_per_conversation: float | None = None
    bytes_per_conversation: float | None = None
    retransmitted: int = 0               # TCP conversations that sent something again (``resent.py``)
    retransmission_ms: float = 0.0       # the time their retransmissions added, all together
    retransmission_unknown: int = 0      # segments resent whose original this capture did not see

    @property
    def unanswered(self) -> int:
        return self.requests - self.answered

    def as_dict(self) -> dict:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {"conversations": self.conversations, "packets": self.packets, "bytes": self.bytes,
                "payload_bytes": self.payload_bytes, "header_bytes": self.header_bytes,
                "overhead_pct": round(self.overhead_pct, 1), "retransmissions": self.retransmissions,
                "out_of_order": self.out_of_order, "dup_acks": self.dup_acks,
                "requests": self.requests, "answered": self.answered, "unanswered": self.unanswered,
                "refused": self.refused, "rtt_ms_median": r(self.rtt_ms),
                "ttfb_ms_median": r(self.ttfb_ms), "duration_ms_median": r(self.duration_ms),
                "packets_per_conversation": r(self.packets_per_conversation),
                "bytes_per_conversation": r(self.bytes_per_conversation),
                "retransmitted_conversations": self.retransmitted,
                "retransmission_ms": round(self.retransmission_ms, 3),
                "retransmission_unknown": self.retransmission_unknown}


class Totals:
    """One protocol's sums, and its times counted by value (for the medians); mergeable."""

    def __init__(self, proto: str) -> None:
        self.s = ProtoSummary(proto)
        self.times: tuple[dict, dict, dict] = ({}, {}, {})   # rtt, ttfb, duration: value -> count
        self.add = self.add_tcp if proto == "tcp" else self.add_udp
        self.seen: dict[str, Seen] = {}   # UDP: client address -> what the capture holds of it (clients.py)

    def add_tcp(self, fig: TcpFigures, n: int) -> None:
        """``n`` conversations with the figures ``fig`` (their times: ``count_times``)."""
        s = self._add(fig, n)
        s.retransmissions += fig.retransmissions * n
        s.spurious_retransmissions += fig.spurious_retransmissions * n
        s.out_of_order += fig.out_of_order * n
        s.dup_acks += fig.dup_acks * n
        s.requests += n                  # a TCP conversation is one request ...
        if fig.server_payload > 0:
            s.answered += n              # ... answered when the server sent data
        if fig.refused:
            s.refused += n

    def add_udp(self, fig: UdpFigures, n: int) -> None:
        """``n`` conversations with the figures ``fig`` (their times: ``count_times``)."""
        s = self._add(fig, n)
        s.requests += fig.requests * n
        s.answered += (fig.requests - fig.unanswered) * n

    def _add(self, fig: TcpFigures | UdpFigures, n: int) -> ProtoSummary:
        s = self.s
        s.conversations += n
        s.packets += fig.packets * n
        s.bytes += fig.bytes * n
        s.payload_bytes += (fig.client_payload + fig.server_payload) * n
        return s

    def count_times(self, times: tuple, n: int) -> None:
        """``n`` conversations with these ``tcp_times``/``udp_times``."""
        for hist, v in zip(self.times, times):
            if v is not None:
                hist[v] = hist.get(v, 0) + n

    def merge(self, other: Totals) -> None:
        for f in ("conversations", "packets", "bytes", "payload_bytes", "retransmissions",
                  "spurious_retransmissions", "out_of_order", "dup_acks", "requests", "answered", "refused",
                  "retransmitted", "retransmission_ms", "retransmission_unknown"):
            setattr(self.s, f, getattr(self.s, f) + getattr(other.s, f))
        for mine, theirs in zip(self.times, other.times):
            for v, n in theirs.items():
                mine[v] = mine.get(v, 0) + n
        for addr, s in other.seen.items():
            see(self.seen, addr, (s.requests, s.replies))

    def finish(self, clock: FloatClock | MicroClock,
               resolve: Callable[[int], Callable[[int, int], tuple[float, float]]] | None = None
               ) -> ProtoSummary:
        """The summary with its medians; ``resolve(i)``: ``median``'s resolver of the i-th time."""
        s = self.s
        s.rtt_ms, s.ttfb_ms, s.duration_ms = (
            median(hist, clock, resolve(i) if resolve else None) for i, hist in enumerate(self.times))
        if s.conversations:
            s.packets_per_conversation = s.packets / s.conversations
            s.bytes_per_conversation = s.bytes / s.conversations
        return s


def totals(b: Builder) -> tuple[ProtoSummary, ProtoSummary]:
    """Every conversation's figures added up, times as floats (what the reports show)."""
    clock = FloatClock(b.times)
    tcp, udp = Totals("tcp"), Totals("udp")
    for rows, read, times, tot in ((tcp_rows(b, exact=False), tcp_figures, tcp_times, tcp),
                                   (udp_rows(b), udp_figures, udp_times, udp)):
        known: dict[tuple, list] = {}    # figures repeat: read and add up each distinct one once
        count_times = tot.count_times
        for *_, t0, k in rows:
            e = known.get(k)
            if e is None:
                if len(known) >= KNOWN_MAX:
                    _add_up(known, tot)
                e = known[k] = [read(k), 0]
            e[1] += 1
            count_times(times(e[0], clock, t0), 1)
        _add_up(known, tot)
    s = tcp.s
    s.retransmitted, s.retransmission_ms, s.retransmission_unknown = resent_totals(b)
    return tcp.finish(clock), udp.finish(clock)


def _add_up(known: dict[tuple, list], tot: Totals) -> None:
    for fig, n in known.values():
        tot.add(fig, n)
    known.clear()


def float_resolver(b: Builder, proto: str) -> Callable[[int], Callable[[int, int], tuple[float, float]]]:
    """For ``Totals.finish`` with MicroClock values: the floats of the conversations whose time ``i`` is
    ``lo`` or ``hi`` microseconds (the largest of ``lo``, the smallest of ``hi``)."""
    exact, floats = MicroClock(b.times), FloatClock(b.times)

    def metric(i: int) -> Callable[[int, int], tuple[float, float]]:
        def extremes(lo: int, hi: int) -> tuple[float, float]:
            x_lo = x_hi = None
            if proto == "tcp":
                rows = ((t0, tcp_figures(k)) for *_, t0, k in tcp_rows(b))
                times = tcp_times
            else:
                rows = ((t0, udp_figures(k)) for *_, t0, k in udp_rows(b))
                times = udp_times
            for t0, fig in rows:
                v = times(fig, exact, t0)[i]
                if v == lo:
                    x = times(fig, floats, t0)[i]
                    x_lo = x if x_lo is None or x > x_lo else x_lo
                elif v == hi:
                    x = times(fig, floats, t0)[i]
                    x_hi = x if x_hi is None or x < x_hi else x_hi
            return x_lo, x_hi

        return extremes

    return metric


# --- the summary the renderers draw ---------------------------------------------------------------

@dataclass
class Facts:
    """What every report says about the capture file itself."""

    path: str
    format: str
    link_types: list[str]
    packets: int
    bytes: int
    tcp_conversations: int
    udp_conversations: int
    not_analysed: dict[str, int]        # why -> packets
    ipv6_packets: int
    warnings: list[str]

    @classmethod
    def of(cls, analysis: Analysis) -> Facts:
        b = analysis.builder
        return cls(analysis.path, analysis.info.format, analysis.linktype_names, analysis.packets,
                   analysis.bytes, analysis.tcp_count, analysis.udp_count, dict(sorted(b.skipped.items())),
                   b.ipv6, analysis.warnings)


@dataclass
class Summary:
    """One capture, summarised: the facts, each protocol's totals, the conversations that can be drawn
    (those whose packets were kept, per protocol) and the first ``listed`` conversations."""

    facts: Facts
    tcp: ProtoSummary
    udp: ProtoSummary
    drawable: dict[str, list[Conversation]]
    listed: list[Conversation] = field(default_factory=list)
    nodes: NodeReport | None = None     # several capture points: between the nodes (multinode.py)
    resent: list[str] = field(default_factory=list)   # per TCP conversation that resent: what it cost
    resent_total: int = 0                             # how many did (``resent`` lists the first ones)
    clients: Clients | None = None     # per UDP client: did it get an answer (``clients.py``)

    def shown(self, proto: str, limit: int) -> list[Conversation]:
        """Conversations to draw: the first ``limit`` ordinary ones, then the first unusual one
        (retransmitted, refused, unanswered), or more unusual ones when there are no ordinary ones."""
        convs = self.drawable[proto]
        if limit <= 0 or not convs:
            return []
        normal = [c for c in convs if not c.unusual][:limit]
        odd = [c for c in convs if c.unusual]
        return normal + odd[:max(1, limit - len(normal))]


def summarise(analysis: Analysis, listed: int = 0, run: dict | None = None,
              captured: set[str] | None = None) -> Summary:
    """The summary of ``analysis``; ``listed``: how many conversations to list one by one (first TCP,
    then UDP); ``run``, ``captured``: the run's results and the nodes captured, for the UDP clients'
    verdicts (``clients.py``)."""
    tcp, udp = totals(analysis.builder)
    drawable: dict[str, list[Conversation]] = {"tcp": [], "udp": []}
    first: list[Conversation] = []
    for proto, convs in (("tcp", analysis.tcp()), ("udp", analysis.udp())):
        for c in convs:
            if c.ladder is None and len(first) >= listed:
                break        # (those with kept packets come first)
            if c.ladder is not None:
                drawable[proto].append(c)
            if len(first) < listed:
                first.append(c)
    nodes = analysis.multi.report() if analysis.multi is not None else None
    resent, n = stories(analysis.builder, RESENT_LISTED)
    clients = udp_clients(seen_per_client(analysis.builder), run, captured)  # (one pass over UDP)
    return Summary(Facts.of(analysis), tcp, udp, drawable, first, nodes, resent, n, clients)
