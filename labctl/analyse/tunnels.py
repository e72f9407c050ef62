"""Encapsulations: the headers between a link layer and IP, and the tunnels that carry a packet inside
another (GRE, UDP tunnels), decoded to what they carry.

Each function takes the buffer and the offset of its header and returns ``(ethertype, offset of what
follows)`` (and, where the header says how long its payload is, that length) or a string naming what
is not analysed. Only what tshark decodes by default is decoded
(so both count the same conversations): 802.1Q/802.1ad VLAN stacks, 802.1ah, PPPoE sessions, MPLS
label stacks (with a pseudowire control word before Ethernet), 802.2 LLC/SNAP, GRE (with ERSPAN,
NVGRE, PPTP's enhanced GRE), and over UDP: VXLAN (4789), VXLAN-GPE (4790), Geneve (6081), GTP-U
(2152), Teredo (3544), L2TP (1701), MPLS over UDP (6635), GRE over UDP (4754), AYIYA (5072). Also
MACsec without encryption, NSH, and the 802.11 frames of Aruba's GRE.
"""
from __future__ import annotations

import struct

from labctl.analyse.linktypes import (
    CUT,
    ET_ETHERNET,
    ET_IPV4,
    ET_IPV6,
    ET_LLC,
    ET_MPLS,
    ieee80211,
    ppp_carries,
)

_U16 = struct.Struct(">H").unpack_from

ET_VLAN = frozenset((0x8100, 0x88A8, 0x9100, 0x9200, 0x9300))
ET_PBB, ET_PPPOE, ET_PPPOE_DISC, ET_MPLS_MC = 0x88E7, 0x8864, 0x8863, 0x8848
ET_MACSEC, ET_NSH, ET_WLAN = 0x88E5, 0x894F, -2      # (ET_WLAN: an 802.11 frame, as Aruba's GRE has)

# What the common non-IP Ethernet types are (for "not analysed" lines that say what a frame was).
ETHERTYPE_NAMES = {
    0x0806: "ARP", 0x8035: "RARP", 0x88CC: "LLDP", 0x8137: "IPX", 0x809B: "AppleTalk", 0x80F3: "AARP",
    0x888E: "802.1X (EAPOL)", 0x88F7: "PTP", 0x8809: "LACP/slow protocols",
    ET_PPPOE_DISC: "PPPoE discovery", 0x8808: "Ethernet flow control", 0x8902: "CFM (OAM)",
    0x22F3: "TRILL", 0x8892: "PROFINET", 0x88A4: "EtherCAT", 0x88E1: "HomePlug",
    0x9000: "Ethernet loopback", 0x8906: "FCoE", 0x8914: "FCoE init", 0x6003: "DECnet",
    0x893A: "IEEE 1905", 0x88B5: "experimental", 0x88B6: "experimental", 0x0842: "Wake-on-LAN",
    0x8899: "Realtek", 0x88BA: "IEC 61850 SV", 0x88B8: "IEC 61850 GOOSE", 0x8819: "CobraNet",
    0x88AB: "Ethernet Powerlink", 0x891D: "TTEthernet", 0x88E3: "MRP", 0x8100: "VLAN",
    0x6558: "Ethernet", 0x880B: "PPP", 0x2000: "Cisco CDP", 0x88CA: "TIPC", 0x8138: "IPX",
}
LLC_NAMES = {0x42: "spanning tree (STP)", 0xFE: "OSI (IS-IS, CLNP, ...)", 0xE0: "IPX", 0xF0: "NetBIOS",
             0xAA: "SNAP", 0x04: "SNA", 0x98: "ARP", 0x80: "XNS", 0xBC: "Banyan VINES", 0xF4: "LAN Manager"}
