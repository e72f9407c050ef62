"""The general decoder: every frame the fast path (``fastpath.py``) does not take.

``Decoder.decode`` finds the network layer of any link type (``linktypes.py``), walks the headers between
it and IP (VLAN stacks, PPPoE, MPLS, LLC/SNAP: ``tunnels.py``), decodes IPv4 (any header length) and
IPv6 (its extension headers: a hop-by-hop jumbo payload length, a routing header's final destination),
reassembles fragments (``fragments.py``), and follows tunnels (IP-in-IP, GRE, VXLAN, Geneve, ...) to the
TCP segment or UDP datagram inside. It returns plain tuples; nothing is kept per packet, except the
pieces of a datagram being reassembled.

What is wrong with a header is repaired once, here, the way Wireshark reads it, and counted
(``Decoder.malformed``): an IP total length larger than the frame is clamped to the frame (so the
payload is never more than the bytes on the wire), one smaller than its headers makes the packet
malformed (Wireshark stops there too), as does a TCP header longer than the segment or a UDP length
below 8.
"""
from __future__ import annotations

import struct

from labctl.analyse import tunnels as tun
from labctl.analyse.fragments import Reassembler
from labctl.analyse.linktypes import CUT, ET_IPV4, ET_IPV6, LINK, linktype_name

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58

# Why a frame was not analysed (keys of Builder.skipped); others are made by tunnels.py and linktypes.py.
SKIP_CUT = CUT
SKIP_BAD = "malformed header"
SKIP_OTHER_PROTO = "IP but neither TCP nor UDP: ICMP"
SKIP_FRAG_CUT = "IP fragment cut short by the snapshot length (not reassembled)"
SKIP_FRAG_LOST = "IP fragment of a datagram never completed"
SKIP_DEEP = "more than 8 nested tunnels"

# Repairs and refusals counted in Decoder.malformed
BAD_TOTLEN_LONG = "IP total length larger than the frame: payload clamped to the frame"
BAD_TOTLEN_SHORT = "IP total length smaller than its header"
BAD_V6_LONG = "IPv6 payload length larger than the frame: payload clamped to the frame"
BAD_TCP_HDR = "TCP header longer than the segment"
BAD_UDP_LEN = "UDP length below 8"
BAD_UDP_LONG = "UDP length larger than the IP payload: payload clamped"
BAD_IHL = "IPv4 header length below 20"
BAD_VERSION = "IP version neither 4 nor 6"

_V6_EXT = frozenset((0, 43, 44, 60, 51))
_REASSEMBLE = frozenset((TCP, UDP, 4, 41, 47, 51))    # what a datagram must carry to be worth holding
_IP4 = struct.Struct(">HHHBB")
_TCP = struct.Struct(">4xIIBBH")
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
MAX_DEPTH = 8
M32 = 0xFFFFFFFF


