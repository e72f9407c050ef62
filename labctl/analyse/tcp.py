"""TCP conversations: their compact state, and Wireshark's analysis of every segment.

A conversation is what Wireshark calls one: a 4-tuple, and a new one when a SYN with a new initial
sequence number follows on the same 4-tuple. Its state is two lists of plain ints, one per direction
(no object per packet); ``TcpConversations`` holds them and implements the whole analysis, which the
fast path (``fastpath.py``) short-cuts for the common segments.

The analysis follows Wireshark's ``tcp_analyze_sequence_number`` (Wireshark User's Guide, "TCP
Analysis") so the counts can be checked against ``tshark``, in its order:

- a keep-alive (0 or 1 byte, one below the next expected sequence number, no SYN/FIN/RST) is nothing
  else, and the other side's next ACK that repeats its last one is a keep-alive ACK, not a duplicate;
- a data segment whose data the other side already acknowledged is a spurious retransmission (checked
  before the out-of-order window: "supersedes Fast Retransmission, Out-Of-Order and Retransmission");
- below the highest sequence number seen in its direction, a segment is a fast retransmission (two
  duplicate ACKs asked for it within 20 ms), else out of order (within the first RTT, 3 ms by default,
  of the highest one and not ending exactly there), else a retransmission (fast and spurious ones count
  as retransmissions too, as tshark's ``tcp.analysis.retransmission`` does);
- a segment with no data and no SYN/FIN/RST that repeats its direction's last ACK, window and next
  sequence number is a duplicate ACK; a RST never is. A direction's first segment, data or not, sets
  its next sequence number, so a capture that starts mid-flow counts its duplicate ACKs too.

Times, keys and the byte-swapped ACK and window: see ``wire.py``. Missing values are ``-1`` (every field
is an int, so a closed conversation folds into an ``array``).
"""
from __future__ import annotations

import struct
from array import array

from labctl.analyse.wire import ACK, FIN, HALF, M32, RST, SYN, Timestamps, reverse_key, seq_lt, swap32

FOLD_AFTER = 32768       # conversations before a folded one unfolds with its times reset (``retire``)
FOLD_FROM = 32768        # conversations before closed ones are folded into arrays (memory)

# --- the state of one direction ``s`` (direction 0 sent the conversation's first packet) -------------
# Direction 0's list also holds the conversation's own slots (C_*), so ``s[S_CONV]`` is the conversation
# whichever the direction. The live dictionaries map each direction's key to its ``s``.
S_CONV, S_OTHER, S_KEY, S_DIR = 0, 1, 2, 3
S_NEXTSEQ = 4            # the highest sequence number seen, plus the segment's length
S_NSTIME = 5             # time of the segment that set S_NEXTSEQ
S_LASTACK, S_WIN = 6, 7  # the last ACK number and window sent (byte-swapped: wire.py)
S_DUPRUN = 8             # duplicate ACKs in a row (+ KEEPALIVE_SEEN: the other side sent a keep-alive)
S_ACKTIME = 9            # time of the last ACK sent
S_PAY = 10               # payload bytes (retransmitted copies not counted)
S_SYN, S_SYNACK = 11, 12  # SYNs and SYN-ACKs sent
S_FIN = 13               # time of the first FIN sent
S_RST = 14               # RSTs sent
S_ISN = 15               # initial sequence number
S_SIZE = 16
# --- the conversation's slots (direction 0's list only) -----------------------------------------------
C_DETAIL = 16            # packets kept for the ladder (None for most)
C_FIRST, C_LAST, C_PKTS, C_BYTES = 17, 18, 19, 20
C_EXDIR = 21             # direction of the last data burst
C_IRTT, C_IRTT0 = 22, 23  # the handshake: time of the ACK that completed it, of the SYN it answered
C_MRUSYN = 24            # time of the most recent SYN
C_RETRANS, C_OOO, C_DUPACK, C_SPURIOUS, C_FASTRT = 25, 26, 27, 28, 29
C_CLOSING = 30           # 1 once both sides sent FIN, or one sent RST (2: folded late, see retire)
C_IDX = 31               # position in TcpConversations.convs
C_SIZE = 32              # then the data bursts, 3 slots each: direction, time of first byte, bytes

