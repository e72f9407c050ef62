"""TCP and UDP conversations, built in one streaming pass over the packets.

A conversation is what Wireshark calls one: TCP by 4-tuple (a new one when a SYN with a new initial
sequence number follows on the same 4-tuple), UDP by 4-tuple. Per conversation the builder keeps one
compact list (see the ``T_*`` / ``U_*`` slot numbers), never an object per packet; only the first few
conversations of each protocol (``detail``) also record their packets, for the ladder diagrams.

TCP analysis follows Wireshark's ``tcp_analyze_sequence_number`` so the counts can be checked against
``tshark``: a segment carrying data (or SYN/FIN) whose sequence number is below the highest seen in that
direction is an out-of-order segment (within the first RTT, 3 ms by default, of the highest one and not
ending exactly there), a spurious retransmission (the other side already acknowledged it), or a
retransmission (fast and spurious ones are counted as retransmissions too, as tshark's
``tcp.analysis.retransmission`` does). A pure ACK repeating the previous ACK, window and sequence number
is a duplicate ACK.
"""
from __future__ import annotations

import gc
import struct
from array import array
from pathlib import Path

from labctl.analyse import decode as dec
from labctl.analyse.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    Chunk,
    ReadInfo,
    read_chunks,
)

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF
HALF = 0x80000000
DEFAULT_DETAIL = 8
FOLD_AFTER = 32768       # TCP conversations held as lists before closed ones are folded into bytes

# TCP conversation slots; pairs are (A, B) where A sent the conversation's first packet.
# The hot loop uses the numbers: keep them in step. ``lastack`` and ``win`` are kept byte-swapped
# ("wire order read little-endian"): they are only compared for equality there; swap32() them to read.
T_FIRST, T_LAST, T_PKTS, T_BYTES = 0, 1, 2, 3
T_PAY = 4            # 4, 5: payload bytes (retransmitted copies not counted)
T_NEXTSEQ = 6        # 6, 7: next expected sequence number (None: not seen yet)
T_NSTIME = 8         # 8, 9: when that highest sequence number was seen
T_LASTACK = 10       # 10, 11 (byte-swapped)
T_WIN = 12           # 12, 13 (byte-swapped)
T_DUPRUN = 14        # 14, 15: duplicate ACKs in a row
T_ACKTIME = 16       # 16, 17: time of the last ACK
T_KEY, T_DETAIL, T_LASTEXDIR, T_IRTT, T_MRUSYN = 18, 19, 20, 21, 22
T_RETRANS, T_OOO, T_DUPACK, T_SPURIOUS, T_FASTRT = 23, 24, 25, 26, 27
T_SYN = 28           # 28, 29: SYN (no ACK) count
T_SYNACK = 30        # 30, 31
T_FIN = 32           # 32, 33: time of the first FIN
T_RST = 34           # 34, 35: RST count
T_ISN = 36           # 36, 37: initial sequence numbers
T_IDX = 38           # position in Builder.tcp
T_CLOSING = 39       # True once both sides sent FIN, or one sent RST
T_SIZE = 40          # then the data bursts, 4 slots each: direction, first time, last time, bytes

# A closed TCP conversation is folded into bytes (no Python objects per field): its output fields and
# what a late packet needs to carry on; unfold() turns it back into a list. See Builder.retire().
_FOLD = struct.Struct("<ddIQQQqqqqiiIIIIIIIIIIIdddqqb")
_BURST = struct.Struct("<bddQ")
_NONE = -1

# UDP conversation slots, then the exchanges, 5 slots each: request time, request bytes, reply time,
# reply bytes, replies (a reply before any request has request time None).
U_FIRST, U_LAST, U_PKTS, U_BYTES, U_PAY, U_KEY, U_DETAIL = 0, 1, 2, 3, 4, 6, 7
U_SIZE = 8

