"""The per-packet fast path: the common packets of the common captures, one ``unpack_from`` each.

``feed`` walks little-endian pcap records of Ethernet/SLL/SLL2 + 20-byte IPv4 + TCP/UDP. One
``struct.unpack_from`` per packet reads the record header, the link header's ethertype, the IPv4 header
and the start of TCP/UDP; big-endian fields are read little-endian and swapped only where a value is
needed (ethertype 0x0800 reads 0x0008, the fragment mask 0x3FFF reads 0xFF3F, the IP total length goes
through a table; the ACK number and the window stay byte-swapped, see ``wire.py``; the sequence number
stays bytes until needed).

It handles inline what most packets are: a SYN opening a conversation, an in-order data segment, a FIN,
a pure ACK of a known conversation, a datagram of a known UDP conversation, the first datagram of a new
one. Everything else goes to the general methods, which implement the whole analysis (``tcp.py``,
``udp.py``; other link types, IPv6 and IP options through ``decode.py``): new conversations kept for
ladders, RST, anything out of order. What the inline code does is exactly what those methods would do
for the same packet (tests/test_analyse.py compares the two paths).

Slot numbers are bound to local names at the top of ``feed``: a local is the cheapest lookup there is.
"""
from __future__ import annotations

import struct
from itertools import count

from labctl.analyse import tcp as T
from labctl.analyse import udp as U
from labctl.analyse.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, Chunk
from labctl.analyse.tunnels import UDP_TUNNEL_PORTS
from labctl.analyse.wire import M32, reverse_key4_parts

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from labctl.analyse.conversations import Builder

# The record header, the link header's ethertype, the IPv4 header and the start of TCP/UDP. After the
# link header: version+IHL, total length, fragment bits, protocol, addresses and ports, sequence number
# (bytes), ACK number, data offset, flags, window.
_IP_PART = "BxH2xHxB2x12s4sIBBH"
RECORD = {
    LINKTYPE_ETHERNET: (struct.Struct("<QII12xH" + _IP_PART), 14),
    LINKTYPE_LINUX_SLL: (struct.Struct("<QII14xH" + _IP_PART), 16),
    LINKTYPE_LINUX_SLL2: (struct.Struct("<QIIH18x" + _IP_PART), 20),
}
# IP header + TCP header length by the TCP data-offset byte; an offset below 5 words gives a length no
# frame has, so such a packet goes the general way.
_IP_TCP_HEADERS = [20 + ((o >> 4) << 2) if o >> 4 >= 5 else 1 << 20 for o in range(256)]


def _ip_lengths() -> list[int]:
    """The IP total length by its two bytes read little-endian: the table that swaps them back.
    Length 0 (TSO) maps to a length no frame has, so such a packet goes the general way."""
    pairs = bytearray(131072)
    pairs[0::2] = b"".join(bytes([hi]) * 256 for hi in range(256))
    pairs[1::2] = bytes(range(256)) * 256
    lengths = list(struct.unpack("<65536H", pairs))
    lengths[0] = 1 << 20
    return lengths


_IP_LENGTH = _ip_lengths()


def applies(chunk: Chunk) -> bool:
    """Whether ``feed`` can walk this chunk: little-endian records of a link type it knows."""
    return chunk.linktype in RECORD and not chunk.big_endian


