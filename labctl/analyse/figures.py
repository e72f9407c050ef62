"""Each conversation's figures: what the reports say about it, decided once from its compact state.

``tcp_rows(b)`` and ``udp_rows(b)`` walk the conversations in order of first packet and yield
``(client ip, client port, server ip, server port, start, figures)``. ``figures`` is a tuple of ints
(layout below): counts, bytes, and times as offsets from the start (``wire.py``'s form; a clock of
``milliseconds.py`` reads them). It is compact and hashable, so conversations with the same figures
can share their text (``json_report.py``). ``tcp_figures``/``udp_figures`` read a figures tuple in
the reports' words (who closed, refused, the exchanges); the JSON lines, the totals (``summary.py``)
and the conversations drawn (``model.py``) all come from them.

Which side is the TCP client, decided here and nowhere else: whoever sent the SYN (the side that sent
more, the first sender on a tie); without one, the side that did not send the SYN-ACK; without either,
the side with the higher port. The UDP client is whoever sent the first datagram.
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from labctl.analyse import tcp as T
from labctl.analyse import udp as U
from labctl.analyse.wire import M32

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from labctl.analyse.conversations import Builder
    from labctl.analyse.milliseconds import FloatClock, MicroClock

# TCP figures, where a value comes twice it is per direction (0: the first packet's sender, 1: the other):
# (the client's direction, packets, bytes, payload 0, payload 1, last packet, handshake ACK or None,
#  the SYN it answered or None, retransmissions, out-of-order, duplicate ACKs, spurious retransmissions,
#  fast retransmissions, SYNs 0, SYNs 1, SYN-ACKs 0, SYN-ACKs 1, FIN 0 sent?, FIN 1 sent?, the client's
#  first FIN not after the server's?, RSTs 0, RSTs 1, bursts: ((direction, first byte, bytes), ...) flat)
# A conversation of one burst (the daytime server's) has its burst's three values in place of the
# tuple (no tuple to build for it): ``_tcp_whole`` puts it back.
TCP_CLIENT, TCP_BURSTS = 0, 22
# UDP figures: (packets, bytes, client payload, server payload, last packet, exchanges: ((request or
# None, request bytes, reply or None, reply bytes, ICMP note or None), ...) flat). A conversation of one
# answered exchange has (request bytes, reply, reply bytes) in place of the tuple (its request is the
# first packet, offset 0): ``_udp_whole`` puts it back.
UDP_EXCHANGES = 5

_V4 = struct.Struct("!4s4sHH").unpack


def _learn(ips: dict[bytes, str], addr: bytes) -> str:
    """The text of an IPv4 address (as inet_ntop writes it), kept in ``ips``."""
    text = ips[addr] = "%d.%d.%d.%d" % (addr[0], addr[1], addr[2], addr[3])  # noqa: UP031
    return text


def _ends(key: bytes, ips: dict[bytes, str]) -> tuple[str, int, str, int]:
    """(source ip, source port, destination ip, destination port) of a key; ``ips`` caches the texts."""
    if len(key) == 12:
        ip_a, ip_b, port_a, port_b = _V4(key)
        return ips.get(ip_a) or _learn(ips, ip_a), port_a, ips.get(ip_b) or _learn(ips, ip_b), port_b
    v6 = socket.AF_INET6
    return (f"[{socket.inet_ntop(v6, key[:16])}]", key[32] << 8 | key[33],
            f"[{socket.inet_ntop(v6, key[16:32])}]", key[34] << 8 | key[35])


def tcp_rows(b: Builder, exact: bool = True) -> Iterator[tuple[str, int, str, int, int, tuple]]:
    """Every TCP conversation as (client ip, client port, server ip, server port, start, figures).

    ``exact``: order the two FINs by their exact times (a MicroClock reads the figures); otherwise by
    their float seconds, as a FloatClock's figures mean.
    """
    f_syn0, f_syn1, f_sa0, f_sa1 = T.F_SYN, T.F_SYN + 12, T.F_SYNACK, T.F_SYNACK + 12
    f_fin0, f_fin1, f_rst0, f_rst1 = T.F_FIN, T.F_FIN + 12, T.F_RST, T.F_RST + 12
    f_pay0, f_pay1, f_first, f_last = T.F_PAY, T.F_PAY + 12, T.F_FIRST, T.F_LAST
    f_pkts, f_bytes, f_irtt, f_irtt0 = T.F_PKTS, T.F_BYTES, T.F_IRTT, T.F_IRTT0
    f_re, f_ooo, f_dup, f_sp, f_fast = T.F_RETRANS, T.F_OOO, T.F_DUPACK, T.F_SPURIOUS, T.F_FASTRT
    f_size = T.F_SIZE
    s_next, s_size, s_other, c_first = T.S_NEXTSEQ, T.S_SIZE, T.S_OTHER, T.C_FIRST
    seconds, ticks = b.times.seconds, b.times.ticks
    ips: dict[bytes, str] = {}
    v4 = _V4
    keys = b.tcp.keys
    for idx, c in enumerate(b.tcp.convs):
        f = c if type(c) is not list else c[s_next:s_size] + c[s_other][s_next:s_size] + c[c_first:]
        key = keys[idx]
        if len(key) == 12:               # (_ends, inline: a call per conversation costs 1 %)
            ip_a, ip_b, port_a, port_b = v4(key)
            a = ips.get(ip_a) or _learn(ips, ip_a)
            z = ips.get(ip_b) or _learn(ips, ip_b)
        else:
            a, port_a, z, port_b = _ends(key, ips)
        syn0, syn1, sa0, sa1 = f[f_syn0], f[f_syn1], f[f_sa0], f[f_sa1]
        if syn0 or syn1:                 # the client (see the module's docstring)
            cd = syn0 < syn1
        elif sa0 or sa1:
            cd = sa0 != 0
        else:
            cd = port_a < port_b
        t0 = f[f_first]
        fin0, fin1 = f[f_fin0], f[f_fin1]
        if fin0 < 0 or fin1 < 0:
            fin_order = True
        elif not exact:
            fin_order = seconds(fin1) <= seconds(fin0) if cd else seconds(fin0) <= seconds(fin1)
        elif (fin0 ^ fin1) & M32:        # different seconds
            fin_order = ticks(fin1) <= ticks(fin0) if cd else ticks(fin0) <= ticks(fin1)
        else:
            fin_order = fin1 <= fin0 if cd else fin0 <= fin1
        irtt = f[f_irtt]
        n = len(f)
        if n == f_size + 3:              # one burst
            k = (cd, f[f_pkts], f[f_bytes], f[f_pay0], f[f_pay1], f[f_last] - t0,
                 irtt - t0 if irtt >= 0 else None, f[f_irtt0] - t0 if irtt >= 0 else None, f[f_re],
                 f[f_ooo], f[f_dup], f[f_sp], f[f_fast], syn0, syn1, sa0, sa1, fin0 >= 0, fin1 >= 0,
                 fin_order, f[f_rst0], f[f_rst1], f[f_size], f[f_size + 1] - t0, f[f_size + 2])
        else:
            k = (cd, f[f_pkts], f[f_bytes], f[f_pay0], f[f_pay1], f[f_last] - t0,
                 irtt - t0 if irtt >= 0 else None, f[f_irtt0] - t0 if irtt >= 0 else None, f[f_re],
                 f[f_ooo], f[f_dup], f[f_sp], f[f_fast], syn0, syn1, sa0, sa1, fin0 >= 0, fin1 >= 0,
                 fin_order, f[f_rst0], f[f_rst1],
                 tuple(x for i in range(f_size, n, 3) for x in (f[i], f[i + 1] - t0, f[i + 2])))
        if cd:
            yield z, port_b, a, port_a, t0, k
        else:
            yield a, port_a, z, port_b, t0, k


def udp_rows(b: Builder) -> Iterator[tuple[str, int, str, int, int, tuple]]:
    """Every UDP conversation as (client ip, client port, server ip, server port, start, figures)."""
    u_first, u_last, u_pkts, u_bytes = U.U_FIRST, U.U_LAST, U.U_PKTS, U.U_BYTES
    u_pay, u_key = U.U_PAY, U.U_KEY
    u_size, ex_size = U.U_SIZE, U.EX_SIZE
    ips: dict[bytes, str] = {}
    v4 = _V4
    icmp = b.udp.icmp
    for c in b.udp.convs:
        key = c[u_key]
        if len(key) == 12:               # (_ends, inline: a call per conversation costs 1 %)
            ip_a, ip_b, port_a, port_b = v4(key)
            a = ips.get(ip_a) or _learn(ips, ip_a)
            z = ips.get(ip_b) or _learn(ips, ip_b)
        else:
            a, port_a, z, port_b = _ends(key, ips)
        t0 = c[u_first]
        n = len(c)
        notes = icmp.get(key) if icmp else None
        if n == u_size + ex_size and not notes and c[u_size + 2] >= 0:    # one answered exchange
            k = (c[u_pkts], c[u_bytes], c[u_pay], c[u_pay + 1], c[u_last] - t0, c[u_size + 1],
                 c[u_size + 2] - t0, c[u_size + 3])
        else:
            texts = {num: text for num, _, text in notes} if notes else {}
            k = (c[u_pkts], c[u_bytes], c[u_pay], c[u_pay + 1], c[u_last] - t0, tuple(
                x for j, i in enumerate(range(u_size, n, ex_size)) for x in (
                    None if c[i] < 0 else c[i] - t0, c[i + 1], None if c[i + 2] < 0 else c[i + 2] - t0,
                    c[i + 3], texts.get(j))))
        yield a, port_a, z, port_b, t0, k


def _tcp_whole(k: tuple) -> tuple:
    """TCP figures with their bursts as one tuple (``tcp_rows`` flattens a single burst)."""
    return k if len(k) == TCP_BURSTS + 1 else (*k[:TCP_BURSTS], k[TCP_BURSTS:])


def _udp_whole(k: tuple) -> tuple:
    """UDP figures with their exchanges as one tuple (``udp_rows`` flattens a single answered one)."""
    return k if len(k) == UDP_EXCHANGES + 1 else (*k[:UDP_EXCHANGES], (0, k[5], k[6], k[7], None))


CLOSED_BY = (None, "client", "server", "client (RST)", "server (RST)")


@dataclass
class TcpFigures:
    """One TCP conversation in the reports' words; times are offsets from its start."""

    packets: int
    bytes: int
    client_payload: int
    server_payload: int
    last: int                     # the last packet
    handshake_ack: int | None     # the ACK that completed the handshake, and the SYN it answered
    handshake_syn: int | None
    retransmissions: int
    fast_retransmissions: int
    spurious_retransmissions: int
    out_of_order: int
    dup_acks: int
    syn: int
    synack: int
    fin: int                      # how many sides sent a FIN
    rst: int
    closed_by: str | None         # who sent the first FIN: "client", "server"; else "client (RST)", ...
    handshake: bool               # the client's SYN, the server's SYN-ACK and the ACK were all seen
    refused: bool                 # the client's SYN was answered by RST, never SYN-ACK
    exchanges: list[tuple[int | None, int, int | None, int]]   # (request, bytes, reply, bytes)
    first_reply: int | None       # the server's first payload byte


