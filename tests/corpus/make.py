"""Write the crafted captures of tests/corpus/ (the cases the lab cannot make; see README.md).

    .venv/bin/python tests/corpus/make.py        # rewrites tests/corpus/crafted-*

Each capture holds exactly the case it is named for (frames built byte by byte in ``frames.py``);
tests/test_analyse_wild.py checks labctl against tshark on every one. Deterministic: the same bytes
every time.
"""
from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from frames import (  # noqa: E402
    A6,
    ACK,
    B6,
    MAC,
    PSH,
    RST,
    SYN,
    A,
    B,
    eth,
    exchange,
    handshake,
    ip4,
    ip6,
    tcp,
    udp,
    write_pcap,
    write_pcapng,
)

CASES: dict[str, Callable[[Path], Path]] = {}


def case(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


def _ns(frames: list[tuple[float, bytes]], base: int) -> list[tuple[int, bytes]]:
    """Float-second offsets -> nanosecond pcapng timestamps from ``base`` seconds."""
    return [(base * 1_000_000_000 + round(t * 1e9), fr) for t, fr in frames]


# --- timestamps ----------------------------------------------------------------------------------------

@case
def time_after_2106(d: Path) -> Path:
    """Timestamps in the year 2107 (seconds beyond 32 bits), nanosecond resolution."""
    return write_pcapng(d / "crafted-time-after-2106.pcapng", _ns(exchange(0.0), (1 << 32) + 10_000_000))


@case
def time_before_1970(d: Path) -> Path:
    """A negative if_tsoffset: every packet in 1938."""
    return write_pcapng(d / "crafted-time-before-1970.pcapng", _ns(exchange(0.5), 1_000_000_000),
                        tsoffset=-2_000_000_000)


# --- IP lengths ----------------------------------------------------------------------------------------

@case
def iplen_beyond_frame(d: Path) -> Path:
    """IP total lengths larger than the frame: a TCP segment claims 1,400 bytes but carries 20 (the next
    segment follows the 20: no retransmission), a UDP datagram claims 900 and carries 4."""
    s, p = 40001, 23
    big = ip4(A, B, 6, tcp(s, p, 1001, 5001, PSH | ACK, b"x" * 20))
    big = big[:2] + struct.pack(">H", 1440) + big[4:]
    frames = [*handshake(1.0, s, p), (1.01, eth(big)),
              (1.02, eth(ip4(A, B, 6, tcp(s, p, 1021, 5001, PSH | ACK, b"y" * 20)))),
              (1.03, eth(ip4(B, A, 6, tcp(p, s, 5001, 1041, ACK)))),
              (1.04, eth(ip4(A, B, 17, udp(5353, 53, b"abcd", ulen=900), totlen=928)))]
    return write_pcap(d / "crafted-iplen-beyond-frame.pcap", frames)


@case
def iplen_below_headers(d: Path) -> Path:
    """Malformed lengths Wireshark refuses: IP total length below its header, a TCP header longer than
    the segment, a UDP length below 8 (none of them is in a conversation); then a good exchange."""
    frames = [(1.0, eth(ip4(A, B, 6, tcp(40002, 80, 1, 0, SYN), totlen=12))),
              (1.1, eth(ip4(A, B, 6, tcp(40003, 80, 1, 0, SYN, thl=15)[:40], totlen=60))),
              (1.2, eth(ip4(A, B, 17, udp(5000, 53, b"abcd", ulen=4)))),
              *exchange(2.0)]
    return write_pcap(d / "crafted-iplen-below-headers.pcap", frames)


# --- TCP analysis ----------------------------------------------------------------------------------------

def _established(t: float, s: int, p: int) -> list[tuple[float, bytes]]:
    return [*handshake(t, s, p),
            (t + 0.01, eth(ip4(A, B, 6, tcp(s, p, 1001, 5001, PSH | ACK, b"hello")))),
            (t + 0.02, eth(ip4(B, A, 6, tcp(p, s, 5001, 1006, PSH | ACK, b"world")))),
            (t + 0.03, eth(ip4(A, B, 6, tcp(s, p, 1006, 5006, ACK))))]


@case
def tcp_keepalive(d: Path) -> Path:
    """Keep-alives (one byte before the next sequence number, with no data and with one byte) and their
    ACKs, 45 s apart: none of them is a retransmission or a duplicate ACK."""
    s, p = 40004, 80
    frames = _established(1.0, s, p)
    for i in range(3):
        t = 46.0 + 45 * i
        probe = tcp(s, p, 1005, 5006, ACK, b"\0" if i == 1 else b"")
        frames += [(t, eth(ip4(A, B, 6, probe))), (t + 0.001, eth(ip4(B, A, 6, tcp(p, s, 5006, 1006, ACK))))]
    return write_pcap(d / "crafted-tcp-keepalive.pcap", frames)


@case
def tcp_rst(d: Path) -> Path:
    """RSTs that repeat the last ACK, window and sequence number: not duplicate ACKs; then a refused
    connection."""
    s, p = 40005, 80
    frames = [*_established(1.0, s, p),
              (1.1, eth(ip4(A, B, 6, tcp(s, p, 1006, 5006, RST | ACK)))),
              (1.2, eth(ip4(A, B, 6, tcp(s, p, 1006, 5006, RST | ACK)))),
              (2.0, eth(ip4(A, B, 6, tcp(40006, 81, 7, 0, SYN)))),
              (2.001, eth(ip4(B, A, 6, tcp(81, 40006, 0, 8, RST | ACK, win=0))))]
    return write_pcap(d / "crafted-tcp-rst.pcap", frames)


@case
def tcp_spurious(d: Path) -> Path:
    """Data sent again 1 ms after the receiver acknowledged it: a spurious retransmission (Wireshark
    checks "already acknowledged" before the 3 ms out-of-order window); then a real retransmission
    after 200 ms, and a segment arriving out of order."""
    s, p = 40007, 80
    seg = [ip4(B, A, 6, tcp(p, s, 5001 + 100 * i, 1001, ACK, b"d" * 100)) for i in range(4)]
    frames = [*handshake(1.0, s, p),
              (1.010, eth(seg[0])), (1.0105, eth(ip4(A, B, 6, tcp(s, p, 1001, 5101, ACK)))),
              (1.0110, eth(seg[0])),                                    # spurious: 5101 was acked
              (1.020, eth(seg[1])),                                     # lost on the way
              (1.220, eth(seg[1])),                                     # retransmission
              (1.230, eth(seg[3])), (1.2305, eth(seg[2])),              # out of order
              (1.240, eth(ip4(A, B, 6, tcp(s, p, 1001, 5401, ACK))))]
    return write_pcap(d / "crafted-tcp-spurious.pcap", frames)


@case
def tcp_midflow(d: Path) -> Path:
    """A capture that starts in the middle of a transfer (no handshake): the client's duplicate ACKs
    for a lost segment, then the fast retransmission that repairs it."""
    s, p = 40008, 80
    base = 70001
    frames = [(1.0, eth(ip4(B, A, 6, tcp(p, s, base, 300, ACK, b"d" * 100)))),
              (1.001, eth(ip4(A, B, 6, tcp(s, p, 300, base + 100, ACK))))]
    # segment 2 (base+100) is lost; 3, 4, 5 arrive, each acknowledged with the same ACK
    for i in (2, 3, 4):
        t = 1.002 + 0.001 * i
        frames += [(t, eth(ip4(B, A, 6, tcp(p, s, base + 100 * i, 300, ACK, b"d" * 100)))),
                   (t + 0.0002, eth(ip4(A, B, 6, tcp(s, p, 300, base + 100, ACK))))]
    frames += [(1.008, eth(ip4(B, A, 6, tcp(p, s, base + 100, 300, ACK, b"d" * 100)))),
               (1.009, eth(ip4(A, B, 6, tcp(s, p, 300, base + 500, ACK))))]
    return write_pcap(d / "crafted-tcp-midflow.pcap", frames)


# --- IPv6 ----------------------------------------------------------------------------------------------

@case
def ipv6_jumbo(d: Path) -> Path:
    """A BIG TCP segment: IPv6 payload length 0 and a hop-by-hop Jumbo Payload option (70,000 bytes)."""
    s, p = 40009, 80
    frames = handshake(1.0, s, p, a=A6, b=B6, ip=ip6)
    seg = tcp(s, p, 1001, 5001, PSH | ACK, b"j" * 70_000)
    hbh = struct.pack(">BBBBI", 6, 0, 0xC2, 4, 8 + len(seg))
    frames += [(1.01, eth(ip6(A6, B6, 0, hbh + seg, plen=0), 0x86DD)),
               (1.02, eth(ip6(B6, A6, 6, tcp(p, s, 5001, 71001, ACK)), 0x86DD))]
    return write_pcap(d / "crafted-ipv6-jumbo.pcap", frames, snaplen=262144)


@case
def ipv6_routing(d: Path) -> Path:
    """Routing headers with segments left: the conversation is with the final destination (type 0 with
    two addresses, and a segment routing header)."""
    final, hop = "2001:db8::99", "2001:db8::50"
    import socket

    def rh(rtype: int, addrs: list[str], segleft: int, nxt: int) -> bytes:
        body = b"".join(socket.inet_pton(socket.AF_INET6, x) for x in addrs)
        extra = bytes(4) if rtype == 0 else struct.pack(">BBH", len(addrs) - 1, 0, 0)
        return struct.pack(">BBBB", nxt, 2 * len(addrs), rtype, segleft) + extra + body

    u = udp(5001, 5002, b"ping")
    frames = [(1.0, eth(ip6(A6, B6, 43, rh(0, [hop, final], 2, 17) + u), 0x86DD)),
              (1.1, eth(ip6(A6, hop, 43, rh(4, [final, hop], 1, 17) + udp(5003, 5004, b"srh")), 0x86DD)),
              (1.2, eth(ip6(final, A6, 17, udp(5002, 5001, b"pong")), 0x86DD))]
    return write_pcap(d / "crafted-ipv6-routing.pcap", frames)


# --- fragments (crafted: overlapping, out of order; the lab makes the plain ones) ----------------------

@case
def fragments_crafted(d: Path) -> Path:
    """A UDP reply of 3,000 bytes in three IPv4 fragments arriving last-first, an IPv6 one in two, and a
    fragment whose datagram never completes."""
    reply = udp(37, 40010, b"r" * 2992)
    pieces = [(0, reply[:1480], True), (1480, reply[1480:2960], True), (2960, reply[2960:], False)]
    frames = [(1.0, eth(ip4(A, B, 17, udp(40010, 37, b"?"))))]
    for i, (off, data, more) in enumerate(reversed(pieces)):
        frag = (0x2000 if more else 0) | (off // 8)
        frames.append((1.001 + i * 0.0001, eth(ip4(B, A, 17, data, ident=77, frag=frag))))
    reply6 = udp(37, 40011, b"s" * 1992)
    frames.append((2.0, eth(ip6(A6, B6, 17, udp(40011, 37, b"?")), 0x86DD)))
    for off, data, more in ((0, reply6[:1232], True), (1232, reply6[1232:], False)):
        fh = struct.pack(">BBHI", 17, 0, off | (1 if more else 0), 0x1234)
        frames.append((2.001, eth(ip6(B6, A6, 44, fh + data), 0x86DD)))
    frames.append((3.0, eth(ip4(B, A, 17, udp(37, 40012, b"t" * 1472)[:1480], ident=78, frag=0x2000))))
    return write_pcap(d / "crafted-fragments.pcap", frames)


# --- encapsulations and link types -----------------------------------------------------------------------

def _vlan(tag: int, et: int, tpid: int = 0x8100) -> bytes:
    return struct.pack(">HH", tag, et)


@case
def encapsulations(d: Path) -> Path:
    """One exchange each in: a QinQ VLAN stack, PPPoE, an MPLS label stack, GRE, IP-in-IP, IPv6-in-IPv4,
    VXLAN and Geneve; and a MACsec frame, which is named but not decoded."""
    frames: list[tuple[float, bytes]] = []
    t = 1.0

    def add(wrap, sport: int) -> None:
        nonlocal t
        frames.extend(exchange(t, sport, 80, wrap))
        t += 1.0

    add(lambda ip: MAC + b"\x88\xa8" + _vlan(100, 0x8100) + _vlan(200, 0x0800) + ip, 41000)
    add(lambda ip: MAC + b"\x88\x64" + struct.pack(">BBHHH", 0x11, 0, 7, len(ip) + 2, 0x0021) + ip, 41010)
    add(lambda ip: MAC + b"\x88\x47" + struct.pack(">II", 16 << 12 | 64, 17 << 12 | 0x100 | 64) + ip, 41020)
    gre = struct.pack(">HHI", 0x2000, 0x0800, 42)                 # key present
    add(lambda ip: eth(ip4("192.0.2.1", "192.0.2.2", 47, gre + ip)), 41030)
    add(lambda ip: eth(ip4("192.0.2.1", "192.0.2.2", 4, ip)), 41040)
    frames.extend(exchange(t, 41050, 80, lambda ip: eth(ip4("192.0.2.1", "192.0.2.2", 41, ip)), A6, B6, ip6))
    t += 1.0
    vx = struct.pack(">II", 0x08000000, 5000 << 8)
    add(lambda ip: eth(ip4("192.0.2.1", "192.0.2.2", 17, udp(50000, 4789, vx + eth(ip)))), 41060)
    gen = struct.pack(">BBHI", 0, 0, 0x6558, 77 << 8)
    add(lambda ip: eth(ip4("192.0.2.1", "192.0.2.2", 17, udp(50001, 6081, gen + eth(ip)))), 41070)
    frames.append((t, MAC + b"\x88\xe5" + bytes([0x2c, 0, 0, 0, 0, 1]) + bytes(40)))
    return write_pcap(d / "crafted-encapsulations.pcap", frames)


@case
def linktype_fcs_bits(d: Path) -> Path:
    """Ethernet frames with a 4-byte FCS, said so in the link type's upper bits (FCS length 2 words)."""
    frames = [(ts, fr + b"\xde\xad\xbe\xef") for ts, fr in exchange(1.0, 42000)]
    return write_pcap(d / "crafted-linktype-fcs.pcap", frames, linktype=1 | 0x1 << 28 | 0x2 << 29)


@case
def linktype_ppp(d: Path) -> Path:
    """PPP (link type 9): address, control and protocol before IP."""
    return write_pcap(d / "crafted-linktype-ppp.pcap",
                      exchange(1.0, 42010, wrap=lambda ip: b"\xff\x03\x00\x21" + ip), linktype=9)


@case
def linktype_nflog(d: Path) -> Path:
    """Linux NFLOG (link type 239): a prefix TLV, then the packet TLV."""
    def wrap(ip: bytes) -> bytes:
        prefix = b"lab\0"
        tlv1 = struct.pack("<HH", 4 + len(prefix), 10) + prefix
        tlv9 = struct.pack("<HH", 4 + len(ip), 9) + ip + bytes(-len(ip) % 4)
        return struct.pack(">BBH", 2, 0, 0) + tlv1 + tlv9
    return write_pcap(d / "crafted-linktype-nflog.pcap", exchange(1.0, 42020, wrap=wrap), linktype=239)


@case
def linktype_ipoib(d: Path) -> Path:
    """IP over InfiniBand (link type 242) as Wireshark reads it: a 40-byte global route header, then
    the Ethernet type and two reserved bytes."""
    grh = struct.pack(">II", 0x60000000, 0x28) + bytes(range(32))
    return write_pcap(d / "crafted-linktype-ipoib.pcap",
                      exchange(1.0, 42030, wrap=lambda ip: grh + b"\x08\x00\x00\x00" + ip), linktype=242)


@case
def linktype_radiotap(d: Path) -> Path:
    """802.11 data frames (QoS, to the access point) behind a radiotap header (link type 127)."""
    def wrap(ip: bytes) -> bytes:
        rt = struct.pack("<BBHI", 0, 0, 8, 0)
        hdr = struct.pack("<BB", 0x88, 0x01) + bytes(2) + MAC + MAC[:6] + bytes(2) + bytes(2)
        return rt + hdr + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ip
    return write_pcap(d / "crafted-linktype-radiotap.pcap", exchange(1.0, 42040, wrap=wrap), linktype=127)


def main() -> int:
    for name, fn in CASES.items():
        path = fn(HERE)
        print(f"wrote tests/corpus/{path.name} ({path.stat().st_size:,} bytes): {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
