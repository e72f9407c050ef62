"""The general (slow) decoder: every frame the fast path in ``conversations`` does not take.

Link layers: Ethernet (with 802.1Q tags), Linux cooked SLL and SLL2, raw IP, BSD loopback. Network:
IPv4 (any header length, fragments noted), IPv6 (with the common extension headers), ICMP and ICMPv6
errors that quote a UDP/TCP header. Returns plain tuples; nothing is kept per packet.
"""
from __future__ import annotations

import struct

from labctl.analyse.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8

# Why a frame was not analysed (keys of Analysis.skipped).
SKIP_NOT_IP = "not IP (ARP, LLDP, ...)"
SKIP_OTHER_PROTO = "IP but neither TCP nor UDP (ICMP, ...)"
SKIP_CUT = "cut short by the snapshot length inside the headers"
SKIP_FRAGMENT = "IP fragment (not reassembled)"
SKIP_BAD = "malformed header"

_V6_EXT = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH

TcpUdp = tuple  # (proto, key, seq, ack, flags, win, payload_len)


def network_start(linktype: int, buf: bytes, p: int, incl: int) -> tuple[int, int] | str:
    """(ethertype-like version marker, offset of the IP header) for a frame, or a skip reason."""
    if linktype == LINKTYPE_ETHERNET:
        if incl < 14:
            return SKIP_CUT
        et = struct.unpack_from(">H", buf, p + 12)[0]
        off = 14
        while et in (ETH_VLAN, ETH_QINQ) and incl >= off + 4:
            et = struct.unpack_from(">H", buf, p + off + 2)[0]
            off += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if incl < 16:
            return SKIP_CUT
        et, off = struct.unpack_from(">H", buf, p + 14)[0], 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if incl < 20:
            return SKIP_CUT
        et, off = struct.unpack_from(">H", buf, p)[0], 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if incl < 1:
            return SKIP_CUT
        v = buf[p] >> 4
        et, off = (ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else 0), 0
    elif linktype == LINKTYPE_NULL:
        if incl < 4:
            return SKIP_CUT
        fam = struct.unpack_from("<I", buf, p)[0]
        if fam > 0xFFFF:
            fam = struct.unpack_from(">I", buf, p)[0]
        et, off = (ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in (10, 24, 28, 30) else 0), 4
    else:
        return SKIP_NOT_IP
    if et not in (ETH_IPV4, ETH_IPV6):
        return SKIP_NOT_IP
    return et, off


def decode(linktype: int, buf: bytes, p: int, incl: int, orig: int):
    """Decode one frame: ``(proto, key, seq, ack, flags, win, payload_len)`` or a skip-reason string.

    For an ICMP/ICMPv6 error quoting a UDP or TCP header the result is ``("icmp", key_of_quoted,
    description)`` with the quoted packet's key (its own source first).
    ``key`` is source address + destination address + source port + destination port, as bytes.
    """
    ns = network_start(linktype, buf, p, incl)
    if isinstance(ns, str):
        return ns
    et, off = ns
    end = p + incl
    ip = p + off
    if et == ETH_IPV4:
        if end - ip < 20:
            return SKIP_CUT
        vihl, totlen, frag, proto = buf[ip], *struct.unpack_from(">H2xH", buf, ip + 2), buf[ip + 9]
        if vihl >> 4 != 4 or (vihl & 15) < 5:
            return SKIP_BAD
        ihl = (vihl & 15) * 4
        src, dst = buf[ip + 12:ip + 16], buf[ip + 16:ip + 20]
        if frag & 0x1FFF:
            return SKIP_FRAGMENT
        if frag & 0x2000 and proto in (TCP, UDP):
            return SKIP_FRAGMENT
        l4 = ip + ihl
        l4len = totlen - ihl
        if totlen == 0:  # TSO-offloaded frame seen before segmentation: trust the frame length
            l4len = orig - off - ihl
    else:
        if end - ip < 40:
            return SKIP_CUT
        plen6, proto = struct.unpack_from(">HB", buf, ip + 4)
        src, dst = buf[ip + 8:ip + 24], buf[ip + 24:ip + 40]
        l4 = ip + 40
        l4len = plen6
        while proto in _V6_EXT:
            if end - l4 < 8:
                return SKIP_CUT
            nxt, hlen = buf[l4], buf[l4 + 1]
            size = (hlen + 2) * 4 if proto == 51 else (hlen + 1) * 8
            l4 += size
            l4len -= size
            proto = nxt
        if proto == 44:
            return SKIP_FRAGMENT
    if proto == TCP:
        if end - l4 < 20:
            return SKIP_CUT
        seq, ack, offb, flags, win = struct.unpack_from(">4xIIBBH", buf, l4)
        thl = (offb >> 4) * 4
        if thl < 20:
            return SKIP_BAD
        if end - l4 < thl:      # options cut off: tshark does not count such a segment either
            return SKIP_CUT
        return (TCP, src + dst + buf[l4:l4 + 4], seq, ack, flags, win, max(0, l4len - thl))
    if proto == UDP:
        if end - l4 < 8:
            return SKIP_CUT
        return (UDP, src + dst + buf[l4:l4 + 4], 0, 0, 0, 0, max(0, l4len - 8))
    if proto in (ICMP, ICMP6) and end - l4 >= 8:
        return _icmp_error(proto, buf, l4, end) or SKIP_OTHER_PROTO
    return SKIP_OTHER_PROTO


def _icmp_error(proto: int, buf: bytes, l4: int, end: int):
    """An ICMP(v6) destination-unreachable quoting a UDP/TCP packet: ("icmp", key, text)."""
    typ, code = buf[l4], buf[l4 + 1]
    inner = l4 + 8
    if proto == ICMP and typ == 3 and end - inner >= 28:
        vihl = buf[inner]
        ihl = (vihl & 15) * 4
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