def tcp_figures(k: tuple) -> TcpFigures:
    (cd, pkts, nbytes, pay0, pay1, last, ack, syn, re, ooo, dup, sp, fast, syn0, syn1, sa0, sa1, fin0,
     fin1, fin_order, rst0, rst1, bursts) = _tcp_whole(k)
    if cd:
        pay_c, pay_s, syn_c, sa_s, rst_c, rst_s, fin_c, fin_s = pay1, pay0, syn1, sa0, rst1, rst0, fin1, fin0
    else:
        pay_c, pay_s, syn_c, sa_s, rst_c, rst_s, fin_c, fin_s = pay0, pay1, syn0, sa1, rst0, rst1, fin0, fin1
    if fin_c:
        closed = 1 if not fin_s or fin_order else 2
    elif fin_s:
        closed = 2
    elif rst_c or rst_s:
        closed = 3 if rst_c and not rst_s else 4
    else:
        closed = 0
    exchanges: list[tuple[int | None, int, int | None, int]] = []
    first_reply = None
    request = None               # (time, bytes) of a client burst not answered yet
    for i in range(0, len(bursts), 3):
        d, at, size = bursts[i], bursts[i + 1], bursts[i + 2]
        if d == cd:
            if request is not None:
                exchanges.append((*request, None, 0))
            request = (at, size)
        else:
            if first_reply is None:
                first_reply = at
            exchanges.append((*(request or (None, 0)), at, size))
            request = None
    if request is not None:
        exchanges.append((*request, None, 0))
    return TcpFigures(
        packets=pkts, bytes=nbytes, client_payload=pay_c, server_payload=pay_s, last=last,
        handshake_ack=ack, handshake_syn=syn, retransmissions=re, fast_retransmissions=fast,
        spurious_retransmissions=sp, out_of_order=ooo, dup_acks=dup, syn=syn0 + syn1, synack=sa0 + sa1,
        fin=fin0 + fin1, rst=rst0 + rst1, closed_by=CLOSED_BY[closed],
        handshake=bool(syn_c and sa_s and ack is not None), refused=bool(rst_s and not sa_s and syn_c),
        exchanges=exchanges, first_reply=first_reply)


