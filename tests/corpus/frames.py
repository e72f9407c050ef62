"""Frames and capture files built byte by byte with struct, for the crafted captures (``make.py``).

Checksums are zero (tshark does not check them by default).
"""
from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: pcapwrite.py, the tests' one pcap writer
from pcapwrite import global_header, record  # noqa: E402

A, B = "10.1.0.1", "10.1.0.2"                  # the client and the server of most captures
A6, B6 = "2001:db8::1", "2001:db8::2"
MAC = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


# --- headers ------------------------------------------------------------------------------------------

def ip4(src: str, dst: str, proto: int, payload: bytes, totlen: int | None = None, ident: int = 1,
        frag: int = 0x4000, ihl: int = 5) -> bytes:
    opts = bytes(4 * (ihl - 5))
    n = 4 * ihl + len(payload) if totlen is None else totlen
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, n, ident, frag, 64, proto, 0, socket.inet_aton(src),
                       socket.inet_aton(dst)) + opts + payload


def ip6(src: str, dst: str, nh: int, payload: bytes, plen: int | None = None) -> bytes:
    a, b = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    n = len(payload) if plen is None else plen
    return struct.pack(">IHBB16s16s", 0x60000000, n, nh, 64, a, b) + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b"", win: int = 8192,
        thl: int = 5) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, thl << 4, flags,
                       win, 0, 0) + bytes(4 * (thl - 5)) + data


def udp(sport: int, dport: int, data: bytes, ulen: int | None = None) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(data) if ulen is None else ulen, 0) + data


def eth(payload: bytes, et: int = 0x0800) -> bytes:
    return MAC + struct.pack(">H", et) + payload


# --- files ----------------------------------------------------------------------------------------------

def write_pcap(path: Path, frames: list[tuple[float, bytes]], linktype: int = 1, snaplen: int = 65535,
               orig: dict[int, int] | None = None) -> Path:
    """A pcap file (tests/pcapwrite.py's header and records); ``orig`` gives some frames (by index) a
    larger length on the wire."""
    path.write_bytes(global_header(linktype, snaplen)
                     + b"".join(record(ts, fr, (orig or {}).get(i)) for i, (ts, fr) in enumerate(frames)))
    return path


def _block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def write_pcapng(path: Path, frames: list[tuple[int, bytes]], tsresol: int = 9, tsoffset: int = 0,
                 linktype: int = 1) -> Path:
    """A pcapng file with one interface; frames carry raw timestamps in 10^-tsresol s units."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = _opt(9, bytes([tsresol]))
    if tsoffset:
        opts += _opt(14, struct.pack("<q", tsoffset))
    idb = _block(1, struct.pack("<HHI", linktype, 0, 0) + opts + _opt(0, b""))
    epbs = [_block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(fr), len(fr)) + fr)
            for ts, fr in frames]
    path.write_bytes(shb + idb + b"".join(epbs))
    return path


# --- the conversations -----------------------------------------------------------------------------------

def _wrap(wrap, ip):
    if wrap is not None:
        return wrap
    return eth if ip is ip4 else (lambda pkt: eth(pkt, 0x86DD))


def handshake(t: float, sport: int = 40000, dport: int = 80, wrap=None, a: str = A, b: str = B,
              ip=ip4) -> list[tuple[float, bytes]]:
    wrap = _wrap(wrap, ip)
    return [(t, wrap(ip(a, b, 6, tcp(sport, dport, 1000, 0, SYN)))),
            (t + 0.001, wrap(ip(b, a, 6, tcp(dport, sport, 5000, 1001, SYN | ACK)))),
            (t + 0.002, wrap(ip(a, b, 6, tcp(sport, dport, 1001, 5001, ACK))))]


def exchange(t: float, sport: int = 40000, dport: int = 80, wrap=None, a: str = A, b: str = B,
             ip=ip4) -> list[tuple[float, bytes]]:
    """A TCP conversation (handshake, request, reply, close) and a UDP request/reply."""
    wrap = _wrap(wrap, ip)
    reply = b"2024-01-01T00:00:00Z\n"
    return [*handshake(t, sport, dport, wrap, a, b, ip),
            (t + 0.003, wrap(ip(a, b, 6, tcp(sport, dport, 1001, 5001, PSH | ACK, b"GET TIME\n")))),
            (t + 0.004, wrap(ip(b, a, 6, tcp(dport, sport, 5001, 1010, PSH | ACK, reply)))),
            (t + 0.005, wrap(ip(a, b, 6, tcp(sport, dport, 1010, 5022, FIN | ACK)))),
            (t + 0.006, wrap(ip(b, a, 6, tcp(dport, sport, 5022, 1011, FIN | ACK)))),
            (t + 0.007, wrap(ip(a, b, 6, tcp(sport, dport, 1011, 5023, ACK)))),
            (t + 0.008, wrap(ip(a, b, 17, udp(sport + 1, 37, b"?")))),
            (t + 0.009, wrap(ip(b, a, 17, udp(37, sport + 1, b"0123")))),
            ]