# --- the flat form: what readers see --------------------------------------------------------------------
# All ints: direction 0's S_NEXTSEQ..S_ISN, direction 1's, then the conversation's C_FIRST.. and bursts.
# A closed conversation folds into it (an ``array``). Direction d's S_X is at S_X + F_DIR + 12 * d.
F_DIR = -S_NEXTSEQ
F_NEXTSEQ, F_NSTIME, F_LASTACK, F_WIN = S_NEXTSEQ + F_DIR, S_NSTIME + F_DIR, S_LASTACK + F_DIR, S_WIN + F_DIR
F_DUPRUN, F_ACKTIME, F_PAY = S_DUPRUN + F_DIR, S_ACKTIME + F_DIR, S_PAY + F_DIR
F_SYN, F_SYNACK, F_FIN, F_RST, F_ISN = (S_SYN + F_DIR, S_SYNACK + F_DIR, S_FIN + F_DIR, S_RST + F_DIR,
                                        S_ISN + F_DIR)
F_CONV = 24 - C_FIRST    # the conversation's C_X is at C_X + F_CONV
F_FIRST, F_LAST, F_PKTS, F_BYTES = C_FIRST + F_CONV, C_LAST + F_CONV, C_PKTS + F_CONV, C_BYTES + F_CONV
F_EXDIR, F_IRTT, F_IRTT0, F_MRUSYN = C_EXDIR + F_CONV, C_IRTT + F_CONV, C_IRTT0 + F_CONV, C_MRUSYN + F_CONV
F_RETRANS, F_OOO, F_DUPACK = C_RETRANS + F_CONV, C_OOO + F_CONV, C_DUPACK + F_CONV
F_SPURIOUS, F_FASTRT, F_CLOSING, F_IDX = (C_SPURIOUS + F_CONV, C_FASTRT + F_CONV, C_CLOSING + F_CONV,
                                          C_IDX + F_CONV)
F_SIZE = C_SIZE + F_CONV  # the bursts from here on

KEEPALIVE_SEEN = 1 << 40  # in S_DUPRUN: this side's next repeated ACK answers a keep-alive
DUPS = KEEPALIVE_SEEN - 1

NEW_S0 = [None, None, None, 0, -1, -1, -1, -1, 0, -1, 0, 0, 0, -1, 0, -1,
          None, 0, 0, 0, 0, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0]
NEW_S1 = [None, None, None, 1, -1, -1, -1, -1, 0, -1, 0, 0, 0, -1, 0, -1]
_PACK: dict[int, object] = {}    # flat form's length -> struct.pack of that many int64


