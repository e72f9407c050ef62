"""TCP and UDP conversations, built in one streaming pass over the packets.

A conversation is what Wireshark calls one: TCP by 4-tuple (a new one when a SYN with a new initial
sequence number follows on the same 4-tuple), UDP by 4-tuple. Per conversation the builder keeps a few
compact lists of plain ints (see the ``C_*`` / ``S_*`` / ``U_*`` slot numbers), never an object per
packet; only the first few conversations of each protocol (``detail``) also record their packets, for
the ladder diagrams.

TCP analysis follows Wireshark's ``tcp_analyze_sequence_number`` so the counts can be checked against
``tshark``: a segment carrying data (or SYN/FIN) whose sequence number is below the highest seen in that
direction is an out-of-order segment (within the first RTT, 3 ms by default, of the highest one and not
ending exactly there), a spurious retransmission (the other side already acknowledged it), or a
retransmission (fast and spurious ones are counted as retransmissions too, as tshark's
``tcp.analysis.retransmission`` does). A pure ACK repeating the previous ACK, window and sequence number
is a duplicate ACK.

Times are kept as the record's two timestamp words read as one integer, ``T = seconds + fraction << 32``
(the fraction in microseconds or nanoseconds, see ``Builder.units``), so nothing is computed per packet
that is not needed; ``Builder.seconds(T)`` gives the float ``seconds + fraction * 1e-6`` (or ``1e-9``),
``Builder.ticks(T)`` the exact count of fraction units. Missing values are ``-1`` (every field
is an int, so a closed conversation folds into an ``array``).

Speed: ``feed`` walks little-endian pcap records of Ethernet/SLL/SLL2 + 20-byte IPv4 + TCP/UDP with one
``struct.unpack_from`` per packet and handles the common cases inline (an in-order data segment, a FIN,
a pure ACK of a known conversation, a datagram of a known UDP conversation); everything else (new
conversations, SYN/RST, anything out of order, conversations kept for ladders, other link types, IPv6,
IP options) goes through the general methods, which implement the whole analysis.
"""
from __future__ import annotations

import gc
import struct
from array import array
from itertools import count
from operator import itemgetter
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
FOLD_AFTER = 32768       # TCP conversations before a folded one unfolds with its times reset (below)
FOLD_FROM = 32768        # TCP conversations before closed ones are folded into arrays (memory)

# A TCP conversation is two lists, one state per direction ``s`` (direction 0 sent the conversation's
# first packet); direction 0's list also holds the conversation's own slots, so ``s[S_CONV]`` is the
# conversation whichever the direction. The packet dictionary maps each direction's key to its ``s``.
# Slots of both directions (ints from S_DIR on, -1 = none; ``lastack`` and ``win`` are kept byte-swapped,
# "wire order read little-endian": they are only compared for equality; swap32() them to read):
S_CONV, S_OTHER, S_KEY, S_DIR = 0, 1, 2, 3
S_NEXTSEQ, S_NSTIME, S_LASTACK, S_WIN, S_DUPRUN, S_ACKTIME = 4, 5, 6, 7, 8, 9
S_PAY, S_SYN, S_SYNACK, S_FIN, S_RST, S_ISN = 10, 11, 12, 13, 14, 15   # FIN: time of the first one
S_SIZE = 16
# The conversation's slots (direction 0's list only):
C_DETAIL = 16            # packets kept for the ladder (None for most)
C_FIRST, C_LAST, C_PKTS, C_BYTES = 17, 18, 19, 20
C_EXDIR = 21             # direction of the last data burst
C_IRTT, C_IRTT0 = 22, 23  # the handshake: time of the ACK that completed it, of the SYN it answered
C_MRUSYN = 24            # time of the most recent SYN
C_RETRANS, C_OOO, C_DUPACK, C_SPURIOUS, C_FASTRT = 25, 26, 27, 28, 29
C_CLOSING = 30           # 1 once both sides sent FIN, or one sent RST
C_IDX = 31               # position in Builder.tcp
C_SIZE = 32              # then the data bursts, 3 slots each: direction, time of first byte, bytes
# The flat form (all ints): s0[4:16] + s1[4:16] + s0[17:]. A closed conversation folds into it (an
# array), and the reports read it. Direction field S_X of direction d is at S_X - 4 + 12 * d, the
# conversation's C_X at C_X + 7, the bursts from F_SIZE on.
F_NEXTSEQ, F_NSTIME, F_LASTACK, F_WIN, F_DUPRUN, F_ACKTIME = 0, 1, 2, 3, 4, 5
F_PAY, F_SYN, F_SYNACK, F_FIN, F_RST, F_ISN = 6, 7, 8, 9, 10, 11
F_FIRST, F_LAST, F_PKTS, F_BYTES, F_EXDIR, F_IRTT, F_IRTT0, F_MRUSYN = 24, 25, 26, 27, 28, 29, 30, 31
F_RETRANS, F_OOO, F_DUPACK, F_SPURIOUS, F_FASTRT, F_CLOSING, F_IDX = 32, 33, 34, 35, 36, 37, 38
F_SIZE = 39
_NEW_S0 = [None, None, None, 0, -1, -1, -1, -1, 0, -1, 0, 0, 0, -1, 0, -1,
           None, 0, 0, 0, 0, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0]