def feed(b: Builder, chunk: Chunk) -> int:
    """Account every complete record in ``chunk``; set and return ``chunk.consumed``."""
    record, l2 = RECORD[chunk.linktype]
    unpack = record.unpack_from
    buf = chunk.data
    end = chunk.end
    limit = chunk.limit
    if b.first_ts is None and end >= 16:
        b.first_ts = b.times.seconds(struct.unpack_from("<Q", buf, 0)[0])
    # the slots (tcp.py, udp.py), as locals
    S_CONV, S_OTHER, S_KEY, S_DIR = T.S_CONV, T.S_OTHER, T.S_KEY, T.S_DIR
    S_NEXTSEQ, S_NSTIME, S_LASTACK, S_WIN = T.S_NEXTSEQ, T.S_NSTIME, T.S_LASTACK, T.S_WIN
    S_DUPRUN, S_ACKTIME, S_PAY, S_SYN = T.S_DUPRUN, T.S_ACKTIME, T.S_PAY, T.S_SYN
    S_SYNACK, S_FIN, S_ISN = T.S_SYNACK, T.S_FIN, T.S_ISN
    C_FIRST, C_LAST, C_PKTS, C_BYTES, C_EXDIR = T.C_FIRST, T.C_LAST, T.C_PKTS, T.C_BYTES, T.C_EXDIR
    C_IRTT, C_IRTT0, C_MRUSYN = T.C_IRTT, T.C_IRTT0, T.C_MRUSYN
    C_CLOSING, C_IDX = T.C_CLOSING, T.C_IDX
    U_LAST, U_PKTS, U_BYTES, U_PAY_C, U_PAY_S = U.U_LAST, U.U_PKTS, U.U_BYTES, U.U_PAY, U.U_PAY + 1
    new_s0, new_s1 = T.NEW_S0, T.NEW_S1
    # the state, as locals
    tcps, udps = b.tcp, b.udp
    tcp = tcps.convs
    live = tcps.live
    live_get = live.get
    tcp_slow = tcps.slow
    closed = tcps.closed
    tcp_keys_append = tcps.keys.append
    tcp_frame_append = tcps.frames.append
    tcp_packet, tcp_sequence, retire = tcps.packet, tcps.sequence, tcps.retire
    tcp_repeated, tcp_advance = tcps.repeated_ack, T.advance
    fold_from = tcps.fold_from
    udp = udps.convs
    udp_fwd, udp_rev = udps.fwd, udps.rev
    fwd_get, rev_get = udp_fwd.get, udp_rev.get
    udp_slow_fwd, udp_slow_rev = udps.slow_fwd, udps.slow_rev
    udp_frame_append = udps.frames.append
    detail = b.detail
    rk_split, rk_order, rk_join = reverse_key4_parts()
    ip_length = _IP_LENGTH
    ip_tcp_headers = _IP_TCP_HEADERS
    l2_udp = l2 + 28
    tunnel_ports = UDP_TUNNEL_PORTS
    from_bytes = int.from_bytes
    split = b.parts > 1
    part, parts = b.part, b.parts
    other_bytes = 0
    m32 = M32
    base = n = b.packets
    o = 0
    t = -1
    # The chunk is padded with zero bytes: an unpack at its end reads them, finds a record that does
    # not fit, and stops.
    for n in count(base + 1):   # n: the frame number
        t, incl, orig, et, vihl, totlen, frag, proto, key, seqb, ack, off, flags, win = unpack(buf, o)
        o += incl + 16
        if o > end or incl > limit:          # (a record too long for the file: the reader refuses it)
            o -= incl + 16
            break
        if et != 8 or vihl != 0x45 or frag & 0xFF3F or (iplen := ip_length[totlen]) > orig - l2:
            pass    # not IPv4 without options, a fragment, TSO or a length beyond the frame: the general way
        elif split and (proto == 6 or proto == 17) and incl >= l2_udp and (
                key[9] ^ key[11]) % parts != part:
            other_bytes += orig         # another worker's conversation
            continue
        elif proto == 6:
            headers = ip_tcp_headers[off]
            if incl >= l2 + headers and iplen >= headers:     # (else a malformed header: the general way)
                plen = iplen - headers
                s = live_get(key)
                if s is None:
                    if (flags & 23 == 2 and not plen and len(tcp) >= detail and key not in tcp_slow
                            and (not closed or key not in closed)):
                        rkey = rk_join(*rk_order(rk_split(key)))
                        if not closed or rkey not in closed:
                            # a SYN opens a conversation: TcpConversations.new, then the SYN's effects
                            seq = from_bytes(seqb, "big")
                            c = new_s0[:]
                            s = new_s1[:]
                            c[S_CONV] = s[S_CONV] = s[S_OTHER] = c
                            c[S_OTHER] = s
                            c[S_KEY] = key
                            s[S_KEY] = rkey
                            c[S_NEXTSEQ] = (seq + 1) & m32
                            c[S_NSTIME] = c[C_FIRST] = c[C_LAST] = c[C_MRUSYN] = t
                            c[S_SYN] = c[C_PKTS] = 1
                            c[S_ISN] = seq
                            c[C_BYTES] = orig
                            c[C_IDX] = len(tcp)
                            tcp.append(c)
                            tcp_keys_append(key)
                            tcp_frame_append(n)
                            live[key] = c
                            live[rkey] = s
                            continue
                    tcp_packet(key, t, orig, flags, from_bytes(seqb, "big"), ack, win, plen, n)
                    continue
                if flags & 6 and flags & 23 != 18:   # SYN, RST: the general way
                    tcp_packet(key, t, orig, flags, from_bytes(seqb, "big"), ack, win, plen, n)
                    continue
                c = s[S_CONV]
                c[C_LAST] = t
                c[C_PKTS] += 1
                c[C_BYTES] += orig
                if plen or flags & 3:
                    seq = from_bytes(seqb, "big")
                    if flags & 2:                    # SYN-ACK
                        s[S_SYNACK] += 1
                        if s[S_ISN] < 0:
                            s[S_ISN] = seq
                    elif flags & 1 and s[S_FIN] < 0:    # first FIN this way
                        s[S_FIN] = t
                        if s[S_OTHER][S_FIN] >= 0:
                            c[C_CLOSING] = 1
                    ns = s[S_NEXTSEQ]
                    if seq == ns:                    # in order (the first segment this way: general)
                        s[S_NEXTSEQ] = (seq + plen + (1 if flags & 3 else 0)) & m32
                        s[S_NSTIME] = t
                        if plen:
                            s[S_PAY] += plen
                            d = s[S_DIR]
                            if c[C_EXDIR] == d:
                                c[-1] += plen
                            else:
                                c += (d, t, plen)    # a new burst
                                c[C_EXDIR] = d
                    else:
                        tcp_sequence(c, s, t, seq, plen, flags)
                    if flags & 16:
                        if ack != s[S_LASTACK]:
                            s[S_LASTACK] = ack
                            s[S_DUPRUN] = 0
                            if c[C_IRTT] < 0 and c[C_MRUSYN] >= 0 and not flags & 6:
                                c[C_IRTT] = t
                                c[C_IRTT0] = c[C_MRUSYN]
                        s[S_ACKTIME] = t
                        s[S_WIN] = win
                    continue
                if flags & 16:                       # a pure ACK
                    if ack != s[S_LASTACK]:
                        s[S_LASTACK] = ack
                        s[S_DUPRUN] = 0
                        if c[C_IRTT] < 0 and c[C_MRUSYN] >= 0:
                            c[C_IRTT] = t
                            c[C_IRTT0] = c[C_MRUSYN]
                        seq = from_bytes(seqb, "big")
                        if seq != s[S_NEXTSEQ]:          # mid-flow, or after segments not captured
                            tcp_advance(s, t, seq)
                    else:                                # keep-alive, its ACK, a duplicate ACK?
                        tcp_repeated(c, s, t, from_bytes(seqb, "big"), win)
                    s[S_ACKTIME] = t
                    s[S_WIN] = win
                if c[C_CLOSING] and len(tcp) >= fold_from:
                    retire(c)
                continue
        elif proto == 17 and incl >= l2_udp and iplen >= 28:
            plen = iplen - 28
            c = fwd_get(key)
            if c is not None:                    # a request
                c[U_LAST] = t
                c[U_PKTS] += 1
                c[U_BYTES] += orig
                c[U_PAY_C] += plen
                c += (t, plen, -1, 0, 0)
                continue
            c = rev_get(key)
            if c is not None:                    # a reply (it has an exchange: its first datagram's)
                c[U_LAST] = t
                c[U_PKTS] += 1
                c[U_BYTES] += orig
                c[U_PAY_S] += plen
                if c[-3] < 0:
                    c[-3] = t
                    c[-2] = plen
                    c[-1] = 1
                else:
                    c[-2] += plen
                    c[-1] += 1
                continue
            if (len(udp) < detail or key in udp_slow_fwd or key in udp_slow_rev or key[8:10] in tunnel_ports
                    or key[10:12] in tunnel_ports):    # kept for a ladder, or a tunnel: the general way
                r = b.general(chunk.linktype, buf, o - incl, incl, orig, t)
                if r is not None:
                    b.dispatch(r, t, orig, n)
                continue
            c = [t, t, 1, orig, plen, 0, key, None, t, plen, -1, 0, 0]   # a new one (UdpConversations.new)
            udp.append(c)
            udp_frame_append(n)
            udp_fwd[key] = c
            udp_rev[rk_join(*rk_order(rk_split(key)))] = c
            continue
        r = b.general(chunk.linktype, buf, o - incl, incl, orig, t)
        if r is not None:
            b.dispatch(r, t, orig, n)
    chunk.consumed = o
    chunk.records = n - 1 - base
    b.packets = n - 1
    b.other_bytes += other_bytes
    if t >= 0:
        b.last_ts = b.times.seconds(t)
    return o