# Fast path, little-endian pcap records: the record header, the Ethernet/SLL/SLL2 header, a 20-byte
# IPv4 header and the start of TCP/UDP in one unpack. Big-endian fields are read little-endian and
# swapped only where a value is needed (ethertype 0x0800 reads 0x0008, the fragment mask 0x3FFF reads
# 0xFF3F); the sequence number stays bytes until needed.
_IP_PART = "BxH2xHxB2x12s4sIBBH"   # vihl, totlen, frag, proto, src+dst+ports, seq, ack, offset, flags, win
FAST = {
    LINKTYPE_ETHERNET: (struct.Struct("<IIII12xH" + _IP_PART), 14),
    LINKTYPE_LINUX_SLL: (struct.Struct("<IIII14xH" + _IP_PART), 16),
    LINKTYPE_LINUX_SLL2: (struct.Struct("<IIIIH18x" + _IP_PART), 20),
}


def swap32(x: int) -> int:
    return int.from_bytes(x.to_bytes(4, "little"), "big")


def swap16(x: int) -> int:
    return ((x & 255) << 8) | (x >> 8)


def reverse_key(key: bytes) -> bytes:
    """The key of the other direction: swap addresses and ports."""
    n = (len(key) - 4) // 2
    return key[n:2 * n] + key[:n] + key[2 * n + 2:] + key[2 * n:2 * n + 2]


def seq_lt(a: int, b: int) -> bool:
    """a < b in 32-bit sequence space."""
    return a != b and ((b - a) & M32) < HALF