_NEW_S1 = [None, None, None, 1, -1, -1, -1, -1, 0, -1, 0, 0, 0, -1, 0, -1]

# UDP conversation slots, then the exchanges, 5 slots each: request time, request bytes, reply time,
# reply bytes, replies (a reply before any request has request time -1).
U_FIRST, U_LAST, U_PKTS, U_BYTES, U_PAY, U_KEY, U_DETAIL = 0, 1, 2, 3, 4, 6, 7
U_SIZE = 8

# Fast path, little-endian pcap records: the record header, the Ethernet/SLL/SLL2 header, a 20-byte
# IPv4 header and the start of TCP/UDP in one unpack. Big-endian fields are read little-endian and
# swapped only where a value is needed (ethertype 0x0800 reads 0x0008, the fragment mask 0x3FFF reads
# 0xFF3F, the IP total length through a table); the sequence number stays bytes until needed.
_IP_PART = "BxH2xHxB2x12s4sIBBH"   # vihl, totlen, frag, proto, src+dst+ports, seq, ack, offset, flags, win
FAST = {
    LINKTYPE_ETHERNET: (struct.Struct("<QII12xH" + _IP_PART), 14),
    LINKTYPE_LINUX_SLL: (struct.Struct("<QII14xH" + _IP_PART), 16),
    LINKTYPE_LINUX_SLL2: (struct.Struct("<QIIH18x" + _IP_PART), 20),
}
_BAD_THL = 1 << 20   # a TCP data offset below 5 words: no frame is that long, so the packet goes slow
_THL = [(o >> 4) << 2 if o >> 4 >= 5 else _BAD_THL for o in range(256)]   # TCP header length by byte
_tables: list = []


def _swapped_minus_20() -> list[int]:
    """IP total length (read little-endian) -> the real one minus the 20-byte IPv4 header."""
    if not _tables:
        _tables.append([(((x & 255) << 8) | (x >> 8)) - 20 for x in range(65536)])
    return _tables[0]


def swap32(x: int) -> int:
    return int.from_bytes(x.to_bytes(4, "little"), "big")


def swap16(x: int) -> int:
    return ((x & 255) << 8) | (x >> 8)


_KEY4 = struct.Struct("4s4s2s2s")
_SWAP_ORDER = itemgetter(1, 0, 3, 2)


