"""A capture's TCP and UDP conversations, built in one streaming pass over its packets.

``build(path)`` reads the file (``pcap.py``) chunk by chunk into a ``Builder``: the common packets go
through the fast path (``fastpath.py``), every other one through the general decoder (``decode.py``)
and the general analysis of its protocol. The builder holds

- ``tcp``: the TCP conversations and their analysis (``tcp.TcpConversations``),
- ``udp``: the UDP conversations, their exchanges and ICMP notes (``udp.UdpConversations``),
- what was not analysed (``skipped``: reason -> packets), the packet and byte counts, the first and
  last packet's time, and the unit of its timestamps (``times``, see ``wire.py``).

Only the first few conversations of each protocol (``detail``) also record their packets, for the
ladder diagrams; every other one is a few compact lists of ints (see ``tcp.py``, ``udp.py``).
"""
from __future__ import annotations

import gc
import struct
from collections.abc import Iterable
from pathlib import Path

from labctl.analyse import decode as dec
from labctl.analyse import fastpath
from labctl.analyse import tcp as tcp_state
from labctl.analyse.pcap import Chunk, ReadInfo, read_chunks
from labctl.analyse.tcp import TcpConversations
from labctl.analyse.udp import UdpConversations
from labctl.analyse.wire import Timestamps, swap16, swap32

DEFAULT_DETAIL = 8


class Builder:
    """Feeds chunks of pcap records and keeps the conversations' compact state."""

    def __init__(self, detail: int = DEFAULT_DETAIL, part: int = 0, parts: int = 1) -> None:
        self.detail = detail
        self.part = part      # with parts > 1: keep only conversations whose ports hash to ``part``
        self.parts = parts
        self.times = Timestamps()  # their unit is set from the first chunk
        fold_after = tcp_state.FOLD_AFTER * parts   # a worker holds 1/parts of the conversations
        self.tcp = TcpConversations(self.times, detail, fold_after, min(tcp_state.FOLD_FROM, fold_after))
        self.udp = UdpConversations(detail)
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.skipped: dict[str, int] = {}
        self.skipped_bytes = 0
        self.other_bytes = 0    # bytes of other workers' conversations (parts > 1)
        self.ipv6 = 0
        self.decoder = dec.Decoder()   # the general decoder: fragments being reassembled, repairs made
        self.shared_bytes = 0   # frames counted in two conversations (a UDP tunnel and what it carries)
        self.notes: list[str] = []     # what the decoder repaired or reassembled (set by finish())
        self.packets = 0
        self.bytes = 0          # set by count_bytes() (build() calls it)

    def seconds(self, t: int) -> float:
        return self.times.seconds(t)

    def count_bytes(self) -> int:
        """Frame bytes of every packet read: each one is in a conversation, skipped or another worker's."""
        self.bytes = (self.skipped_bytes + self.other_bytes + self.tcp.total_bytes() + self.udp.total_bytes()
                      - self.shared_bytes)
        return self.bytes

    def finish(self) -> None:
        """The capture ended: incomplete fragments are counted as not analysed, the repairs noted."""
        frags = self.decoder.frags
        frags.finish()
        if frags.lost_frames:
            self.skipped[dec.SKIP_FRAG_LOST] = frags.lost_frames
            self.skipped_bytes += frags.lost_bytes
        self.notes = [f"{n} packet(s): {what}" for what, n in sorted(self.decoder.malformed.items())]
        self.notes += frags.notes()
        snmp = self.udp.snmp_conversations()
        if snmp:
            self.notes.append(f"{snmp} SNMP conversation(s): Wireshark's table shows each as two (its SNMP "
                              "dissector starts a new conversation for what follows the first request); "
                              "here a request and its reply stay one conversation")

    def feed(self, chunk: Chunk) -> int:
        """Account every complete record in ``chunk``; set and return ``chunk.consumed``."""
        units = 1_000_000_000 if chunk.frac_scale < 1e-7 else 1_000_000
        if self.first_ts is None:
            self.times.set_units(units, chunk.frac_scale, chunk.epoch)
        if fastpath.applies(chunk) and units == self.times.units:
            return fastpath.feed(self, chunk)
        return self._feed_general(chunk)

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
            if p + incl > end or incl > chunk.limit:
                break
            o = p + incl
            n += 1
            t = ts_s | ts_f << 32
            r = self.general(chunk.linktype, buf, p, incl, orig, t)
            if r is not None:
                self.dispatch(r, t, orig, n)
        chunk.consumed = o
        chunk.records = n - self.packets
        self.packets = n
        if t >= 0:
            self.last_ts = self.seconds(t)
        return o

    def general(self, linktype: int, buf: bytes, p: int, incl: int, orig: int, t: int):
        """The general decoder's answer in the fast path's terms (ACK and window byte-swapped; the
        bytes to count last), a list of those (a tunnel and what it carries), or None (the frame was
        skipped, held as a fragment, or an ICMP error noted)."""
        r = self.decoder.decode(linktype, buf, p, incl, orig, t)
        if r is None:
            return None
        tr = type(r)
        if tr is str:
            self.skip(r, orig)
            return None
        if tr is list:
            return [self._fast_terms(x) for x in r]
        if r[0] == "icmp":
            _, proto, key, text = r
            self.skip(dec.SKIP_OTHER_PROTO, orig)
            if proto == dec.UDP:
                self.udp.icmp_error(key, t, orig, text)
            return None
        return self._fast_terms(r)

    def _fast_terms(self, r: tuple) -> tuple:
        proto, key, seq, ack, flags, win, plen, wire = r
        if len(key) > 12:
            self.ipv6 += 1
        return proto, key, seq, swap32(ack), flags, swap16(win), plen, wire

    def dispatch(self, r, t: int, orig: int, frame: int) -> None:
        """A decoded TCP segment or UDP datagram (or a list: a tunnel's, then what it carried) to its
        protocol's analysis (or to another worker)."""
        if type(r) is list:
            for x in r:
                self.dispatch(x, t, orig, frame)
            self.shared_bytes += orig * (len(r) - 1)
            return
        proto, key, seq, ack, flags, win, plen, wire = r
        if self.parts > 1 and (key[-3] ^ key[-1]) % self.parts != self.part:
            self.other_bytes += wire
            return
        if proto == 6:
            self.tcp.packet(key, t, wire, flags, seq, ack, win, plen, frame)
        else:
            self.udp.packet(key, t, wire, plen, frame)

    def skip(self, reason: str, orig: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_bytes += orig


def build(path: str | Path, detail: int = DEFAULT_DETAIL, part: int = 0, parts: int = 1
          ) -> tuple[Builder, ReadInfo]:
    """Stream the file through a Builder.

    The garbage collector is paused meanwhile, and what was built is then frozen out of its sight
    (gc.freeze): walking a million small lists again and again would only cost time.
    """
    info = ReadInfo(str(path))
    b = Builder(detail, part, parts)
    feed_all(b, read_chunks(path, info))
    return b, info


def feed_all(b: Builder, chunks: Iterable) -> None:
    """Feed ``b`` every chunk and finish it, the garbage collector paused, what was built frozen after."""
    was = gc.isenabled()
    gc.disable()
    try:
        for chunk in chunks:
            b.feed(chunk)
        b.finish()
        b.count_bytes()
    finally:
        gc.freeze()
        if was:
            gc.enable()