class Decoder:
    """Decodes frames; holds the fragments being reassembled and counts what it had to repair."""

    def __init__(self) -> None:
        self.frags = Reassembler()
        self.malformed: dict[str, int] = {}
        self.tunnelled = 0                 # packets found inside a tunnel

    def _bad(self, what: str) -> None:
        self.malformed[what] = self.malformed.get(what, 0) + 1

    def decode(self, linktype: int, buf: bytes, p: int, incl: int, orig: int, t: int = 0):
        """Decode one frame (``orig`` bytes on the wire, ``incl`` of them captured at ``buf[p:]``).

        Returns ``(proto, key, seq, ack, flags, win, payload_len, wire_bytes)`` for a TCP segment or
        UDP datagram; a list of those when a tunnel carried one inside another (the outer UDP datagram
        first); ``("icmp", proto, key, text)`` for an ICMP error quoting a UDP/TCP header; None for a
        fragment held for reassembly; or a string saying why the frame is not analysed.
        ``key`` is source address + destination address + source port + destination port.
        """
        link = LINK.get(linktype)
        if link is None:
            return f"not analysed: {linktype_name(linktype)} frames (link type {linktype}) carry no IP " \
                   "this tool decodes"
        r = link(buf, p, incl)
        if type(r) is str:
            return r
        et, off = r
        return self.network(et, buf, p + off, p + incl, orig - off, orig, t & M32, 0)

    def network(self, et: int, buf: bytes, o: int, end: int, wire: int, orig: int, now: int, depth: int):
        """What a header of Ethernet type ``et`` at ``buf[o:end]`` leads to (``wire``: its bytes on the
        wire, which may be more than were captured)."""
        layer2 = tun.LAYER2
        for _ in range(64):
            if et in (ET_IPV4, ET_IPV6):
                if end - o < 1:
                    return CUT
                v = buf[o] >> 4           # Wireshark follows the version for type 0x0800, not for 0x86DD
                if v == 4 and et == ET_IPV4:
                    return self.ipv4(buf, o, end, wire, orig, now, depth)
                if v == 6:
                    return self.ipv6(buf, o, end, wire, orig, now, depth)
                self._bad(BAD_VERSION)
                return SKIP_BAD
            f = layer2.get(et)
            if f is None:
                return tun.ethertype_reason(et)
            r = f(buf, o, end)
            if type(r) is str:
                return r
            et, o2 = r[0], r[1]
            wire -= o2 - o
            if len(r) > 2 and r[2] < wire:
                wire = r[2]
            o = o2
        return SKIP_DEEP

    def ipv4(self, buf: bytes, o: int, end: int, wire: int, orig: int, now: int, depth: int):
        if end - o < 20:
            return CUT
        ihl = (buf[o] & 15) * 4
        if ihl < 20:
            self._bad(BAD_IHL)
            return SKIP_BAD
        if end - o < ihl:
            return CUT
        totlen, ident, frag, _ttl, proto = _IP4.unpack_from(buf, o + 2)
        src, dst = buf[o + 12:o + 16], buf[o + 16:o + 20]
        if totlen == 0:           # TSO: a segment seen before the NIC split it; trust the frame
            totlen = wire
        elif totlen < ihl:
            self._bad(BAD_TOTLEN_SHORT)
            return SKIP_BAD
        whole = end - o >= totlen  # every byte the header claims was captured (else no reassembly)
        if totlen > wire:
            self._bad(BAD_TOTLEN_LONG)
            totlen = wire
        l4 = o + ihl
        l4end = min(end, o + totlen)
        l4len = totlen - ihl
        if frag & 0x3FFF:
            return self.fragment((4, src, dst, ident, proto), 4, (frag & 0x1FFF) * 8, not frag & 0x2000,
                                 whole, proto, src, dst, buf, l4, l4end, l4len, orig, now, depth)
        return self.transport(proto, src, dst, buf, l4, l4end, l4len, orig, now, depth)

    def ipv6(self, buf: bytes, o: int, end: int, wire: int, orig: int, now: int, depth: int):
        if end - o < 40:
            return CUT
        plen, nh = struct.unpack_from(">HB", buf, o + 4)
        src, dst = buf[o + 8:o + 24], buf[o + 24:o + 40]
        r = _v6_extensions(nh, buf, o + 40, end)
        if type(r) is str:
            return r
        nh, p, jumbo, final, frag, home = r
        if final is not None:
            dst = final           # a routing header: the conversation is with its final destination
        if home is not None:
            src = home            # a home address option (mobile IPv6): the conversation is with it
        if plen == 0 and jumbo is not None:
            plen = jumbo          # RFC 2675 jumbogram (Linux BIG TCP); without the option, as tshark: 0
        whole = end - o - 40 >= plen
        if plen > wire - 40:
            self._bad(BAD_V6_LONG)
            plen = wire - 40
        l4len = plen - (p - o - 40)
        if l4len < 0:
            self._bad(BAD_V6_LONG)
            return SKIP_BAD
        l4end = min(end, o + 40 + plen)
        if frag is not None:
            offset, last, ident = frag
            return self.fragment((6, src, dst, ident), 6, offset, last, whole, nh, src, dst, buf, p, l4end,
                                 l4len, orig, now, depth)
        return self.transport(nh, src, dst, buf, p, l4end, l4len, orig, now, depth)

    def fragment(self, key: tuple, version: int, offset: int, last: bool, whole: bool, proto: int,
                 src: bytes, dst: bytes, buf: bytes, o: int, end: int, l4len: int, orig: int, now: int,
                 depth: int):
        """A fragment: held until its datagram is complete, which is then decoded in this frame.
        (``whole``: the fragment's bytes were all captured; if not, Wireshark does not reassemble it
        but decodes a first fragment as it is, and so does this.)"""
        if proto not in _REASSEMBLE:
            return tun.proto_reason(proto)
        if not whole or l4len <= 0:
            if offset:
                return SKIP_FRAG_CUT
            return self.transport(proto, src, dst, buf, o, end, l4len, orig, now, depth)
        d = self.frags.add(key, now, version, offset, buf[o:o + l4len], last, orig)
        if d is None:
            return None
        data = bytes(d.data)
        if version == 6:
            r = _v6_extensions(proto, data, 0, len(data))
            if type(r) is str:
                return r
            proto, start = r[0], r[1]
        else:
            start = 0
        return self.transport(proto, src, dst, data, start, len(data), len(data) - start, d.wire, now, depth)

    def transport(self, proto: int, src: bytes, dst: bytes, buf: bytes, o: int, end: int, l4len: int,
                  orig: int, now: int, depth: int):
        """What an IP payload of protocol ``proto`` (``l4len`` bytes on the wire) is."""
        if proto == TCP:
            if end - o < 20:
                return CUT
            seq, ack, offb, flags, win = _TCP.unpack_from(buf, o)
            thl = (offb >> 4) * 4
            if thl < 20 or thl > l4len:
                self._bad(BAD_TCP_HDR)
                return SKIP_BAD
            if end - o < thl:      # options cut off: tshark does not count such a segment either
                return CUT
            return (TCP, src + dst + buf[o:o + 4], seq, ack, flags, win, l4len - thl, orig)
        if proto == UDP:
            if end - o < 8:
                return CUT
            ulen = _U16(buf, o + 4)[0]
            if ulen == 0 and len(src) == 16:    # an IPv6 jumbogram (over IPv4 tshark calls it bogus)
                ulen = l4len
            if ulen < 8:
                self._bad(BAD_UDP_LEN)
                return SKIP_BAD
            elif ulen > l4len:
                self._bad(BAD_UDP_LONG)
                ulen = l4len
            r = (UDP, src + dst + buf[o:o + 4], 0, 0, 0, 0, ulen - 8, orig)
            inner = self.udp_tunnel(buf, o, min(end, o + ulen), ulen, orig, now, depth)
            return r if inner is None else [r, *inner]
        if proto == 4 or proto == 41:
            return self._inner(ET_IPV4 if proto == 4 else ET_IPV6, buf, o, end, l4len, orig, now, depth)
        if proto == 47:
            r = tun.gre(buf, o, end)
            if type(r) is str:
                return r
            return self._inner(r[0], buf, r[1], end, l4len - (r[1] - o), orig, now, depth)
        if proto == 51 and end - o >= 8:    # IPsec AH (authenticated, not encrypted): what follows it
            size = (buf[o + 1] + 2) * 4
            return self.transport(buf[o], src, dst, buf, o + size, end, l4len - size, orig, now, depth)
        if proto == 103 and end - o >= 9 and buf[o] & 0x0F == 1:    # a PIM Register: the packet in it
            return self._inner(ET_IPV4, buf, o + 8, end, l4len - 8, orig, now, depth)
        if proto == 108 and end - o >= 4 and depth < MAX_DEPTH:      # IPComp: inflated, as tshark does
            data = _inflate(buf[o + 4:end])
            if data is None:
                return "IPComp payload not DEFLATE: not decoded"
            r = self.transport(buf[o], src, dst, data, 0, len(data), len(data), orig, now, depth + 1)
            if type(r) is tuple and r[0] in (TCP, UDP) and r[6] > l4len - 4:
                r = (*r[:6], max(0, l4len - 4), r[7])   # payload: what the wire carried, compressed
            return r
        if proto in (ICMP, ICMP6) and end - o >= 8:
            return _icmp_error(proto, buf, o, end) or tun.proto_reason(proto)
        return tun.proto_reason(proto)

    def _inner(self, et: int, buf: bytes, o: int, end: int, wire: int, orig: int, now: int, depth: int):
        if depth >= MAX_DEPTH:
            return SKIP_DEEP
        r = self.network(et, buf, o, end, wire, orig, now, depth + 1)
        if type(r) is tuple or type(r) is list:
            self.tunnelled += 1
        return r

    def udp_tunnel(self, buf: bytes, o: int, end: int, ulen: int, orig: int, now: int, depth: int):
        """The packets inside a UDP tunnel (tried on the lower port first, as tshark does), or None."""
        f = tun.tunnel_of(_U16(buf, o)[0], _U16(buf, o + 2)[0])
        if f is None:
            return None
        r = f(buf, o + 8, end)
        if type(r) is str:
            return None
        et, io = r
        inner = self._inner(et, buf, io, end, ulen - (io - o), orig, now, depth)
        if type(inner) is tuple:
            return [inner]
        if type(inner) is list:
            return inner
        return None