class TcpConversations:
    """Every TCP conversation of a capture, in order of first packet, and the state to analyse them."""

    def __init__(self, times: Timestamps, detail: int, fold_after: int, fold_from: int) -> None:
        self.times = times
        self.detail = detail          # the first ``detail`` conversations keep their packets (ladders)
        self.fold_after = fold_after
        self.fold_from = fold_from
        self.convs: list = []         # direction 0's list, or a folded array
        self.keys: list[bytes] = []   # each conversation's key (its first packet's direction)
        self.frames = array("q")      # frame number (1-based) of each conversation's first packet
        self.live: dict[bytes, list] = {}    # key (either direction) -> that direction's state
        self.slow: dict[bytes, list] = {}    # the same for conversations kept for ladders
        self.closed: dict[bytes, int] = {}   # key of a folded conversation -> its position
        # conversation -> (direction, sequence number) -> [first sent (-1: not known here), last sent, copies,
        # spurious, payload bytes]: every segment sent again, for the time retransmissions cost (resent.py)
        self.resent: dict[int, dict[tuple[int, int], list[int]]] = {}

    def __len__(self) -> int:
        return len(self.convs)

    # --- reading ------------------------------------------------------------------------------------

    def flat(self, i: int):
        """The i-th conversation in flat form (see ``F_*``): a list, or the folded array."""
        c = self.convs[i]
        if type(c) is list:
            return c[S_NEXTSEQ:S_SIZE] + c[S_OTHER][S_NEXTSEQ:S_SIZE] + c[C_FIRST:]
        return c

    def detail_of(self, i: int) -> list | None:
        """The packets kept for the i-th conversation's ladder, or None."""
        c = self.convs[i]
        return c[C_DETAIL] if type(c) is list else None

    def total_bytes(self) -> int:
        return sum(c[C_BYTES] if type(c) is list else c[F_BYTES] for c in self.convs)

    # --- opening, folding, unfolding ----------------------------------------------------------------

    def new(self, key: bytes, t: int, frame: int) -> list:
        """Start a conversation; returns the state of its first direction (the conversation)."""
        idx = len(self.convs)
        self.frames.append(frame)
        self.keys.append(key)
        c = NEW_S0[:]
        s1 = NEW_S1[:]
        c[S_CONV] = s1[S_CONV] = s1[S_OTHER] = c
        c[S_OTHER] = s1
        rkey = s1[S_KEY] = reverse_key(key)
        c[S_KEY] = key
        c[C_FIRST] = c[C_LAST] = t
        c[C_IDX] = idx
        self.convs.append(c)
        if idx < self.detail:
            c[C_DETAIL] = []
            d = self.slow
        else:
            d = self.live
        d[key] = c
        d[rkey] = s1
        return c

    def open(self, key: bytes, t: int, frame: int) -> list:
        """A packet of no open conversation: unfold a closed one it belongs to, or start a new one.
        Returns the packet's direction state."""
        closed = self.closed
        if closed:
            for k, d in ((key, 0), (reverse_key(key), 1)):
                i = closed.pop(k, None)
                if i is not None:
                    c = self.unfold(i, k)
                    return c if d == 0 else c[S_OTHER]
        return self.new(key, t, frame)

    def forget(self, c: list) -> None:
        """Drop a conversation's keys (its 4-tuple is reused by a new one)."""
        for d in (self.live, self.slow):
            d.pop(c[S_KEY], None)
            d.pop(c[S_OTHER][S_KEY], None)

    def retire(self, c: list) -> None:
        """Fold a closed conversation into an array and forget its dictionary entries.

        Only once the capture is not small (``fold_from`` conversations): below that the memory it saves
        does not matter. A late packet unfolds it. Folded after ``fold_after`` conversations, it then
        carries on with its moment-to-moment times reset to its last packet's (``F_CLOSING`` = 2 marks
        it): that is what this analysis has always done on big captures, so the results stay the same.
        """
        if c[C_DETAIL] is not None or len(self.convs) < self.fold_from:
            return
        s1 = c[S_OTHER]
        key = c[S_KEY]
        live = self.live
        del live[key]
        del live[s1[S_KEY]]
        idx = c[C_IDX]
        self.closed[key] = idx
        n = 2 * (S_SIZE - S_NEXTSEQ) + len(c) - C_FIRST
        pack = _PACK.get(n)
        if pack is None:
            pack = _PACK[n] = struct.Struct(f"{n}q").pack
        # (array() of a list converts each int on its own; struct.pack, then one copy, is twice as fast)
        f = array("q", pack(*c[S_NEXTSEQ:S_SIZE], *s1[S_NEXTSEQ:S_SIZE], *c[C_FIRST:]))
        if len(self.convs) >= self.fold_after:
            f[F_CLOSING] = 2
        self.convs[idx] = f
        c[S_CONV] = c[S_OTHER] = s1[S_CONV] = s1[S_OTHER] = None   # no reference cycles left

    def unfold(self, i: int, key: bytes) -> list:
        """Make the folded i-th conversation live again; returns it (its direction-0 state)."""
        f = self.convs[i]
        c = [None, None, key, 0, *f[F_NEXTSEQ:F_ISN + 1], None, *f[F_FIRST:]]
        s1 = [c, c, reverse_key(key), 1, *f[F_NEXTSEQ + 12:F_ISN + 13]]
        c[S_CONV] = c
        c[S_OTHER] = s1
        if c[C_CLOSING] == 2:
            c[C_MRUSYN] = -1
            last = c[C_LAST]
            for s in (c, s1):
                s[S_NSTIME] = s[S_ACKTIME] = last
                s[S_DUPRUN] = 0
        c[C_CLOSING] = 1
        self.convs[i] = c
        self.live[key] = c
        self.live[s1[S_KEY]] = s1
        return c

    # --- the analysis of a segment (every case) -----------------------------------------------------

    def packet(self, key: bytes, t: int, orig: int, flags: int, seq: int, ack: int, win: int,
               plen: int, frame: int) -> None:
        """One TCP segment (``ack``/``win`` byte-swapped as in the fast path)."""
        s = self.live.get(key)
        if s is None:
            s = self.slow.get(key)
            if s is None:
                s = self.open(key, t, frame)
        c = s[S_CONV]
        if flags & 6:
            if flags & 22 == 18:     # SYN-ACK
                s[S_SYNACK] += 1
                if s[S_ISN] < 0:
                    s[S_ISN] = seq
            else:
                s = self.control(s, key, t, flags, seq, frame)
                c = s[S_CONV]
        elif flags & FIN and s[S_FIN] < 0:
            s[S_FIN] = t
            if s[S_OTHER][S_FIN] >= 0:
                c[C_CLOSING] = 1
        c[C_LAST] = t
        c[C_PKTS] += 1
        c[C_BYTES] += orig
        det = c[C_DETAIL]
        if det is not None:
            det.append((t, s[S_DIR], flags, seq, ack, plen, orig, win))
        if plen or flags & 3:
            self.sequence(c, s, t, seq, plen, flags)
        elif flags & ACK and not flags & RST:
            if ack == s[S_LASTACK]:
                self.repeated_ack(c, s, t, seq, win)
            elif seq != s[S_NEXTSEQ]:
                advance(s, t, seq)
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

    def repeated_ack(self, c: list, s: list, t: int, seq: int, win: int) -> None:
        """A segment without data, SYN, FIN or RST that repeats its direction's last ACK number (``win``
        byte-swapped): a keep-alive, the ACK of one, a duplicate ACK, or a window update."""
        ns = s[S_NEXTSEQ]
        if ns < 0:
            advance(s, t, seq)
        elif seq == (ns - 1) & M32:
            s[S_OTHER][S_DUPRUN] |= KEEPALIVE_SEEN   # a keep-alive
            _note(c, "keep-alive")
        elif win and win == s[S_WIN] and seq == ns:
            if s[S_DUPRUN] & KEEPALIVE_SEEN:
                s[S_DUPRUN] &= DUPS                   # the ACK of a keep-alive
                _note(c, "keep-alive ACK")
            else:
                s[S_DUPRUN] += 1
                c[C_DUPACK] += 1
                _note(c, "duplicate ACK")
        elif seq != ns:
            advance(s, t, seq)

    def sequence(self, c: list, s: list, t: int, seq: int, plen: int, flags: int) -> None:
        """Sequence analysis of a segment with data, SYN or FIN."""
        ns = s[S_NEXTSEQ]
        if ns != seq:
            if ns >= 0 and ((ns - seq) & M32) < HALF:
                self.old_segment(c, s, t, seq, plen, flags)
                return
            if plen and self.acknowledged(s, seq, plen):   # new to us, yet already acknowledged
                c[C_SPURIOUS] += 1
                c[C_RETRANS] += 1
                self.resend(c, s, t, seq, plen, flags, 1)
                _note(c, "spurious retransmission")
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

    def control(self, s: list, key: bytes, t: int, flags: int, seq: int, frame: int) -> list:
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
                    self.forget(c)   # port reuse: a new conversation (as Wireshark does)
                    s = c = self.new(key, t, frame)
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

    @staticmethod
    def acknowledged(s: list, seq: int, plen: int) -> bool:
        """Whether the other side already acknowledged every byte of this segment."""
        lastack = s[S_OTHER][S_LASTACK]
        if lastack < 0:
            return False
        lastack = swap32(lastack)
        end = (seq + plen) & M32
        return end == lastack or seq_lt(end, lastack)

    def old_segment(self, c: list, s: list, t: int, seq: int, plen: int, flags: int) -> None:
        """A data/SYN/FIN segment below the highest sequence number seen: classify it like Wireshark."""
        nextseq = s[S_NEXTSEQ]
        r = s[S_OTHER]
        if plen <= 1 and seq == ((nextseq - 1) & M32) and not flags & (SYN | FIN | RST):
            r[S_DUPRUN] |= KEEPALIVE_SEEN   # a keep-alive: nothing else
            _note(c, "keep-alive")
            return
        if plen and self.acknowledged(s, seq, plen):
            c[C_SPURIOUS] += 1
            c[C_RETRANS] += 1      # tshark's tcp.analysis.retransmission includes these too
            self.resend(c, s, t, seq, plen, flags, 1)
            _note(c, "spurious retransmission")
            return
        if plen > 1 and seq == ((nextseq - 1) & M32):
            return                 # the data after a zero-window probe: not sent before
        secs = self.times.seconds
        ts = secs(t)
        lastack = r[S_LASTACK]
        if (r[S_DUPRUN] & DUPS >= 2 and lastack >= 0 and swap32(lastack) == seq and r[S_ACKTIME] >= 0
                and ts - secs(r[S_ACKTIME]) < 0.020):
            c[C_FASTRT] += 1
            c[C_RETRANS] += 1
            self.resend(c, s, t, seq, plen, flags, 0)
            _note(c, "fast retransmission")
            return
        irtt = secs(c[C_IRTT]) - secs(c[C_IRTT0]) if c[C_IRTT] >= 0 else None
        thres = irtt if irtt else 0.003
        extra = 1 if flags & (SYN | FIN) else 0
        if ts - secs(s[S_NSTIME]) < thres and nextseq != ((seq + plen + extra) & M32):
            c[C_OOO] += 1
            _note(c, "out-of-order")
            return
        c[C_RETRANS] += 1
        self.resend(c, s, t, seq, plen, flags, 0)
        _note(c, "retransmission")

    def resend(self, c: list, s: list, t: int, seq: int, plen: int, flags: int, spurious: int) -> None:
        """A copy of the segment at ``seq`` sent again at ``t``; its original's time when it was the last
        segment this way (a SYN, a FIN, a tail segment), else -1 (``resent.py`` looks further)."""
        end = (seq + plen + (1 if flags & (SYN | FIN) else 0)) & M32
        segs = self.resent.setdefault(c[C_IDX], {})
        first = s[S_NSTIME] if end == s[S_NEXTSEQ] else -1
        e = segs.setdefault((s[S_DIR], seq), [first, t, 0, spurious, plen])
        e[1], e[2], e[3] = t, e[2] + 1, e[3] & spurious   # (spurious only if every copy was)


def advance(s: list, t: int, seq: int) -> None:
    """A segment without data at ``seq``: like Wireshark, it sets the next sequence number of its
    direction when there is none yet (a capture that starts mid-flow) or when it is beyond it (the
    segments before it were not captured)."""
    ns = s[S_NEXTSEQ]
    if ns < 0 or seq_lt(ns, seq):
        s[S_NEXTSEQ] = seq
        s[S_NSTIME] = t


def _note(c: list, what: str) -> None:
    """Note what the analysis found on the last packet kept for the ladder (if any are kept)."""
    det = c[C_DETAIL]
    if det is not None:
        det.append(("note", what))