def reverse_key(key: bytes, _split=_KEY4.unpack, _join=_KEY4.pack) -> bytes:
    """The key of the other direction: swap addresses and ports."""
    if len(key) == 12:
        a, b, pa, pb = _split(key)
        return _join(b, a, pb, pa)
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
        self.fold_from = min(FOLD_FROM, self.fold_after)
        self.units = 1_000_000                 # timestamp fractions per second (set from the first chunk)
        self.scale = 1e-6
        self.tcp_frame = array("q")   # frame number (1-based) of each conversation's first packet
        self.udp_frame = array("q")
        self.tcp: list = []           # in order of first packet: direction 0's list, or a folded array
        self.tcp_keys: list[bytes] = []
        self.udp: list[list] = []
        self.tcp_live: dict[bytes, list] = {}    # key (either direction) -> that direction's state
        self.tcp_slow: dict[bytes, list] = {}    # the same for conversations kept for ladders
        self.tcp_closed: dict[bytes, int] = {}   # key of a folded conversation -> its position
        self.udp_fwd: dict[bytes, list] = {}
        self.udp_rev: dict[bytes, list] = {}
        self.udp_slow_fwd: dict[bytes, list] = {}   # conversations kept for ladders
        self.udp_slow_rev: dict[bytes, list] = {}
        self.icmp: dict[bytes, list] = {}  # UDP conversation key -> [(exchange number, time, text)]
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.skipped: dict[str, int] = {}
        self.skipped_bytes = 0
        self.other_bytes = 0    # bytes of other workers' conversations (parts > 1)
        self.ipv6 = 0
        self.packets = 0
        self.bytes = 0          # set by count_bytes() (build() calls it)

    def seconds(self, t: int) -> float:
        """A time as float seconds (``seconds + fraction * scale``, as the record has them)."""
        return (t & M32) + (t >> 32) * self.scale

    def ticks(self, t: int) -> int:
        """A time as an exact count of fraction units (microseconds or nanoseconds)."""
        return (t & M32) * self.units + (t >> 32)

    def count_bytes(self) -> int:
        """Frame bytes of every packet read: each one is in a conversation, skipped or another worker's."""
        n = self.skipped_bytes + self.other_bytes
        n += sum(c[C_BYTES] if type(c) is list else c[F_BYTES] for c in self.tcp)
        n += sum(c[U_BYTES] for c in self.udp)
        self.bytes = n
        return n

    # --- reading the state -----------------------------------------------------------------------------

    def tcp_flat(self, i: int):
        """The i-th TCP conversation in flat form (see ``F_*``): a list, or the folded array."""
        c = self.tcp[i]
        if type(c) is list:
            return c[S_NEXTSEQ:S_SIZE] + c[S_OTHER][S_NEXTSEQ:S_SIZE] + c[C_FIRST:]
        return c

    def tcp_detail(self, i: int) -> list | None:
        c = self.tcp[i]
        return c[C_DETAIL] if type(c) is list else None

    # --- creation and rare events ----------------------------------------------------------------------

    def new_tcp(self, key: bytes, t: int, frame: int) -> list:
        """Start a TCP conversation; returns the state of its first direction (the conversation)."""
        idx = len(self.tcp)
        self.tcp_frame.append(frame)
        self.tcp_keys.append(key)
        c = _NEW_S0[:]
        s1 = _NEW_S1[:]
        c[S_CONV] = s1[S_CONV] = s1[S_OTHER] = c
        c[S_OTHER] = s1
        rkey = s1[S_KEY] = reverse_key(key)
        c[S_KEY] = key
        c[C_FIRST] = c[C_LAST] = t
        c[C_IDX] = idx
        self.tcp.append(c)
        if idx < self.detail:
            c[C_DETAIL] = []
            d = self.tcp_slow
        else:
            d = self.tcp_live
        d[key] = c
        d[rkey] = s1
        return c

    def new_udp(self, key: bytes, t: int, frame: int, orig: int, plen: int) -> list:
        """Start a UDP conversation with its first datagram (a request)."""
        self.udp_frame.append(frame)
        c = [t, t, 1, orig, plen, 0, key, None, t, plen, -1, 0, 0]
        if len(self.udp) < self.detail:
            c[U_DETAIL] = [(t, 0, 0, 0, 0, plen, orig, 0)]
            self.udp_slow_fwd[key] = c
            self.udp_slow_rev[reverse_key(key)] = c
        else:
            self.udp_fwd[key] = c
            self.udp_rev[reverse_key(key)] = c
        self.udp.append(c)
        return c

    def _forget(self, c: list) -> None:
        for d in (self.tcp_live, self.tcp_slow):
            d.pop(c[S_KEY], None)
            d.pop(c[S_OTHER][S_KEY], None)

    def open_tcp(self, key: bytes, t: int, frame: int) -> list:
        """A packet of no open conversation: unfold a closed one it belongs to, or start a new one.
        Returns the packet's direction state."""
        closed = self.tcp_closed
        if closed:
            for k, d in ((key, 0), (reverse_key(key), 1)):
                i = closed.pop(k, None)
                if i is not None:
                    c = self.unfold(i, k)
                    return c if d == 0 else c[S_OTHER]
        return self.new_tcp(key, t, frame)

    def retire(self, c: list) -> None:
        """Fold a closed conversation into an array and forget its dictionary entries.

        Only once the capture is not small (``fold_from`` conversations): below that the memory it saves
        does not matter. A late packet unfolds it. Folded after ``fold_after`` conversations, it then
        carries on with its moment-to-moment times reset to its last packet's (``F_CLOSING`` = 2 marks
        it): that is what this analysis has always done on big captures, so the results stay the same.
        """
        if c[C_DETAIL] is not None or len(self.tcp) < self.fold_from:
            return
        s1 = c[S_OTHER]
        key = c[S_KEY]
        live = self.tcp_live
        del live[key]
        del live[s1[S_KEY]]
        idx = c[C_IDX]
        self.tcp_closed[key] = idx
        f = array("q", c[S_NEXTSEQ:S_SIZE] + s1[S_NEXTSEQ:S_SIZE] + c[C_FIRST:])
        if len(self.tcp) >= self.fold_after:
            f[F_CLOSING] = 2
        self.tcp[idx] = f
        c[S_CONV] = c[S_OTHER] = s1[S_CONV] = s1[S_OTHER] = None   # no reference cycles left

    def unfold(self, i: int, key: bytes) -> list:
        """Make the folded i-th conversation live again; returns it (its direction-0 state)."""
        f = self.tcp[i]
        c = [None, None, key, 0, *f[0:12], None, *f[F_FIRST:]]
        s1 = [c, c, reverse_key(key), 1, *f[12:24]]
        c[S_CONV] = c
        c[S_OTHER] = s1
        if c[C_CLOSING] == 2:
            c[C_MRUSYN] = -1
            last = c[C_LAST]
            for s in (c, s1):
                s[S_NSTIME] = s[S_ACKTIME] = last
                s[S_DUPRUN] = 0
        c[C_CLOSING] = 1
        self.tcp[i] = c
        self.tcp_live[key] = c
        self.tcp_live[s1[S_KEY]] = s1
        return c

    # --- the general TCP and UDP analysis (every case) ------------------------------------------------

    def tcp_packet(self, key: bytes, t: int, orig: int, flags: int, seq: int, ack: int, win: int,
                   plen: int, frame: int) -> None:
        """One TCP segment (``ack``/``win`` byte-swapped as in the fast path)."""
        s = self.tcp_live.get(key)
        if s is None:
            s = self.tcp_slow.get(key)
            if s is None:
                s = self.open_tcp(key, t, frame)
        c = s[S_CONV]
        if flags & 6:
            if flags & 22 == 18:     # SYN-ACK
                s[S_SYNACK] += 1
                if s[S_ISN] < 0:
                    s[S_ISN] = seq
            else:
                s = self.tcp_control(s, key, t, flags, seq, frame)
                c = s[S_CONV]
        elif flags & FIN and s[S_FIN] < 0:
            s[S_FIN] = t
            if s[S_OTHER][S_FIN] >= 0:
                c[C_CLOSING] = 1
        c[C_LAST] = t
        c[C_PKTS] += 1
        c[C_BYTES] += orig
        det = c[C_DETAIL]
        if plen or flags & 3:
            if det is not None:
                det.append((t, s[S_DIR], flags, seq, ack, plen, orig, win))
            self.tcp_sequence(c, s, t, seq, plen, flags)
        else:
            if det is not None:
                det.append((t, s[S_DIR], flags, seq, ack, plen, orig, win))
            if flags & ACK and win and win == s[S_WIN] and ack == s[S_LASTACK] and seq == s[S_NEXTSEQ]:
                s[S_DUPRUN] += 1
                c[C_DUPACK] += 1
                if det is not None:
                    det.append(("note", "duplicate ACK"))
        if flags & ACK:
            if ack != s[S_LASTACK]:
                s[S_LASTACK] = ack
                s[S_DUPRUN] = 0
                if c[C_IRTT] < 0 and c[C_MRUSYN] >= 0 and not flags & 6:
                    c[C_IRTT] = t
                    c[C_IRTT0] = c[C_MRUSYN]
            s[S_ACKTIME] = t
            s[S_WIN] = win
        if c[C_CLOSING] and not plen and not flags & 3:
            self.retire(c)

    def tcp_sequence(self, c: list, s: list, t: int, seq: int, plen: int, flags: int) -> None:
        """Sequence analysis of a segment with data, SYN or FIN."""
        ns = s[S_NEXTSEQ]
        if ns >= 0 and ns != seq and ((ns - seq) & M32) < HALF:
            self.tcp_old_segment(c, s, t, seq, plen, flags)
            return
        nseq = (seq + plen + (1 if flags & 3 else 0)) & M32
        if ns < 0 or (nseq != ns and ((nseq - ns) & M32) < HALF):
            s[S_NEXTSEQ] = nseq
            s[S_NSTIME] = t
        if plen:
            s[S_PAY] += plen
            d = s[S_DIR]
            if c[C_EXDIR] == d:
                c[-1] += plen
            else:
                c += (d, t, plen)    # a burst: direction, time of its first byte, bytes
                c[C_EXDIR] = d

    def tcp_control(self, s: list, key: bytes, t: int, flags: int, seq: int, frame: int) -> list:
        """SYN/FIN/RST bookkeeping; returns the direction state (of a new conversation on 4-tuple
        reuse)."""
        c = s[S_CONV]
        if flags & SYN:
            if flags & ACK:
                s[S_SYNACK] += 1
                if s[S_ISN] < 0:
                    s[S_ISN] = seq
            else:
                isn = s[S_ISN]
                if isn >= 0 and isn != seq and c[C_PKTS] > 0:
                    self._forget(c)   # port reuse: a new conversation (as Wireshark does)
                    s = c = self.new_tcp(key, t, frame)
                s[S_SYN] += 1
                s[S_ISN] = seq
                c[C_MRUSYN] = t
        if flags & FIN and s[S_FIN] < 0:
            s[S_FIN] = t
            if s[S_OTHER][S_FIN] >= 0:
                c[C_CLOSING] = 1
        if flags & RST:
            s[S_RST] += 1
            c[C_CLOSING] = 1
        return s

    def tcp_old_segment(self, c: list, s: list, t: int, seq: int, plen: int, flags: int) -> None:
        """A data/SYN/FIN segment below the highest sequence number seen: classify it like Wireshark."""
        nextseq = s[S_NEXTSEQ]
        if (plen <= 1 and seq == ((nextseq - 1) & M32) and not flags & (SYN | FIN | RST)):
            return  # keep-alive
        r = s[S_OTHER]
        secs = self.seconds
        ts = secs(t)
        lastack = r[S_LASTACK]
        lastack = swap32(lastack) if lastack >= 0 else None
        if (r[S_DUPRUN] >= 2 and lastack == seq and r[S_ACKTIME] >= 0
                and ts - secs(r[S_ACKTIME]) < 0.020):
            c[C_FASTRT] += 1
            c[C_RETRANS] += 1
            self._mark(c, "fast retransmission")
            return
        irtt = secs(c[C_IRTT]) - secs(c[C_IRTT0]) if c[C_IRTT] >= 0 else None
        thres = irtt if irtt else 0.003
        extra = 1 if flags & (SYN | FIN) else 0
        if ts - secs(s[S_NSTIME]) < thres and nextseq != ((seq + plen + extra) & M32):
            c[C_OOO] += 1
            self._mark(c, "out-of-order")
            return
        end = (seq + plen) & M32
        if lastack is not None and (end == lastack or seq_lt(end, lastack)):
            c[C_SPURIOUS] += 1
            c[C_RETRANS] += 1      # tshark's tcp.analysis.retransmission includes these too
            self._mark(c, "spurious retransmission")
            return
        c[C_RETRANS] += 1
        self._mark(c, "retransmission")

    @staticmethod
    def _mark(c: list, what: str) -> None:
        det = c[C_DETAIL]
        if det is not None:
            det.append(("note", what))

    def udp_packet(self, key: bytes, t: int, orig: int, plen: int, frame: int) -> None:
        """One UDP datagram."""
        d = 0
        c = self.udp_fwd.get(key) or self.udp_slow_fwd.get(key)
        if c is None:
            d = 1
            c = self.udp_rev.get(key) or self.udp_slow_rev.get(key)
            if c is None:
                self.new_udp(key, t, frame, orig, plen)
                return
        c[U_LAST] = t
        c[U_PKTS] += 1
        c[U_BYTES] += orig
        c[U_PAY + d] += plen
        if d == 0:
            c += (t, plen, -1, 0, 0)   # request time, bytes; reply time, bytes, replies
        elif len(c) > U_SIZE:
            if c[-3] < 0:
                c[-3] = t
                c[-2] = plen
                c[-1] = 1
            else:
                c[-2] += plen
                c[-1] += 1
        else:
            c += (-1, 0, t, plen, 1)
        det = c[U_DETAIL]
        if det is not None:
            det.append((t, d, 0, 0, 0, plen, orig, 0))

    def skip(self, reason: str, orig: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_bytes += orig

    # --- the hot loop ---------------------------------------------------------------------------------

    def feed(self, chunk: Chunk) -> int:
        """Account every complete record in ``chunk``; set and return ``chunk.consumed``."""
        units = 1_000_000_000 if chunk.frac_scale < 1e-7 else 1_000_000
        if self.first_ts is None:
            self.units, self.scale = units, chunk.frac_scale
        fast, l2 = FAST.get(chunk.linktype, (None, 0))
        if fast is None or chunk.big_endian or units != self.units:
            return self._feed_general(chunk)
        buf = chunk.data
        end = chunk.end
        if self.first_ts is None and end >= 16:
            self.first_ts = self.seconds(struct.unpack_from("<Q", buf, 0)[0])
        unpack = fast.unpack_from
        l2_udp = l2 + 28
        l2_tcp = l2 + 20
        sw20 = _swapped_minus_20()
        thl_of = _THL
        live = self.tcp_live
        live_get = live.get
        tcp_slow = self.tcp_slow
        closed = self.tcp_closed
        tcp_keys_append = self.tcp_keys.append
        tcp_frame_append = self.tcp_frame.append
        new_s0, new_s1 = _NEW_S0, _NEW_S1
        rk_split, rk_join = _KEY4.unpack, _KEY4.pack
        rk_order = _SWAP_ORDER
        udp = self.udp
        udp_fwd, udp_rev = self.udp_fwd, self.udp_rev
        udp_slow_fwd, udp_slow_rev = self.udp_slow_fwd, self.udp_slow_rev
        udp_frame_append = self.udp_frame.append
        detail = self.detail
        fwd_get = self.udp_fwd.get
        rev_get = self.udp_rev.get
        tcp_packet, udp_packet, tcp_sequence = self.tcp_packet, self.udp_packet, self.tcp_sequence
        retire = self.retire
        tcp = self.tcp
        fold_from = self.fold_from
        from_bytes = int.from_bytes
        split = self.parts > 1
        part, parts = self.part, self.parts
        other_bytes = 0
        m32 = M32
        base = n = self.packets
        o = 0
        t = -1
        # The chunk is padded with zero bytes: an unpack at its end reads them, finds a record that does
        # not fit, and stops.
        for n in count(base + 1):   # n: the frame number
            t, incl, orig, et, vihl, totlen, frag, proto, key, seqb, ack, off, flags, win = unpack(buf, o)
            o += incl + 16
            if o > end:
                o -= incl + 16
                break
            if et != 8 or vihl != 0x45 or frag & 0xFF3F or not totlen:
                pass
            elif split and (proto == 6 or proto == 17) and incl >= l2_udp and (
                    key[9] ^ key[11]) % parts != part:
                other_bytes += orig     # another worker's conversation
                continue
            elif proto == 6:
                thl = thl_of[off]
                if incl >= l2_tcp + thl:
                    plen = sw20[totlen] - thl
                    if plen < 0:
                        plen = 0
                    s = live_get(key)
                    if s is None:
                        if (flags & 23 == 2 and not plen and len(tcp) >= detail and key not in tcp_slow
                                and (not closed or key not in closed)):
                            rkey = rk_join(*rk_order(rk_split(key)))
                            if not closed or rkey not in closed:   # a SYN opens a conversation
                                seq = from_bytes(seqb, "big")
                                c = new_s0[:]
                                s = new_s1[:]
                                c[0] = s[0] = s[1] = c
                                c[1] = s
                                c[2] = key
                                s[2] = rkey
                                c[4] = (seq + 1) & m32
                                c[5] = c[17] = c[18] = c[24] = t
                                c[11] = c[19] = 1
                                c[15] = seq
                                c[20] = orig
                                c[31] = len(tcp)
                                tcp.append(c)
                                tcp_keys_append(key)
                                tcp_frame_append(n)
                                live[key] = c
                                live[rkey] = s
                                continue
                        tcp_packet(key, t, orig, flags, from_bytes(seqb, "big"), ack, win, plen, n)
                        continue
                    if flags & 6 and flags & 23 != 18:   # SYN, RST: the general path
                        tcp_packet(key, t, orig, flags, from_bytes(seqb, "big"), ack, win, plen, n)
                        continue
                    c = s[0]
                    c[18] = t
                    c[19] += 1
                    c[20] += orig
                    if plen or flags & 3:
                        seq = from_bytes(seqb, "big")
                        if flags & 2:                    # SYN-ACK
                            s[12] += 1
                            if s[15] < 0:
                                s[15] = seq
                        elif flags & 1 and s[13] < 0:    # first FIN this way
                            s[13] = t
                            if s[1][13] >= 0:
                                c[30] = 1
                        ns = s[4]
                        if seq == ns or ns < 0:          # in order, or the first segment this way
                            s[4] = (seq + plen + (1 if flags & 3 else 0)) & m32
                            s[5] = t
                            if plen:
                                s[10] += plen
                                d = s[3]
                                if c[21] == d:
                                    c[-1] += plen
                                else:
                                    c += (d, t, plen)
                                    c[21] = d
                        else:
                            tcp_sequence(c, s, t, seq, plen, flags)
                        if flags & 16:
                            if ack != s[6]:
                                s[6] = ack
                                s[8] = 0
                                if c[22] < 0 and c[24] >= 0 and not flags & 6:
                                    c[22] = t
                                    c[23] = c[24]
                            s[9] = t
                            s[7] = win
                        continue
                    if flags & 16:                       # a pure ACK
                        if ack != s[6]:
                            s[6] = ack
                            s[8] = 0
                            if c[22] < 0 and c[24] >= 0:
                                c[22] = t
                                c[23] = c[24]
                        elif win and win == s[7] and from_bytes(seqb, "big") == s[4]:
                            s[8] += 1                    # duplicate ACK
                            c[27] += 1
                        s[9] = t
                        s[7] = win
                    if c[30] and len(tcp) >= fold_from:
                        retire(c)
                    continue
            elif proto == 17 and incl >= l2_udp:
                plen = sw20[totlen] - 8
                c = fwd_get(key)
                if c is not None:
                    c[1] = t
                    c[2] += 1
                    c[3] += orig
                    c[4] += plen
                    c += (t, plen, -1, 0, 0)
                    continue
                c = rev_get(key)
                if c is not None:                    # (it has an exchange: its first datagram's)
                    c[1] = t
                    c[2] += 1
                    c[3] += orig
                    c[5] += plen
                    if c[-3] < 0:
                        c[-3] = t
                        c[-2] = plen
                        c[-1] = 1
                    else:
                        c[-2] += plen
                        c[-1] += 1
                    continue
                if len(udp) < detail or key in udp_slow_fwd or key in udp_slow_rev:
                    udp_packet(key, t, orig, plen, n)
                    continue
                c = [t, t, 1, orig, plen, 0, key, None, t, plen, -1, 0, 0]   # a new one
                udp.append(c)
                udp_frame_append(n)
                udp_fwd[key] = c
                udp_rev[rk_join(*rk_order(rk_split(key)))] = c
                continue
            r = self.slow(chunk.linktype, buf, o - incl, incl, orig, t)
            if r is not None:
                self._dispatch(r, t, orig, n)
        chunk.consumed = o
        self.packets = n - 1
        self.other_bytes += other_bytes
        if t >= 0:
            self.last_ts = self.seconds(t)
        return o

    def _dispatch(self, r: tuple, t: int, orig: int, frame: int) -> None:
        proto, key, seq, ack, flags, win, plen = r
        if self.parts > 1 and (key[-3] ^ key[-1]) % self.parts != self.part:
            self.other_bytes += orig
            return
        if proto == 6:
            self.tcp_packet(key, t, orig, flags, seq, ack, win, plen, frame)
        else:
            self.udp_packet(key, t, orig, plen, frame)

    def _feed_general(self, chunk: Chunk) -> int:
        """Any link type and byte order: every frame through the general decoder."""
        buf = chunk.data
        end = chunk.end
        hdr = struct.Struct(">IIII" if chunk.big_endian else "<IIII").unpack_from
        if self.first_ts is None and end >= 16:
            ts_s, ts_f = hdr(buf, 0)[:2]
            self.first_ts = self.seconds(ts_s | ts_f << 32)
        o = 0
        t = -1
        n = self.packets
        while o + 16 <= end:
            ts_s, ts_f, incl, orig = hdr(buf, o)
            p = o + 16
            if p + incl > end:
                break
            o = p + incl
            n += 1
            t = ts_s | ts_f << 32
            r = self.slow(chunk.linktype, buf, p, incl, orig, t)
            if r is not None:
                self._dispatch(r, t, orig, n)
        chunk.consumed = o
        self.packets = n
        if t >= 0:
            self.last_ts = self.seconds(t)
        return o

    def slow(self, linktype: int, buf: bytes, p: int, incl: int, orig: int, t: int):
        """The general decoder's answer in the hot loop's terms, or None (frame skipped/noted)."""
        r = dec.decode(linktype, buf, p, incl, orig)
        if type(r) is str:
            self.skip(r, orig)
            return None
        if r[0] == "icmp":
            self.icmp_error(r, t, orig)
            return None
        proto, key, seq, ack, flags, win, plen = r
        if len(key) > 12:
            self.ipv6 += 1
        # into the fast path's terms: ack and window byte-swapped
        return proto, key, seq, swap32(ack), flags, swap16(win), plen

    def icmp_error(self, r: tuple, t: int, orig: int) -> None:
        """An ICMP error quoting one of our UDP packets: note it on that conversation's exchange."""
        _, proto, key, text = r
        self.skip(dec.SKIP_OTHER_PROTO, orig)
        if proto != dec.UDP:
            return
        c = self.udp_fwd.get(key) or self.udp_slow_fwd.get(key)
        if c is None:
            return
        self.icmp.setdefault(c[U_KEY], []).append(((len(c) - U_SIZE) // 5 - 1, t, text))
        det = c[U_DETAIL]
        if det is not None:
            det.append((t, 1, -1, 0, 0, 0, orig, text))


def build(path: str | Path, detail: int = DEFAULT_DETAIL, part: int = 0, parts: int = 1
          ) -> tuple[Builder, ReadInfo]:
    """Stream the file through a Builder.

    The garbage collector is paused meanwhile, and what was built is then frozen out of its sight
    (gc.freeze): walking a million small lists again and again would only cost time.
    """
    info = ReadInfo(str(path))
    b = Builder(detail, part, parts)
    was = gc.isenabled()
    gc.disable()
    try:
        for chunk in read_chunks(path, info):
            b.feed(chunk)
        b.count_bytes()
    finally:
        gc.freeze()
        if was:
            gc.enable()
    return b, info