def _v6_extensions(nh: int, buf: bytes, p: int, end: int):
    """Walk IPv6 extension headers from ``buf[p]``: (next header, offset after them, jumbo payload
    length or None, final destination or None, (fragment offset, last?, identification) or None), or
    why the packet is not analysed."""
    jumbo = final = frag = home = None
    while nh in _V6_EXT:
        if end - p < 8:
            return CUT
        if nh == 44:
            offm = _U16(buf, p + 2)[0]
            frag = (offm & 0xFFF8, not offm & 1, _U32(buf, p + 4)[0])
            if frag[0] == 0 and frag[1]:
                frag = None       # an atomic fragment: the whole datagram
            nh, p = buf[p], p + 8
            if frag is not None:
                break
            continue
        nxt, hl = buf[p], buf[p + 1]
        size = (hl + 2) * 4 if nh == 51 else (hl + 1) * 8
        if end - p < size:
            return CUT
        if nh in (0, 60):
            opts = _options(buf, p + 2, p + size)
            if opts is None:
                return SKIP_BAD       # an option runs past its header: Wireshark stops there too
            if nh == 0 and len(opts.get(0xC2, b"")) == 4:
                jumbo = _U32(opts[0xC2], 0)[0]
            elif nh == 60 and len(opts.get(0xC9, b"")) == 16:
                home = opts[0xC9]
        elif nh == 43 and buf[p + 3]:        # segments left: the destination is not the last hop
            rtype = buf[p + 2]
            if rtype in (0, 2) and hl >= 2:
                n = hl // 2
                final = buf[p + 8 + 16 * (n - 1):p + 8 + 16 * n]
            elif rtype == 4 and hl >= 2:     # segment routing: the list is in reverse order
                final = buf[p + 8:p + 24]
        nh, p = nxt, p + size
    return nh, p, jumbo, final, frag, home