IP_PROTO_NAMES = {
    1: "ICMP", 2: "IGMP", 3: "GGP", 8: "EGP", 9: "IGP", 27: "RDP", 33: "DCCP", 46: "RSVP",
    47: "GRE", 50: "IPsec ESP (encrypted)", 51: "IPsec AH", 58: "ICMPv6", 59: "no next header",
    88: "EIGRP", 89: "OSPF", 94: "IP-in-IP (KA9Q)", 97: "EtherIP", 98: "encapsulation header",
    103: "PIM", 108: "IPComp (compressed)", 112: "VRRP", 113: "PGM", 115: "L2TPv3", 124: "IS-IS over IP",
    132: "SCTP", 135: "mobility header", 136: "UDP-Lite", 137: "MPLS-in-IP", 139: "HIP", 142: "ROHC",
    17: "UDP", 6: "TCP", 4: "IPv4", 41: "IPv6", 0: "hop-by-hop options",
}


def ethertype_reason(et: int) -> str:
    name = ETHERTYPE_NAMES.get(et)
    return f"not IP: {name}" if name else f"not IP: Ethernet type 0x{et:04x}"


def proto_reason(proto: int) -> str:
    name = IP_PROTO_NAMES.get(proto, f"protocol {proto}")
    return f"IP but neither TCP nor UDP: {name}"


# --- between the link layer and IP ----------------------------------------------------------------------

def vlan(buf: bytes, o: int, end: int):
    return CUT if end - o < 4 else (_U16(buf, o + 2)[0], o + 4)


def pbb(buf: bytes, o: int, end: int):
    """802.1ah provider backbone: I-TAG (4 bytes), then the customer's MAC addresses and type."""
    return CUT if end - o < 18 else (_U16(buf, o + 16)[0], o + 18)


def ethernet(buf: bytes, o: int, end: int):
    if end - o < 14:
        return CUT
    et = _U16(buf, o + 12)[0]
    return (et if et > 1500 else ET_LLC), o + 14


def pppoe(buf: bytes, o: int, end: int):
    if end - o < 8:
        return CUT
    if buf[o + 1] != 0:
        return "not IP: PPPoE control"
    et = ppp_carries(_U16(buf, o + 6)[0])
    # (a third item: how many bytes the PPPoE length says follow, as tshark bounds the packet by it)
    return et if type(et) is str else (et, o + 8, _U16(buf, o + 4)[0] - 2)


def macsec(buf: bytes, o: int, end: int):
    """802.1AE: the SecTAG (and SCI), then the frame's own type unless it is encrypted."""
    if end - o < 6:
        return CUT
    tci = buf[o]
    if tci & 0x0C:                    # E (and C): the data is encrypted
        return "not IP: MACsec (encrypted)"
    h = 6 + (8 if tci & 0x20 else 0)
    if end - o < h + 2:
        return CUT
    return _U16(buf, o + h)[0], o + h + 2


def nsh(buf: bytes, o: int, end: int):
    """Network Service Header (RFC 8300): its length in 4-byte words, then the next protocol."""
    if end - o < 8:
        return CUT
    n = (buf[o + 1] & 0x3F) * 4
    et = {1: ET_IPV4, 2: ET_IPV6, 3: ET_ETHERNET, 4: ET_NSH, 5: ET_MPLS}.get(buf[o + 3])
    if et is None or n < 8:
        return f"NSH carrying protocol {buf[o + 3]}: not decoded"
    return et, o + n


def wlan(buf: bytes, o: int, end: int):
    r = ieee80211(buf, o, end - o)
    return r if type(r) is str else (r[0], o + r[1])


def mpls(buf: bytes, o: int, end: int):
    """A label stack down to its bottom; then IP by its version, or a pseudowire control word and
    Ethernet (tshark's default)."""
    label = -1
    while True:
        if end - o < 4:
            return CUT
        word = struct.unpack_from(">I", buf, o)[0]
        label = word >> 12
        o += 4
        if word & 0x100:
            break
    if label == 0:
        return ET_IPV4, o
    if label == 2:
        return ET_IPV6, o
    if end - o < 1:
        return CUT
    v = buf[o] >> 4
    if v == 4:
        return ET_IPV4, o
    if v == 6:
        return ET_IPV6, o
    if v == 0:
        return ET_ETHERNET, o + 4
    return "not IP: MPLS pseudowire associated channel"


