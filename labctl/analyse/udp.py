"""UDP conversations: their request/reply exchanges, and the ICMP errors that answer a request.

A conversation is a 4-tuple; whoever sent its first datagram is the client, and each datagram of the
client opens an exchange which the server's next datagrams answer. Its state is one list of plain ints:
the ``U_*`` slots, then the exchanges, 5 slots each (request time, request bytes, reply time, reply
bytes, replies; a reply before any request has request time -1). Times and keys: see ``wire.py``.
"""
from __future__ import annotations

from array import array

from labctl.analyse.tunnels import carries_tunnel
from labctl.analyse.wire import reverse_key

U_FIRST, U_LAST, U_PKTS, U_BYTES = 0, 1, 2, 3
U_PAY = 4                # client's payload bytes, then the server's at U_PAY + 1
U_KEY = 6                # the key of the client's direction
U_DETAIL = 7             # packets kept for the ladder (None for most)
U_SIZE = 8               # then the exchanges
EX_SIZE = 5


class UdpConversations:
    """Every UDP conversation of a capture, in order of first packet."""

    def __init__(self, detail: int) -> None:
        self.detail = detail              # the first ``detail`` conversations keep their packets
        self.convs: list[list] = []
        self.frames = array("q")          # frame number (1-based) of each conversation's first packet
        self.fwd: dict[bytes, list] = {}  # the client's key -> the conversation
        self.rev: dict[bytes, list] = {}  # the server's key -> the conversation
        self.slow_fwd: dict[bytes, list] = {}   # the same for conversations kept for ladders
        self.slow_rev: dict[bytes, list] = {}
        self.icmp: dict[bytes, list] = {}  # client's key -> [(exchange number, time, text)]

    def __len__(self) -> int:
        return len(self.convs)

    def total_bytes(self) -> int:
        return sum(c[U_BYTES] for c in self.convs)

    def snmp_conversations(self) -> int:
        """Conversations of more than one datagram to or from the SNMP port (161)."""
        return sum(1 for c in self.convs if c[U_PKTS] > 1 and b"\x00\xa1" in (c[U_KEY][-4:-2], c[U_KEY][-2:]))

    def detail_of(self, i: int) -> list | None:
        """The packets kept for the i-th conversation's ladder, or None."""
        return self.convs[i][U_DETAIL]

    def new(self, key: bytes, t: int, frame: int, orig: int, plen: int) -> list:
        """Start a conversation with its first datagram (a request)."""
        self.frames.append(frame)
        c = [t, t, 1, orig, plen, 0, key, None, t, plen, -1, 0, 0]
        ladder = len(self.convs) < self.detail
        if ladder or carries_tunnel(key):      # (a tunnel's datagrams must all be decoded: not fast)
            if ladder:
                c[U_DETAIL] = [(t, 0, 0, 0, 0, plen, orig, 0)]
            self.slow_fwd[key] = c
            self.slow_rev[reverse_key(key)] = c
        else:
            self.fwd[key] = c
            self.rev[reverse_key(key)] = c
        self.convs.append(c)
        return c

    def packet(self, key: bytes, t: int, orig: int, plen: int, frame: int) -> None:
        """One datagram: a request from the client, or a reply to its latest request."""
        d = 0
        c = self.fwd.get(key) or self.slow_fwd.get(key)
        if c is None:
            d = 1
            c = self.rev.get(key) or self.slow_rev.get(key)
            if c is None:
                self.new(key, t, frame, orig, plen)
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

    def icmp_error(self, key: bytes, t: int, orig: int, text: str) -> None:
        """An ICMP error quoting a client's datagram (``key``): note it on the exchange it answers."""
        c = self.fwd.get(key) or self.slow_fwd.get(key)
        if c is None:
            return
        self.icmp.setdefault(c[U_KEY], []).append(((len(c) - U_SIZE) // EX_SIZE - 1, t, text))
        det = c[U_DETAIL]
        if det is not None:
            det.append((t, 1, -1, 0, 0, 0, orig, text))
