"""Link types: their names, and how to find the network layer in each one's frames.

``LINK[linktype](buf, p, incl)`` gives ``(ethertype, offset)``: what the frame carries (an Ethernet
type, or ``ET_LLC`` for an 802.2 LLC header) and where that starts, or a string saying why the frame
is not analysed. Every link type tshark reads that carries IP is here; the others are named (link type
numbers and names as tcpdump.org's LINKTYPE_ list has them) so a capture of them says what it is.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

ET_IPV4, ET_IPV6, ET_MPLS, ET_LLC, ET_ETHERNET = 0x0800, 0x86DD, 0x8847, -1, 0x6558

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL = 0, 1, 101, 113
LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 228, 229, 276

LINKTYPE_NAMES = {
    0: "BSD loopback", 1: "Ethernet", 3: "AX.25", 6: "Token Ring", 7: "ARCnet (BSD)", 8: "SLIP",
    9: "PPP", 10: "FDDI", 12: "raw IP", 14: "raw IP", 50: "PPP in HDLC framing", 51: "PPPoE",
    100: "ATM (RFC 1483 LLC/SNAP)", 101: "raw IP", 104: "Cisco HDLC", 105: "IEEE 802.11 (Wi-Fi)",
    106: "ATM classical IP", 107: "Frame Relay", 108: "OpenBSD loopback", 109: "OpenBSD IPsec (enc)",
    113: "Linux cooked (SLL)", 117: "OpenBSD pflog", 119: "802.11 with Prism header",
    122: "IP over Fibre Channel", 123: "SunATM", 127: "802.11 with radiotap header",
    129: "ARCnet (Linux)", 137: "Juniper ATM1", 138: "IP over IEEE 1394", 139: "SS7 MTP2 with header",
    140: "SS7 MTP2", 141: "SS7 MTP3", 142: "SS7 SCCP", 143: "DOCSIS", 144: "Linux IrDA",
    163: "802.11 with AVS header", 165: "BACnet MS/TP", 166: "PPP (pppd)", 177: "Linux LAPD",
    178: "Juniper Ethernet", 182: "Multilink Frame Relay", 186: "USB (FreeBSD)",
    187: "Bluetooth HCI H4", 189: "USB (Linux)", 190: "CAN 2.0B", 192: "PPI (802.11 and others)",
    195: "IEEE 802.15.4 with FCS", 197: "Endace ERF", 201: "Bluetooth HCI H4 with header",
    203: "LAPD", 204: "PPP with direction", 205: "Cisco HDLC with direction",
    215: "IEEE 802.15.4 (no ASK PHY)", 219: "MPLS", 220: "USB (Linux, memory-mapped)", 226: "Solaris ipnet",
    227: "SocketCAN", 228: "raw IPv4", 229: "raw IPv6", 230: "IEEE 802.15.4 without FCS", 231: "D-Bus",
    239: "Linux NFLOG", 240: "Hilscher netANALYZER", 241: "Hilscher netANALYZER (transparent)",
    242: "IP over InfiniBand", 249: "USBPcap", 251: "Bluetooth LE link layer",
    252: "Wireshark upper PDU", 253: "Linux netlink", 254: "Bluetooth Linux monitor", 258: "Apple PKTAP",
    263: "WattStopper DLM", 267: "OpenFlow", 271: "VSOCK", 272: "Nordic BLE", 274: "Ethernet mPacket",
    276: "Linux cooked v2 (SLL2)", 281: "Ethernet with Broadcom tag", 282: "Broadcom tag, prepended",
    283: "IEEE 802.15.4 TAP", 284: "Ethernet with Marvell DSA tag", 285: "Ethernet with Marvell EDSA tag",
    288: "USB 2.0",
}
for _n in range(147, 163):
    LINKTYPE_NAMES[_n] = f"user-defined ({_n - 147})"
LINKTYPE_NAMES[149] = "Apple PKTAP (user-defined 2)"     # as Darwin uses it, and tshark reads it


def linktype_name(lt: int) -> str:
    return LINKTYPE_NAMES.get(lt, f"link type {lt}")


_U16 = struct.Struct(">H").unpack_from
_U16LE = struct.Struct("<H").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_U32 = struct.Struct(">I").unpack_from

CUT = "cut short by the snapshot length inside the headers"

# PPP protocol numbers -> what they carry
PPP_PROTOS = {0x0021: ET_IPV4, 0x0057: ET_IPV6, 0x0281: ET_MPLS, 0x0031: ET_ETHERNET}


def ppp_carries(proto: int) -> int | str:
    """The Ethernet type a PPP protocol number stands for, or why it is not analysed."""
    et = PPP_PROTOS.get(proto)
    if et is not None:
        return et
    if proto >= 0xC000 or 0x8000 <= proto < 0xC000:
        return "not IP: PPP control (LCP, IPCP, authentication, ...)"
    return f"not IP: PPP protocol 0x{proto:04x}"


def _version(buf: bytes, o: int) -> int | str:
    v = buf[o] >> 4
    return ET_IPV4 if v == 4 else ET_IPV6 if v == 6 else f"not IP: raw frame of IP version {v}"


def _raw(buf: bytes, p: int, incl: int):
    if incl < 1:
        return CUT
    et = _version(buf, p)
    return et if type(et) is str else (et, 0)


def _raw6(buf: bytes, p: int, incl: int):
    if incl < 1:
        return CUT
    return (ET_IPV6, 0) if buf[p] >> 4 == 6 else "malformed header"


def _family(fam: int) -> int | str:
    if fam == 2:
        return ET_IPV4
    if fam in (10, 24, 28, 30, 26):    # AF_INET6: Linux, BSDs, FreeBSD, Darwin, Solaris
        return ET_IPV6
    return f"not IP: address family {fam}"


def _null(buf: bytes, p: int, incl: int):
    if incl < 4:
        return CUT
    if buf[p] == 0xFF and buf[p + 1] == 0x03:          # PPP in HDLC framing, as Wireshark reads it
        return _ppp(buf, p, incl)
    if buf[p] in (0x0F, 0x8F) and buf[p + 1] == 0:    # Cisco HDLC
        return _chdlc(buf, p, incl)
    fam = _U32LE(buf, p)[0]
    if fam > 0xFFFF:
        fam = _U32(buf, p)[0]
    et = _family(fam)
    return et if type(et) is str else (et, 4)


def _loop(buf: bytes, p: int, incl: int):
    if incl < 4:
        return CUT
    et = _family(_U32(buf, p)[0])
    return et if type(et) is str else (et, 4)


def _ethernet(buf: bytes, p: int, incl: int, off: int = 0, tag: int = 0):
    """Ethernet II or 802.3 (then an LLC header); ``tag`` bytes of a switch tag after the source."""
    if incl < off + 14 + tag:
        return CUT
    et = _U16(buf, p + off + 12 + tag)[0]
    return (et if et > 1500 else ET_LLC), off + 14 + tag


def _sll(buf: bytes, p: int, incl: int):
    if incl < 16:
        return CUT
    et = _U16(buf, p + 14)[0]
    return (ET_LLC if et == 4 else et), 16


def _sll2(buf: bytes, p: int, incl: int):
    if incl < 20:
        return CUT
    et = _U16(buf, p)[0]
    return (ET_LLC if et == 4 else et), 20


def _ppp(buf: bytes, p: int, incl: int):
    o = 0
    if incl >= 2 and buf[p] == 0xFF and buf[p + 1] == 0x03:    # address and control fields
        o = 2
    if incl < o + 1:
        return CUT
    if buf[p + o] & 1:                                      # a compressed (1-byte) protocol field
        proto, o = buf[p + o], o + 1
    else:
        if incl < o + 2:
            return CUT
        proto, o = _U16(buf, p + o)[0], o + 2
    et = ppp_carries(proto)
    return et if type(et) is str else (et, o)


def _pppoe(buf: bytes, p: int, incl: int):
    return (0x8864, 0)


def _chdlc(buf: bytes, p: int, incl: int):
    if incl < 4:
        return CUT
    et = _U16(buf, p + 2)[0]
    if et == 0x8035:
        return "not IP: Cisco SLARP"
    return et, 4


def _frelay(buf: bytes, p: int, incl: int):
    if incl < 4:
        return CUT
    o = 2
    if buf[p + o] != 0x03:
        return "not IP: Frame Relay (not Q.933/NLPID encapsulated)"
    o += 1
    if buf[p + o] == 0x00:     # padding before the NLPID
        o += 1
    if incl < o + 1:
        return CUT
    nlpid = buf[p + o]
    if nlpid == 0xCC:
        return ET_IPV4, o + 1
    if nlpid == 0x8E:
        return ET_IPV6, o + 1
    if nlpid == 0x80:          # SNAP
        if incl < o + 6:
            return CUT
        return _U16(buf, p + o + 4)[0], o + 6
    if nlpid == 0x08:
        return "not IP: Frame Relay signalling (Q.933)"
    return f"not IP: Frame Relay NLPID 0x{nlpid:02x}"


def _enc(buf: bytes, p: int, incl: int):
    if incl < 13:
        return CUT
    et = _version(buf, p + 12)
    return et if type(et) is str else (et, 12)


def _pflog(buf: bytes, p: int, incl: int):
    if incl < 2:
        return CUT
    hlen = (buf[p] + 3) & ~3
    et = _family(buf[p + 1])
    if type(et) is str:
        return et
    return (CUT if incl < hlen + 1 else (et, hlen))


def _ipnet(buf: bytes, p: int, incl: int):
    if incl < 24:
        return CUT
    et = _family(buf[p + 1])
    return et if type(et) is str else (et, 24)


def _nflog(buf: bytes, p: int, incl: int):
    if incl < 4:
        return CUT
    et = _family(buf[p])
    if type(et) is str:
        return et
    o = 4
    while o + 4 <= incl:
        tlen, ttype = struct.unpack_from("<HH", buf, p + o)   # host order: Linux is little-endian here
        if tlen < 4:
            return "malformed header"
        if ttype == 9:         # NFULA_PAYLOAD
            return et, o + 4
        o += (tlen + 3) & ~3
    return "not IP: NFLOG record without a packet"


def _ipoib(buf: bytes, p: int, incl: int):
    """IP over InfiniBand as Wireshark reads link type 242: a 40-byte global route header (with the
    source QPN), then the 2-byte type and 2 reserved bytes."""
    if incl < 44:
        return CUT
    return _U16(buf, p + 40)[0], 44


def _llc_at(off: int) -> Callable:
    def f(buf: bytes, p: int, incl: int):
        return (ET_LLC, off) if incl > off else CUT
    return f


def _fddi(buf: bytes, p: int, incl: int):
    return (ET_LLC, 13) if incl > 13 else CUT


def _arcnet_linux(buf: bytes, p: int, incl: int):
    if incl < 5:
        return CUT
    pid = buf[p + 4]
    if pid in (0xF0, 0xF1):                      # RFC 1051: no split flag
        return (ET_IPV4, 5) if pid == 0xF0 else "not IP: ARP"
    if pid not in (0xD4, 0xC4):
        return "not IP: ARP" if pid in (0xD5, 0xD6) else f"not IP: ARCnet protocol 0x{pid:02x}"
    o = 5
    if incl > o and buf[p + o] == 0xFF:          # an exception packet: 4 more bytes
        o += 4
    o += 3                                       # split flag, sequence number
    return ((ET_IPV4 if pid == 0xD4 else ET_IPV6), o) if incl > o else CUT


# --- 802.11 --------------------------------------------------------------------------------------------

def ieee80211(buf: bytes, p: int, incl: int, off: int = 0):
    """An 802.11 frame at ``p + off``: the LLC header of a data frame, or why not."""
    if incl < off + 24:
        return CUT
    fc0, fc1 = buf[p + off], buf[p + off + 1]
    ftype, subtype = (fc0 >> 2) & 3, fc0 >> 4
    if ftype != 2:
        return "not IP: 802.11 management or control frame"
    if subtype & 4:
        return "not IP: 802.11 null data frame"
    if fc1 & 0x40:
        return "not analysed: 802.11 frame encrypted (WEP/WPA)"
    h = 24
    if fc1 & 3 == 3:           # to and from the distribution system: a fourth address
        h += 6
    if subtype & 8:            # QoS
        h += 2
        if fc1 & 0x80:         # +HTC
            h += 4
    return (ET_LLC, off + h) if incl > off + h else CUT


def _radiotap(buf: bytes, p: int, incl: int):
    if incl < 8:
        return CUT
    hlen = _U16LE(buf, p + 2)[0]
    return ieee80211(buf, p, incl, hlen)


def _prism(buf: bytes, p: int, incl: int):
    if incl >= 8 and _U32(buf, p)[0] & 0xFFFFFFF0 == 0x80211000:   # really an AVS header
        return _avs(buf, p, incl)
    return ieee80211(buf, p, incl, 144)


def _avs(buf: bytes, p: int, incl: int):
    if incl < 8:
        return CUT
    return ieee80211(buf, p, incl, _U32(buf, p + 4)[0])


def _ppi(buf: bytes, p: int, incl: int):
    if incl < 8:
        return CUT
    hlen = _U16LE(buf, p + 2)[0]
    dlt = _U32LE(buf, p + 4)[0]
    if dlt == 105:
        return ieee80211(buf, p, incl, hlen)
    if dlt == 1:
        return _ethernet(buf, p, incl, hlen)
    return f"not analysed: PPI carrying {linktype_name(dlt)}"


def _pktap(buf: bytes, p: int, incl: int):
    if incl < 8:
        return CUT
    hlen, dlt = _U32LE(buf, p)[0], _U32LE(buf, p + 4)[0]
    if dlt == 1:
        return _ethernet(buf, p, incl, hlen)
    if dlt in (0, 12, 101):
        return _after(hlen, _raw if dlt else _null)(buf, p, incl)
    return f"not analysed: PKTAP carrying {linktype_name(dlt)}"


def _juniper_ether(buf: bytes, p: int, incl: int):
    """Juniper's "MGC" header (with its extension TLVs), then Ethernet."""
    if incl < 4:
        return CUT
    if buf[p:p + 3] != b"MGC":
        return "not analysed: Juniper frame without its MGC header"
    h = 4
    if buf[p + 3] & 0x80:              # extensions: a 2-byte length, then the TLVs
        if incl < 6:
            return CUT
        h += 2 + _U16(buf, p + 4)[0]
    if buf[p + 3] & 0x02:              # no layer 2: IP follows
        return _after(h, _raw)(buf, p, incl)
    return _ethernet(buf, p, incl, h)