def llc(buf: bytes, o: int, end: int):
    if end - o < 3:
        return CUT
    dsap, ssap, ctrl = buf[o], buf[o + 1], buf[o + 2]
    if dsap == 0xAA and ssap == 0xAA:
        if end - o < 8:
            return CUT
        oui = buf[o + 3:o + 6]
        pid = _U16(buf, o + 6)[0]
        if oui in (b"\0\0\0", b"\0\0\xf8"):
            return pid, o + 8
        if oui == b"\x00\x80\xc2" and pid in (1, 7):     # bridged Ethernet (with/without FCS)
            return ET_ETHERNET, o + 10 if pid == 1 else o + 8
        return f"not IP: SNAP OUI {oui.hex()} type 0x{pid:04x}"
    size = 3 if ctrl & 3 == 3 else 4
    if dsap == 0x06 and ssap == 0x06:
        return ET_IPV4, o + size
    return f"not IP: 802.2 LLC {LLC_NAMES.get(dsap, f'SAP 0x{dsap:02x}')}"


# --- GRE ------------------------------------------------------------------------------------------------

def gre(buf: bytes, o: int, end: int):
    """GRE (RFC 2784/2890) and PPTP's enhanced GRE: what it carries and where."""
    if end - o < 4:
        return CUT
    fv, proto = struct.unpack_from(">HH", buf, o)
    ver = fv & 7
    h = 4
    if ver == 0:
        if fv & 0x4000:             # routing present (RFC 1701): not decoded
            return "GRE with source routing: not decoded"
        h += 4 * (bool(fv & 0x8000) + bool(fv & 0x2000) + bool(fv & 0x1000))
    elif ver == 1:
        h += 4 + 4 * (bool(fv & 0x1000) + bool(fv & 0x0080))
        if proto != 0x880B:
            return "GRE version 1 not carrying PPP: not decoded"
    else:
        return f"GRE version {ver}: not decoded"
    o += h
    if end - o < 0:
        return CUT
    if proto == 0x880B:             # PPP: optional address/control, then the protocol
        if end - o >= 2 and buf[o] == 0xFF and buf[o + 1] == 0x03:
            o += 2
        if end - o < 2:
            return CUT
        if buf[o] & 1:
            et, o = ppp_carries(buf[o]), o + 1
        else:
            et, o = ppp_carries(_U16(buf, o)[0]), o + 2
        return et if type(et) is str else (et, o)
    if proto == 0x88BE:             # ERSPAN type II (type I without the sequence number)
        return (ET_ETHERNET, o + 8) if fv & 0x1000 else (ET_ETHERNET, o)
    if proto == 0x22EB:             # ERSPAN type III, optional platform subheader
        if end - o < 12:
            return CUT
        return ET_ETHERNET, o + 12 + (8 if buf[o + 11] & 1 else 0)
    if proto == 0x883E:             # WCCP redirect header
        return ET_IPV4, o + 4
    if proto == 0x8200:             # Aruba: an 802.11 frame
        return ET_WLAN, o
    return proto, o


# --- UDP tunnels -----------------------------------------------------------------------------------------

def vxlan(buf: bytes, o: int, end: int):
    if end - o < 8:
        return CUT
    return ET_ETHERNET, o + 8


def vxlan_gpe(buf: bytes, o: int, end: int):
    if end - o < 8:
        return CUT
    nxt = buf[o + 3]
    et = {1: ET_IPV4, 2: ET_IPV6, 3: ET_ETHERNET, 4: ET_NSH, 5: ET_MPLS}.get(nxt)
    return (et, o + 8) if et else f"VXLAN-GPE carrying protocol {nxt}: not decoded"


def geneve(buf: bytes, o: int, end: int):
    if end - o < 8:
        return CUT
    return _U16(buf, o + 2)[0], o + 8 + (buf[o] & 0x3F) * 4