class Builder:
    """Feeds chunks of pcap records and keeps the conversations' compact state."""

    def __init__(self, detail: int = DEFAULT_DETAIL, part: int = 0, parts: int = 1) -> None:
        self.detail = detail
        self.part = part      # with parts > 1: keep only conversations whose ports hash to ``part``
        self.parts = parts
        self.fold_after = FOLD_AFTER * parts   # a worker holds 1/parts of the conversations
        self.tcp_frame = array("q")   # frame number (1-based) of each conversation's first packet
        self.udp_frame = array("q")
        self.tcp: list[list] = []          # in order of first packet
        self.udp: list[list] = []
        self.tcp_fwd: dict[bytes, list] = {}
        self.tcp_rev: dict[bytes, list] = {}
        self.tcp_closed: dict[bytes, int] = {}   # key of a folded conversation -> its position
        self.udp_fwd: dict[bytes, list] = {}
        self.udp_rev: dict[bytes, list] = {}
        self.icmp: dict[bytes, list] = {}  # UDP conversation key -> [(exchange number, time, text)]
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.skipped: dict[str, int] = {}
        self.skipped_bytes = 0
        self.ipv6 = 0
        self.packets = 0
        self.bytes = 0

    def tcp_state(self, i: int) -> list:
        """The i-th TCP conversation's state as a list (unfolding a closed one)."""
        c = self.tcp[i]
        return c if type(c) is list else unfold(c, self._closed_keys()[i])

    def tcp_states(self):
        keys = self._closed_keys() if self.tcp_closed else {}
        for i, c in enumerate(self.tcp):
            yield c if type(c) is list else unfold(c, keys[i])

    def _closed_keys(self) -> dict[int, bytes]:
        if getattr(self, "_ck", None) is None or len(self._ck) != len(self.tcp_closed):
            self._ck = {i: k for k, i in self.tcp_closed.items()}
        return self._ck


    # --- creation and rare events (called from the hot loop) -----------------------------------------

    def new_tcp(self, key: bytes, ts: float, frame: int) -> list:
        self.tcp_frame.append(frame)
        c = [0] * T_SIZE
        c[T_FIRST] = ts
        for i in (T_NEXTSEQ, T_NEXTSEQ + 1, T_NSTIME, T_NSTIME + 1, T_LASTACK, T_LASTACK + 1,
                  T_WIN, T_WIN + 1, T_ACKTIME, T_ACKTIME + 1, T_DETAIL, T_LASTEXDIR, T_IRTT, T_MRUSYN,
                  T_FIN, T_FIN + 1, T_ISN, T_ISN + 1):
            c[i] = None
        c[T_KEY] = key
        c[T_IDX] = len(self.tcp)
        c[T_CLOSING] = False
        if len(self.tcp) < self.detail:
            c[T_DETAIL] = []
        self.tcp.append(c)
        self.tcp_fwd[key] = c
        self.tcp_rev[reverse_key(key)] = c
        return c

    def new_udp(self, key: bytes, ts: float, frame: int) -> list:
        self.udp_frame.append(frame)
        c = [ts, ts, 0, 0, 0, 0, key, [] if len(self.udp) < self.detail else None]
        self.udp.append(c)
        self.udp_fwd[key] = c
        self.udp_rev[reverse_key(key)] = c
        return c

    def tcp_control(self, c: list, d: int, key: bytes, ts: float, flags: int, seqb: bytes, frame: int
                    ) -> tuple[list, int]:
        """SYN/FIN/RST bookkeeping; returns the conversation (a new one on 4-tuple reuse) and direction."""
        seq = int.from_bytes(seqb, "big")
        if flags & SYN:
            if flags & ACK:
                c[T_SYNACK + d] += 1
                if c[T_ISN + d] is None:
                    c[T_ISN + d] = seq
            else:
                isn = c[T_ISN + d]
                if isn is not None and isn != seq and c[T_PKTS] > 0:
                    old = c[T_KEY]   # port reuse: a new conversation (as Wireshark does)
                    self.tcp_fwd.pop(old, None)
                    self.tcp_rev.pop(reverse_key(old), None)
                    c = self.new_tcp(key, ts, frame)
                    d = 0
                c[T_SYN + d] += 1
                c[T_ISN + d] = seq
                c[T_MRUSYN] = ts
        if flags & FIN and c[T_FIN + d] is None:
            c[T_FIN + d] = ts
            if c[T_FIN + 1 - d] is not None:
                c[T_CLOSING] = True
        if flags & RST:
            c[T_RST + d] += 1
            c[T_CLOSING] = True
        return c, d

    def open_tcp(self, key: bytes, ts: float, frame: int) -> tuple[list, int]:
        """A packet of no open conversation: unfold a closed one it belongs to, or start a new one."""
        closed = self.tcp_closed
        if closed:
            for k, d in ((key, 0), (reverse_key(key), 1)):
                i = closed.pop(k, None)
                if i is not None:
                    c = unfold(self.tcp[i], k)
                    self.tcp[i] = c
                    self.tcp_fwd[k] = c
                    self.tcp_rev[reverse_key(k)] = c
                    return c, d
        return self.new_tcp(key, ts, frame), 0

    def retire(self, c: list) -> None:
        """Fold a closed conversation into bytes and forget its dictionary entries.

        Only once the capture is big (FOLD_AFTER conversations): folding costs a few microseconds a
        conversation, and below that the memory it saves does not matter.
        """
        if c[T_DETAIL] is not None or len(self.tcp) < self.fold_after:
            return
        key = c[T_KEY]
        del self.tcp_fwd[key]
        del self.tcp_rev[reverse_key(key)]
        self.tcp_closed[key] = c[T_IDX]
        self.tcp[c[T_IDX]] = fold(c)

    def tcp_old_segment(self, c: list, d: int, ts: float, seq: int, plen: int, flags: int) -> None:
        """A data/SYN/FIN segment below the highest sequence number seen: classify it like Wireshark."""
        nextseq = c[T_NEXTSEQ + d]
        if (plen <= 1 and seq == ((nextseq - 1) & M32) and not flags & (SYN | FIN | RST)):
            return  # keep-alive
        rd = 1 - d
        lastack = c[T_LASTACK + rd]
        lastack = swap32(lastack) if lastack is not None else None
        if (c[T_DUPRUN + rd] >= 2 and lastack == seq and c[T_ACKTIME + rd] is not None
                and ts - c[T_ACKTIME + rd] < 0.020):
            c[T_FASTRT] += 1
            c[T_RETRANS] += 1
            self._mark(c, "fast retransmission")
            return
        irtt = c[T_IRTT]
        thres = irtt if irtt else 0.003
        extra = 1 if flags & (SYN | FIN) else 0
        if ts - c[T_NSTIME + d] < thres and nextseq != ((seq + plen + extra) & M32):
            c[T_OOO] += 1
            self._mark(c, "out-of-order")
            return
        end = (seq + plen) & M32
        if lastack is not None and (end == lastack or seq_lt(end, lastack)):
            c[T_SPURIOUS] += 1
            c[T_RETRANS] += 1      # tshark's tcp.analysis.retransmission includes these too
            self._mark(c, "spurious retransmission")
            return
        c[T_RETRANS] += 1
        self._mark(c, "retransmission")

    @staticmethod
    def _mark(c: list, what: str) -> None:
        det = c[T_DETAIL]
        if det is not None:
            det.append(("note", what))

    def skip(self, reason: str, orig: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_bytes += orig

    # --- the hot loop ---------------------------------------------------------------------------------

    def feed(self, chunk: Chunk) -> int:
        """Account every complete record in ``chunk``; set and return ``chunk.consumed``."""
        buf = chunk.data
        end = chunk.end
        linktype = chunk.linktype
        scale = chunk.frac_scale
        hdr = struct.Struct(">IIII" if chunk.big_endian else "<IIII").unpack_from
        fast, l2 = FAST.get(linktype, (None, 0))
        if chunk.big_endian:
            fast = None
        fast = fast.unpack_from if fast else None
        minlen = l2 + 28    # IPv4 + UDP header; TCP checks its own header length
        tcp_fwd_get = self.tcp_fwd.get
        tcp_rev_get = self.tcp_rev.get
        udp_fwd_get = self.udp_fwd.get
        udp_rev_get = self.udp_rev.get
        open_tcp, new_udp, retire = self.open_tcp, self.new_udp, self.retire
        control, old_segment = self.tcp_control, self.tcp_old_segment
        from_bytes = int.from_bytes
        slow = self.slow
        ts = None
        o = 0
        packets = nbytes = 0
        base = self.packets
        part, parts = self.part, self.parts
        m32, half = M32, HALF
        if self.first_ts is None and end >= 16:
            ts_s, ts_f = hdr(buf, 0)[:2]
            self.first_ts = ts_s + ts_f * scale
        while o + 16 <= end:
            if fast is not None:
                (ts_s, ts_f, incl, orig, et, vihl, totlen, frag, proto, key, seqb, ack, off, flags,
                 win) = fast(buf, o)
                p = o + 16
                if p + incl > end:
                    break
                o = p + incl
                packets += 1
                nbytes += orig
                if et != 8 or vihl != 0x45 or frag & 0xFF3F or incl < minlen or not totlen:
                    ts = ts_s + ts_f * scale
                    r = slow(linktype, buf, p, incl, orig, ts)
                    if r is None:
                        continue
                    proto, key, seqb, ack, flags, win, plen = r
                elif parts > 1 and (proto == 6 or proto == 17) and (key[9] ^ key[11]) % parts != part:
                    continue     # another worker's conversation
                elif proto == 6:
                    ts = ts_s + ts_f * scale
                    thl = (off >> 4) << 2
                    if incl < l2 + 20 + thl or thl < 20:   # TCP header cut short (or bad)
                        r = slow(linktype, buf, p, incl, orig, ts)
                        if r is None:
                            continue
                        proto, key, seqb, ack, flags, win, plen = r
                    else:
                        plen = ((totlen & 255) << 8 | totlen >> 8) - 20 - thl
                        if plen < 0:
                            plen = 0
                elif proto == 17:
                    ts = ts_s + ts_f * scale
                    plen = ((totlen & 255) << 8 | totlen >> 8) - 28
                else:
                    ts = ts_s + ts_f * scale
                    r = slow(linktype, buf, p, incl, orig, ts)
                    if r is None:
                        continue
                    proto, key, seqb, ack, flags, win, plen = r
            else:
                ts_s, ts_f, incl, orig = hdr(buf, o)
                p = o + 16
                if p + incl > end:
                    break
                o = p + incl
                packets += 1
                nbytes += orig
                ts = ts_s + ts_f * scale
                r = slow(linktype, buf, p, incl, orig, ts)
                if r is None:
                    continue
                proto, key, seqb, ack, flags, win, plen = r
            if parts > 1 and (key[-3] ^ key[-1]) % parts != part:
                continue
            if proto == 6:
                c = tcp_fwd_get(key)
                if c is not None:
                    d = 0
                else:
                    c = tcp_rev_get(key)
                    if c is not None:
                        d = 1
                    else:
                        c, d = open_tcp(key, ts, base + packets)
                if flags & 6:
                    if flags & 22 == 18:     # SYN-ACK (the common case, inline)
                        c[30 + d] += 1
                        if c[36 + d] is None:
                            c[36 + d] = from_bytes(seqb, "big")
                    else:
                        c, d = control(c, d, key, ts, flags, seqb, base + packets)
                elif flags & 1 and c[32 + d] is None:
                    c[32 + d] = ts
                    if c[33 - d] is not None:
                        c[39] = True
                c[1] = ts
                c[2] += 1
                c[3] += orig
                det = c[19]
                if plen or flags & 3:
                    seq = from_bytes(seqb, "big")
                    if det is not None:
                        det.append((ts, d, flags, seq, ack, plen, orig, win))
                    ns = c[6 + d]
                    if ns is not None and ns != seq and ((ns - seq) & m32) < half:
                        old_segment(c, d, ts, seq, plen, flags)
                    else:
                        nseq = (seq + plen + (1 if flags & 3 else 0)) & m32
                        if ns is None or (nseq != ns and ((nseq - ns) & m32) < half):
                            c[6 + d] = nseq
                            c[8 + d] = ts
                        if plen:
                            c[4 + d] += plen
                            if c[20] == d:
                                c[-2] = ts
                                c[-1] += plen
                            else:
                                c += (d, ts, ts, plen)   # a burst: direction, first, last, bytes
                                c[20] = d
                else:
                    if det is not None:
                        det.append((ts, d, flags, from_bytes(seqb, "big"), ack, plen, orig, win))
                    if (flags & 16 and win and win == c[12 + d] and ack == c[10 + d]
                            and from_bytes(seqb, "big") == c[6 + d]):
                        c[14 + d] += 1
                        c[25] += 1
                        if det is not None:
                            det.append(("note", "duplicate ACK"))
                if flags & 16:
                    if ack != c[10 + d]:
                        c[10 + d] = ack
                        c[14 + d] = 0
                        if c[21] is None and c[22] is not None and not flags & 6:
                            c[21] = ts - c[22]
                    c[16 + d] = ts
                    c[12 + d] = win
                if c[39] and not plen and not flags & 3:
                    retire(c)
            elif proto == 17:
                c = udp_fwd_get(key)
                if c is not None:
                    d = 0
                else:
                    c = udp_rev_get(key)
                    if c is not None:
                        d = 1
                    else:
                        c = new_udp(key, ts, base + packets)
                        d = 0
                c[1] = ts
                c[2] += 1
                c[3] += orig
                c[4 + d] += plen
                if d == 0:
                    c += (ts, plen, None, 0, 0)   # request time, bytes; reply time, bytes, replies
                elif len(c) > 8:
                    if c[-3] is None:
                        c[-3] = ts
                        c[-2] = plen
                        c[-1] = 1
                    else:
                        c[-2] += plen
                        c[-1] += 1
                else:
                    c += (None, 0, ts, plen, 1)
                det = c[7]
                if det is not None:
                    det.append((ts, d, 0, 0, 0, plen, orig, 0))
        chunk.consumed = o
        self.packets += packets
        self.bytes += nbytes
        if ts is not None:
            self.last_ts = ts
        return o

    def slow(self, linktype: int, buf: bytes, p: int, incl: int, orig: int, ts: float):
        """The general decoder's answer in the hot loop's terms, or None (frame skipped/noted)."""
        r = dec.decode(linktype, buf, p, incl, orig)
        if type(r) is str:
            self.skip(r, orig)
            return None
        if r[0] == "icmp":
            self.icmp_error(r, ts, orig)
            return None
        proto, key, seq, ack, flags, win, plen = r
        if len(key) > 12:
            self.ipv6 += 1
        # into the fast path's terms: sequence number as bytes, ack and window byte-swapped
        return proto, key, seq.to_bytes(4, "big"), swap32(ack), flags, swap16(win), plen

    def icmp_error(self, r: tuple, ts: float, orig: int) -> None:
        """An ICMP error quoting one of our UDP packets: note it on that conversation's exchange."""
        _, proto, key, text = r
        self.skip(dec.SKIP_OTHER_PROTO, orig)
        if proto != dec.UDP:
            return
        c = self.udp_fwd.get(key)
        if c is None:
            return
        self.icmp.setdefault(c[U_KEY], []).append(((len(c) - U_SIZE) // 5 - 1, ts, text))
        det = c[U_DETAIL]
        if det is not None:
            det.append((ts, 1, -1, 0, 0, 0, orig, text))


def fold(c: list) -> bytes:
    """A conversation's state as bytes (see _FOLD); times of the moment-to-moment analysis are dropped."""
    n = _NONE
    f = float("nan")
    head = _FOLD.pack(
        c[0], c[1], c[2], c[3], c[4], c[5],
        n if c[6] is None else c[6], n if c[7] is None else c[7],
        n if c[10] is None else c[10], n if c[11] is None else c[11],
        n if c[12] is None else c[12], n if c[13] is None else c[13],
        c[23], c[24], c[25], c[26], c[27], c[28], c[29], c[30], c[31], c[34], c[35],
        f if c[32] is None else c[32], f if c[33] is None else c[33], f if c[21] is None else c[21],
        n if c[36] is None else c[36], n if c[37] is None else c[37],
        -1 if c[20] is None else c[20])
    bursts = b"".join(_BURST.pack(*c[i:i + 4]) for i in range(T_SIZE, len(c), 4))
    return head + c[T_IDX].to_bytes(4, "little") + bursts


def unfold(blob: bytes, key: bytes) -> list:
    """The list form of a folded conversation (ready to carry on, e.g. for a late retransmission)."""
    v = list(_FOLD.unpack_from(blob, 0))
    for i in (6, 7, 8, 9, 10, 11, 26, 27):
        if v[i] == _NONE:
            v[i] = None
    for i in (23, 24, 25):
        if v[i] != v[i]:
            v[i] = None
    last = v[1]
    c = [*v[0:8], last, last, *v[8:12], 0, 0, last, last, key, None, None if v[28] == -1 else v[28],
         v[25], None, *v[12:21], v[23], v[24], v[21], v[22], v[26], v[27],
         int.from_bytes(blob[_FOLD.size:_FOLD.size + 4], "little"), True]
    if len(blob) > _FOLD.size + 4:
        for o in range(_FOLD.size + 4, len(blob), _BURST.size):
            c += _BURST.unpack_from(blob, o)
    return c


def build(path: str | Path, detail: int = DEFAULT_DETAIL, part: int = 0, parts: int = 1
          ) -> tuple[Builder, ReadInfo]:
    """Stream the file through a Builder.

    The garbage collector is paused meanwhile, and what was built is then frozen out of its sight
    (gc.freeze): these lists hold no reference cycles, and walking a million of them again and again
    would only cost time.
    """
    info = ReadInfo(str(path))
    b = Builder(detail, part, parts)
    was = gc.isenabled()
    gc.disable()
    try:
        for chunk in read_chunks(path, info):
            b.feed(chunk)
    finally:
        gc.freeze()
        if was:
            gc.enable()
    return b, info
