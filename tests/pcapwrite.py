"""Write small synthetic pcap files with struct: for the tests' bad-input cases and the benchmark
(``bench/analyse.py`` imports it from here; it is not part of the labctl package).

Checksums are left at zero (tshark does not verify them by default). Everything is IPv4 over Ethernet
unless a function says otherwise.
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

ETH_HDR = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
_IP = struct.Struct(">BBHHHBBH4s4s")
_TCP = struct.Struct(">HHIIBBHHH")
_UDP = struct.Struct(">HHHH")
_REC = struct.Struct("<IIII")


def global_header(linktype: int = 1, snaplen: int = 262144, nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def record(ts: float, frame: bytes, orig_len: int | None = None) -> bytes:
    sec = int(ts)
    usec = round((ts - sec) * 1e6)
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    return _REC.pack(sec, usec, len(frame), orig_len if orig_len is not None else len(frame)) + frame


def ipv4(src: str, dst: str, proto: int, l4: bytes, ident: int = 0) -> bytes:
    return _IP.pack(0x45, 0, 20 + len(l4), ident & 0xFFFF, 0x4000, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst)) + l4


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
        win: int = 64240) -> bytes:
    return _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, win, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return _UDP.pack(sport, dport, 8 + len(payload), 0) + payload


def eth(ip_packet: bytes, ethertype: int = 0x0800) -> bytes:
    return ETH_HDR[:12] + struct.pack(">H", ethertype) + ip_packet


def tcp_frame(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
              payload: bytes = b"") -> bytes:
    return eth(ipv4(src, dst, 6, tcp(sport, dport, seq, ack, flags, payload)))


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    return eth(ipv4(src, dst, 17, udp(sport, dport, payload)))


def write_pcap(path: str | Path, frames: Iterable[tuple[float, bytes]], linktype: int = 1) -> Path:
    """Write (timestamp, frame) pairs as a pcap file."""
    p = Path(path)
    with p.open("wb") as f:
        f.write(global_header(linktype))
        for ts, frame in frames:
            f.write(record(ts, frame))
    return p


def tcp_daytime(client: str, cport: int, server: str, sport: int, t0: float, isn_c: int = 1000,
                isn_s: int = 5000, reply: bytes = b"2026-11-25T10:00:00Z\n", step: float = 0.0001
                ) -> list[tuple[float, bytes]]:
    """The exercise's TCP exchange as 8 frames: handshake, the server's line, FINs and last ACK."""
    c, s = isn_c, isn_s
    n = len(reply)
    seqs = [
        (client, cport, server, sport, c, 0, 0x02, b""),
        (server, sport, client, cport, s, c + 1, 0x12, b""),
        (client, cport, server, sport, c + 1, s + 1, 0x10, b""),
        (server, sport, client, cport, s + 1, c + 1, 0x18, reply),
        (client, cport, server, sport, c + 1, s + 1 + n, 0x10, b""),
        (server, sport, client, cport, s + 1 + n, c + 1, 0x11, b""),
        (client, cport, server, sport, c + 1, s + 2 + n, 0x11, b""),
        (server, sport, client, cport, s + 2 + n, c + 2, 0x10, b""),
    ]
    return [(t0 + i * step, tcp_frame(*x)) for i, x in enumerate(seqs)]


def write_bench_capture(path: str | Path, tcp_conversations: int, udp_pairs: int) -> int:
    """The benchmark capture: ``tcp_conversations`` x 8 packets + ``udp_pairs`` x 2, interleaved.

    Written record by record with precomputed templates (fast). Returns the number of packets.
    """
    p = Path(path)
    reply = b"2026-11-25T10:00:00.000000Z\n"
    count = 0
    t = 1_764_064_800.0
    with p.open("wb", buffering=1 << 20) as f:
        f.write(global_header())
        for i in range(max(tcp_conversations, udp_pairs)):
            client = f"10.1.{(i // 200) % 250}.{i % 200 + 2}"
            port = 10000 + i % 40000   # (client, port) stays unique up to 200,000 conversations
            if i < tcp_conversations:
                count += _write_frames(f, tcp_daytime(client, port, "10.0.0.1", 8080, t, 1000 + i,
                                                      900000 + i, reply, 0.00005))
            if i < udp_pairs:
                frames = [(t + 0.0004, udp_frame(client, port, "10.0.0.1", 8081, b"GET TIME\n")),
                          (t + 0.00045, udp_frame("10.0.0.1", 8081, client, port, reply))]
                count += _write_frames(f, frames)
            t += 0.001
    return count


def _write_frames(f: BinaryIO, frames: list[tuple[float, bytes]]) -> int:
    for ts, frame in frames:
        f.write(record(ts, frame))
    return len(frames)