@dataclass
class UdpFigures:
    """One UDP conversation in the reports' words; times are offsets from its start."""

    packets: int
    bytes: int
    client_payload: int
    server_payload: int
    last: int
    exchanges: list[tuple[int | None, int, int | None, int, str | None]]  # request, bytes, reply, bytes, note
    requests: int
    unanswered: int
    answered: tuple[int, int] | None   # (request, reply) of the first answered request
    first_reply: int | None


def udp_figures(k: tuple) -> UdpFigures:
    pkts, nbytes, pay_c, pay_s, last, flat = _udp_whole(k)
    exchanges = [flat[i:i + 5] for i in range(0, len(flat), 5)]
    requests = unanswered = 0
    answered = first_reply = None
    for rq, _, rp, _, _ in exchanges:
        if rq is not None:
            requests += 1
            if rp is None:
                unanswered += 1
            elif answered is None:
                answered = (rq, rp)
        if rp is not None and first_reply is None:
            first_reply = rp
    return UdpFigures(packets=pkts, bytes=nbytes, client_payload=pay_c, server_payload=pay_s, last=last,
                      exchanges=exchanges, requests=requests, unanswered=unanswered, answered=answered,
                      first_reply=first_reply)


# --- a conversation's times, in a clock's values (milliseconds.py) --------------------------------------

def tcp_times(fig: TcpFigures, clock: FloatClock | MicroClock, t0: int) -> tuple:
    """(handshake, first byte of the answer, duration) of a TCP conversation; None where missing."""
    rtt = None if fig.handshake_ack is None else clock.between(t0, fig.handshake_ack, fig.handshake_syn)
    ttfb = None if fig.first_reply is None else clock.since(t0, fig.first_reply)
    return rtt, ttfb, clock.since(t0, fig.last)


def udp_times(fig: UdpFigures, clock: FloatClock | MicroClock, t0: int) -> tuple:
    """(first request -> its reply, first byte of an answer, duration) of a UDP conversation."""
    rtt = None
    if fig.answered is not None:
        rq, rp = fig.answered
        rtt = clock.since(t0, rp) - clock.since(t0, rq)
    ttfb = None if fig.first_reply is None else clock.since(t0, fig.first_reply)
    return rtt, ttfb, clock.since(t0, fig.last)