def _options(buf: bytes, o: int, end: int) -> dict[int, bytes] | None:
    """IPv6 hop-by-hop or destination options by type (the first of each: the Jumbo Payload length
    of RFC 2675, the Home Address of RFC 6275 are read from them), or None if one runs past the end."""
    found: dict[int, bytes] = {}
    while o < end:
        typ = buf[o]
        if typ == 0:              # Pad1
            o += 1
            continue
        if o + 2 > end or o + 2 + buf[o + 1] > end:
            return None
        n = buf[o + 1]
        found.setdefault(typ, buf[o + 2:o + 2 + n])
        o += 2 + n
    return found


def _inflate(data: bytes) -> bytes | None:
    """An IPComp payload inflated (raw DEFLATE, RFC 2394), at most 64 KiB; None if it is not one."""
    import zlib

    try:
        return zlib.decompressobj(-15).decompress(data, 65535)
    except zlib.error:
        return None


def _icmp_error(proto: int, buf: bytes, l4: int, end: int):
    """An ICMP(v6) destination-unreachable quoting a UDP/TCP packet: ("icmp", proto, key, text)."""
    typ, code = buf[l4], buf[l4 + 1]
    inner = l4 + 8
    if proto == ICMP and typ == 3 and end - inner >= 28:
        ihl = (buf[inner] & 15) * 4
        iproto = buf[inner + 9]
        src, dst = buf[inner + 12:inner + 16], buf[inner + 16:inner + 20]
        ports = buf[inner + ihl:inner + ihl + 4]
        text = {3: "port unreachable", 1: "host unreachable", 0: "net unreachable",
                13: "administratively prohibited"}.get(code, f"unreachable code {code}")
    elif proto == ICMP6 and typ == 1 and end - inner >= 48:
        iproto = buf[inner + 6]
        src, dst = buf[inner + 8:inner + 24], buf[inner + 24:inner + 40]
        ports = buf[inner + 40:inner + 44]
        text = {4: "port unreachable", 3: "address unreachable", 1: "administratively prohibited"}.get(
            code, f"unreachable code {code}")
    else:
        return None
    if iproto not in (TCP, UDP) or len(ports) < 4:
        return None
    return ("icmp", iproto, src + dst + ports, "ICMP " + text)


# --- one frame on its own (the live view: no state kept between calls but the fragments') -----------

_ONE = Decoder()


def decode(linktype: int, buf: bytes, p: int, incl: int, orig: int):
    """One frame: ``(proto, key, seq, ack, flags, win, payload_len)`` of the TCP segment or UDP
    datagram it carries (the innermost one, in a tunnel), an ICMP note, or why not."""
    r = _ONE.decode(linktype, buf, p, incl, orig)
    if r is None:
        return "IP fragment (held until its datagram is complete)"
    if type(r) is list:
        r = r[-1]
    if type(r) is tuple and r[0] in (TCP, UDP):
        return r[:7]
    return r


def network_start(linktype: int, buf: bytes, p: int, incl: int) -> tuple[int, int] | str:
    """(Ethernet type, offset of the IP header) of a frame, past VLAN tags, PPPoE, MPLS and LLC, or
    why there is none."""
    link = LINK.get(linktype)
    if link is None:
        return f"not analysed: {linktype_name(linktype)} frames (link type {linktype})"
    r = link(buf, p, incl)
    if type(r) is str:
        return r
    et, off = r
    for _ in range(64):
        if et in (ET_IPV4, ET_IPV6):
            return et, off
        f = tun.LAYER2.get(et)
        if f is None:
            return tun.ethertype_reason(et)
        r = f(buf, p + off, p + incl)
        if type(r) is str:
            return r
        et, off = r[0], r[1] - p
    return SKIP_DEEP