def _mpls(buf: bytes, p: int, incl: int):
    return ET_MPLS, 0


def _after(k: int, f: Callable) -> Callable:
    """``f`` applied to the frame after a ``k``-byte header."""
    def g(buf: bytes, p: int, incl: int):
        r = f(buf, p + k, incl - k)
        return r if type(r) is str else (r[0], r[1] + k)
    return g


LINK: dict[int, Callable] = {
    0: _null, 1: _ethernet, 9: _ppp, 10: _fddi, 12: _raw, 14: _raw, 50: _ppp, 51: _pppoe,
    100: _llc_at(0), 101: _raw, 104: _chdlc, 105: ieee80211, 106: _llc_at(0), 107: _frelay,
    108: _loop, 109: _enc, 113: _sll, 117: _pflog, 119: _prism, 123: _llc_at(4), 127: _radiotap,
    129: _arcnet_linux, 149: _pktap, 163: _avs, 178: _juniper_ether, 192: _ppi,
    204: _after(1, _ppp), 205: _after(1, _chdlc),
    219: _mpls, 226: _ipnet, 228: _raw, 229: _raw6, 239: _nflog,
    240: lambda b, p, n: _ethernet(b, p, n, 4), 241: lambda b, p, n: _ethernet(b, p, n, 12),
    242: _ipoib, 258: _pktap, 276: _sll2,
    # (281-285, Ethernet with a switch's tag: tshark 4.0 does not read them, so neither counts any)
}