def gtpu(buf: bytes, o: int, end: int):
    if end - o < 8:
        return CUT
    flags, mtype = buf[o], buf[o + 1]
    if flags >> 5 != 1 or mtype != 0xFF:
        return "GTP-U signalling (echo, error, ...): not decoded"
    h = 8
    if flags & 7:
        h = 12
        nxt = buf[o + 11] if end - o >= 12 else 0
        while nxt:                    # extension headers: length in 4-byte units, next type last
            if end - o < h + 1:
                return CUT
            n = buf[o + h] * 4
            if n == 0 or end - o < h + n:
                return CUT
            nxt = buf[o + h + n - 1]
            h += n
    if end - o < h + 1:
        return CUT
    v = buf[o + h] >> 4
    return (ET_IPV4 if v == 4 else ET_IPV6, o + h) if v in (4, 6) else "GTP-U carrying non-IP"


def teredo(buf: bytes, o: int, end: int):
    while end - o >= 2 and buf[o] == 0:
        kind = buf[o + 1]
        if kind == 1:                 # authentication: id and auth lengths, nonce, confirmation
            if end - o < 4:
                return CUT
            o += 4 + buf[o + 2] + buf[o + 3] + 9
        elif kind == 0:               # origin indication
            o += 8
        else:
            break
    if end - o < 40 or buf[o] >> 4 != 6:
        return "Teredo without an IPv6 packet"
    return ET_IPV6, o


def l2tp(buf: bytes, o: int, end: int):
    if end - o < 6:
        return CUT
    fv = _U16(buf, o)[0]
    if fv & 0x8000:
        return "not IP: L2TP control message"
    if fv & 0xF != 2:
        return "L2TPv3 over UDP: not decoded"
    h = 2 + (2 if fv & 0x4000 else 0) + 4 + (4 if fv & 0x0800 else 0)
    if fv & 0x0200:
        if end - o < h + 2:
            return CUT
        h += 2 + _U16(buf, o + h)[0]
    o += h
    if end - o >= 2 and buf[o] == 0xFF and buf[o + 1] == 0x03:
        o += 2
    if end - o < 2:
        return CUT
    et = ppp_carries(_U16(buf, o)[0])
    return et if type(et) is str else (et, o + 2)


def mpls_udp(buf: bytes, o: int, end: int):
    return ET_MPLS, o


def ayiya(buf: bytes, o: int, end: int):
    """AYIYA (Anything In Anything): identity and signature, then the packet its next header names."""
    if end - o < 8:
        return CUT
    if buf[o + 2] & 0x0F != 1:        # only "forward" carries a packet
        return "AYIYA signalling: not decoded"
    h = 8 + (1 << (buf[o] >> 4)) + (buf[o + 1] >> 4) * 4
    et = {41: ET_IPV6, 4: ET_IPV4}.get(buf[o + 3])
    return (et, o + h) if et else "AYIYA without an IP packet"


UDP_TUNNELS = {4789: vxlan, 4790: vxlan_gpe, 6081: geneve, 2152: gtpu, 3544: teredo, 1701: l2tp,
               6635: mpls_udp, 4754: gre, 5072: ayiya}

UDP_TUNNEL_PORTS = frozenset(port.to_bytes(2, "big") for port in UDP_TUNNELS)


def tunnel_of(sport: int, dport: int):
    """The UDP tunnel a datagram between these ports is decoded as (the lower port first, as
    tshark tries them), or None."""
    lo, hi = (sport, dport) if sport < dport else (dport, sport)
    f = UDP_TUNNELS.get(lo)
    if f is None and lo >= 1024:
        f = UDP_TUNNELS.get(hi)
    return f


def carries_tunnel(key: bytes) -> bool:
    """Whether a UDP conversation (by its key) is one ``tunnel_of`` decodes."""
    return tunnel_of(key[-4] << 8 | key[-3], key[-2] << 8 | key[-1]) is not None


# Ethernet-level headers that lead to another type (the decoder loops over them)
LAYER2 = {ET_PBB: pbb, ET_ETHERNET: ethernet, ET_PPPOE: pppoe, ET_MPLS: mpls, ET_MPLS_MC: mpls,
          ET_LLC: llc, ET_MACSEC: macsec, ET_NSH: nsh, ET_WLAN: wlan}
LAYER2.update({et: vlan for et in ET_VLAN})
