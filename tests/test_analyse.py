"""Unit tests of the analysis on small synthetic captures written with struct (no network needed).

The TCP analysis flags of the crafted scenarios are also checked against tshark (required, see
tests/requires.py: skipped visibly here without it, a failure under CI).
"""
from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from pcapwrite import (
    eth,
    global_header,
    ipv4,
    record,
    tcp,
    tcp_daytime,
    tcp_frame,
    udp,
    udp_frame,
    write_bench_capture,
    write_pcap,
)

from labctl.analyse import CaptureFileError, analyse_file, decode, json_report, render_terminal
from labctl.analyse import tcp as tcp_state
from labctl.analyse.json_report import write_json
from labctl.analyse.milliseconds import FloatClock
from tests.requires import require_tool

ROOT = Path(__file__).resolve().parents[1]
C, S = "10.0.0.2", "10.0.0.1"


def _document(analysis) -> dict:
    """The --json document of an analysis, parsed."""
    out = io.StringIO()
    write_json(analysis, out)
    return json.loads(out.getvalue())


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "labctl.py"), "analyse", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def _exchange(t0: float = 100.0) -> list[tuple[float, bytes]]:
    frames = tcp_daytime(C, 40000, S, 8080, t0, step=0.0002)
    frames += [(t0 + 0.01, udp_frame(C, 40001, S, 8080, b"GET TIME\n")),
               (t0 + 0.0102, udp_frame(S, 8080, C, 40001, b"2026-11-25T10:00:00Z\n"))]
    return frames


# --- reading: formats and bad input -------------------------------------------------------------------

def test_clean_exchange_counts(tmp_path):
    a = analyse_file(write_pcap(tmp_path / "x.pcap", _exchange()))
    (t,) = list(a.tcp())
    (u,) = list(a.udp())
    assert (t.packets, t.client, t.server) == (8, f"{C}:40000", f"{S}:8080")
    assert t.bytes == 8 * 54 + 21 and t.payload_bytes == 21 and t.server_payload == 21
    assert (t.syn, t.synack, t.fin, t.rst, t.closed_by, t.handshake) == (1, 1, 2, 0, "server", True)
    assert t.rtt_ms == pytest.approx(0.4) and t.ttfb_ms == pytest.approx(0.6)
    assert [p.label for p in t.ladder] == ["SYN", "SYN-ACK", "ACK", "PSH-ACK", "ACK", "FIN-ACK",
                                           "FIN-ACK", "ACK"]
    assert [(p.seq, p.ack) for p in t.ladder][:4] == [(0, None), (0, 1), (1, 1), (1, 1)]
    assert (u.packets, u.bytes, u.payload_bytes, u.unanswered) == (2, 51 + 63, 30, 0)
    assert u.rtt_ms == pytest.approx(0.2)
    assert a.packets == 10 and a.bytes == t.bytes + u.bytes


def test_not_a_pcap(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not a capture\n")
    with pytest.raises(CaptureFileError, match="not a pcap or pcapng"):
        analyse_file(p)  # the CLI prints it as one line: test_cli_bad_input_is_one_clear_line


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\xd4\xc3\xb2", "not a pcap"),
                                           (global_header()[:20], "cut short")])
def test_empty_and_short_files(tmp_path, content, match):
    p = tmp_path / "bad.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureFileError, match=match):
        analyse_file(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureFileError, match="no such file"):
        analyse_file(tmp_path / "nope.pcap")
    with pytest.raises(CaptureFileError, match="directory"):
        analyse_file(tmp_path)


def test_truncated_mid_packet_keeps_what_was_read(tmp_path):
    full = write_pcap(tmp_path / "full.pcap", _exchange()).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(full[:-30])          # the last UDP reply loses its tail
    a = analyse_file(cut)
    assert a.info.truncated
    assert a.packets == 9
    assert any("middle of a packet" in w for w in a.warnings)
    (u,) = list(a.udp())
    assert u.unanswered == 1


def test_truncated_inside_record_header(tmp_path):
    full = write_pcap(tmp_path / "full.pcap", _exchange()).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(full[:24 + 16 + 54 + 7])
    a = analyse_file(cut)
    assert a.packets == 1 and any("packet header" in w for w in a.warnings)


def test_cli_bad_input_is_one_clear_line(tmp_path):
    p = tmp_path / "x.pcap"
    p.write_text("garbage")
    r = _run_cli(str(p))
    assert r.returncode == 1
    assert r.stderr.startswith("labctl: ") and len(r.stderr.splitlines()) == 1, r.stderr
    assert "not a pcap or pcapng" in r.stderr
    r = _run_cli(str(tmp_path / "missing.pcap"))
    assert r.returncode == 1 and "no such file" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_truncated_warns_and_analyses(tmp_path):
    full = write_pcap(tmp_path / "full.pcap", _exchange()).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(full[:-30])
    r = _run_cli(str(cut), "--json")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "middle of a packet" in r.stderr
    doc = json.loads(r.stdout)
    assert doc["summary"]["packets"] == 9


def test_non_ip_frames_are_counted_not_analysed(tmp_path):
    arp = eth(bytes(28), ethertype=0x0806)
    lldp = eth(bytes(40), ethertype=0x88CC)
    icmp = eth(ipv4(C, S, 1, bytes([8, 0]) + bytes(30)))
    p = write_pcap(tmp_path / "x.pcap", [(1.0, arp), (1.1, lldp), (1.2, icmp), *_exchange(2.0)])
    a = analyse_file(p)
    assert a.tcp_count == 1 and a.udp_count == 1
    assert a.builder.skipped == {"not IP: ARP": 1, "not IP: LLDP": 1, "IP but neither TCP nor UDP: ICMP": 1}
    assert a.packets == 13


def _ipv6(src: bytes, dst: bytes, nh: int, l4: bytes) -> bytes:
    return struct.pack(">IHBB", 0x60000000, len(l4), nh, 64) + src + dst + l4


def test_ipv6_tcp_and_udp(tmp_path):
    a6, b6 = bytes(15) + b"\x02", bytes(15) + b"\x01"
    frames = [
        (1.0, eth(_ipv6(a6, b6, 6, tcp(40000, 8080, 1, 0, 0x02)), 0x86DD)),
        (1.001, eth(_ipv6(b6, a6, 6, tcp(8080, 40000, 9, 2, 0x12)), 0x86DD)),
        (1.002, eth(_ipv6(a6, b6, 6, tcp(40000, 8080, 2, 10, 0x10)), 0x86DD)),
        (1.003, eth(_ipv6(b6, a6, 6, tcp(8080, 40000, 10, 2, 0x18, b"time\n")), 0x86DD)),
        (1.01, eth(_ipv6(a6, b6, 17, udp(40001, 8080, b"GET")), 0x86DD)),
    ]
    a = analyse_file(write_pcap(tmp_path / "v6.pcap", frames))
    (t,) = list(a.tcp())
    (u,) = list(a.udp())
    assert t.client == "[::2]:40000" and t.server == "[::1]:8080"
    assert t.packets == 4 and t.server_payload == 5 and t.handshake
    assert u.client == "[::2]:40001" and u.unanswered == 1
    assert a.builder.ipv6 == 5


def test_snaplen_cut_packets(tmp_path):
    frames = _exchange()
    p = tmp_path / "cut.pcap"
    with p.open("wb") as f:
        f.write(global_header(snaplen=60))
        for ts, fr in frames:
            f.write(record(ts, fr[:60], len(fr)))
        f.write(record(200.0, tcp_frame(C, 1, S, 2, 0, 0, 2)[:30], 54))   # cut inside the IP header
    a = analyse_file(p)
    (t,) = list(a.tcp())
    assert t.payload_bytes == 21          # from the IP length, not from the cut frame
    assert t.bytes == 8 * 54 + 21          # frame lengths on the wire
    assert a.builder.skipped == {decode.SKIP_CUT: 1}
    assert any("snapshot length 60" in w for w in a.warnings)


def _pcapng(frames: list[tuple[float, bytes]], linktype: int = 1, tsresol: int | None = None) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    units = 10 ** 6
    if tsresol is not None:
        opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
        units = 10 ** tsresol
    out += block(1, struct.pack("<HHI", linktype, 0, 65535) + opts)
    for ts, fr in frames:
        t = round(ts * units)
        out += block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(fr), len(fr)) + fr)
    return out


@pytest.mark.parametrize("tsresol", [None, 9])
def test_pcapng_same_as_pcap(tmp_path, tsresol):
    frames = _exchange()
    a = analyse_file(write_pcap(tmp_path / "x.pcap", frames))
    ng = tmp_path / "x.pcapng"
    ng.write_bytes(_pcapng(frames, tsresol=tsresol))
    b = analyse_file(ng)
    assert b.info.format == "pcapng"
    assert _document(a)["conversations"] == _document(b)["conversations"]


def test_pcapng_truncated(tmp_path):
    ng = tmp_path / "x.pcapng"
    ng.write_bytes(_pcapng(_exchange())[:-20])
    a = analyse_file(ng)
    assert a.packets == 9 and a.info.truncated


@pytest.mark.parametrize("linktype,wrap", [
    (113, lambda ip: struct.pack(">HHH8sH", 0, 1, 6, bytes(8), 0x0800) + ip),            # SLL
    (276, lambda ip: struct.pack(">HHIHBB8s", 0x0800, 0, 1, 1, 0, 6, bytes(8)) + ip),     # SLL2
    (101, lambda ip: ip),                                                                # raw IP
    (0, lambda ip: struct.pack("<I", 2) + ip),                                           # BSD null
])
def test_link_types(tmp_path, linktype, wrap):
    frames = [(ts, wrap(fr[14:])) for ts, fr in _exchange()]
    a = analyse_file(write_pcap(tmp_path / "x.pcap", frames, linktype=linktype))
    (t,) = list(a.tcp())
    (u,) = list(a.udp())
    assert t.packets == 8 and t.server_payload == 21 and t.handshake and u.packets == 2


def test_link_type_without_ip_is_named_not_refused(tmp_path):
    p = write_pcap(tmp_path / "x.pcap", [(1.0, bytes(64))], linktype=189)   # USB (Linux)
    a = analyse_file(p)
    assert a.tcp_count == a.udp_count == 0
    assert a.builder.skipped == {"not analysed: USB (Linux) frames (link type 189) carry no IP this tool "
                                 "decodes": 1}
    assert a.linktype_names == ["USB (Linux)"]


def test_big_endian_and_nanosecond_pcap(tmp_path):
    frames = _exchange()
    p = tmp_path / "be.pcap"
    with p.open("wb") as f:
        f.write(struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for ts, fr in frames:
            sec = int(ts)
            f.write(struct.pack(">IIII", sec, round((ts - sec) * 1e9), len(fr), len(fr)) + fr)
    a = analyse_file(p)
    b = analyse_file(write_pcap(tmp_path / "le.pcap", frames))
    assert _document(a)["conversations"] == _document(b)["conversations"]


# --- TCP analysis -------------------------------------------------------------------------------------

def _scenario(kind: str, port: int = 40000) -> list[tuple[float, bytes]]:
    """Crafted TCP stories: RTO retransmission, out-of-order, spurious, fast retransmit, port reuse."""
    frames = _scenario40000(kind)
    if port != 40000:
        old, new = struct.pack(">H", 40000), struct.pack(">H", port)
        frames = [(t, f[:34] + f[34:38].replace(old, new) + f[38:]) for t, f in frames]
    return frames


def _scenario40000(kind: str) -> list[tuple[float, bytes]]:
    t = 10.0
    cs, ss = 1000, 5000
    base = [(t, tcp_frame(C, 40000, S, 8080, cs, 0, 0x02)),
            (t + 0.010, tcp_frame(S, 8080, C, 40000, ss, cs + 1, 0x12)),
            (t + 0.020, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 1, 0x10))]
    d1, d2 = b"A" * 100, b"B" * 100
    if kind == "rto":
        return [*base,
                (t + 0.03, tcp_frame(S, 8080, C, 40000, ss + 1, cs + 1, 24, d1)),
                (t + 0.25, tcp_frame(S, 8080, C, 40000, ss + 1, cs + 1, 24, d1)),
                (t + 0.26, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 101, 16))]
    if kind == "ooo":
        return [*base,
                (t + 0.03, tcp_frame(S, 8080, C, 40000, ss + 101, cs + 1, 24, d2)),
                (t + 0.0301, tcp_frame(S, 8080, C, 40000, ss + 1, cs + 1, 24, d1)),
                (t + 0.04, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 201, 16))]
    if kind == "spurious":
        return [*base,
                (t + 0.03, tcp_frame(S, 8080, C, 40000, ss + 1, cs + 1, 24, d1)),
                (t + 0.04, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 101, 16)),
                (t + 0.3, tcp_frame(S, 8080, C, 40000, ss + 1, cs + 1, 24, d1))]
    if kind == "fast":
        return [*base,
                (t + 0.03, tcp_frame(S, 8080, C, 40000, ss + 1, cs + 1, 16, d1)),
                (t + 0.031, tcp_frame(S, 8080, C, 40000, ss + 101, cs + 1, 16, d2)),
                (t + 0.032, tcp_frame(S, 8080, C, 40000, ss + 201, cs + 1, 16, d2)),
                (t + 0.033, tcp_frame(S, 8080, C, 40000, ss + 301, cs + 1, 16, d2)),
                (t + 0.04, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 1, 16)),
                (t + 0.041, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 1, 16)),
                (t + 0.042, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 1, 16)),
                (t + 0.043, tcp_frame(S, 8080, C, 40000, ss + 1, cs + 1, 16, d1)),
                (t + 0.05, tcp_frame(C, 40000, S, 8080, cs + 1, ss + 401, 16))]
    if kind == "reuse":
        again = tcp_daytime(C, 40000, S, 8080, t + 1, isn_c=77777, isn_s=88888)
        return tcp_daytime(C, 40000, S, 8080, t, isn_c=cs, isn_s=ss) + again
    if kind == "refused":
        return [(t, tcp_frame(C, 40000, S, 8080, cs, 0, 0x02)),
                (t + 0.0001, tcp_frame(S, 8080, C, 40000, 0, cs + 1, 0x14))]
    raise ValueError(kind)


def _tshark_flags(path: Path, flag: str) -> int:
    out = subprocess.run(["tshark", "-r", str(path), "-Y", f"tcp.analysis.{flag}", "-T", "fields",
                          "-e", "frame.number"], capture_output=True, text=True, check=True).stdout
    return len(out.split())


@pytest.mark.parametrize("kind,expect", [
    ("rto", {"retransmissions": 1}), ("ooo", {"out_of_order": 1}),
    ("spurious", {"retransmissions": 1, "spurious_retransmissions": 1}),
    ("fast", {"retransmissions": 1, "fast_retransmissions": 1, "dup_acks": 3}),
])
def test_tcp_analysis_flags(tmp_path, kind, expect):
    p = write_pcap(tmp_path / f"{kind}.pcap", _scenario(kind))
    (t,) = list(analyse_file(p).tcp())
    got = {k: getattr(t, k) for k in ("retransmissions", "out_of_order", "spurious_retransmissions",
                                      "fast_retransmissions", "dup_acks")}
    assert got == {**dict.fromkeys(got, 0), **expect}
    if kind == "rto":
        notes = [n for pk in t.ladder for n in pk.notes]
        assert notes == ["lost? sent again at 250.0 ms", "retransmission"]


@pytest.mark.parametrize("kind", ["rto", "ooo", "spurious", "fast"])
def test_tcp_analysis_flags_match_tshark(tmp_path, kind):
    require_tool("tshark", "apt-get install tshark")
    p = write_pcap(tmp_path / f"{kind}.pcap", _scenario(kind))
    (t,) = list(analyse_file(p).tcp())
    assert t.retransmissions == _tshark_flags(p, "retransmission")
    assert t.out_of_order == _tshark_flags(p, "out_of_order")
    assert t.spurious_retransmissions == _tshark_flags(p, "spurious_retransmission")
    assert t.dup_acks == _tshark_flags(p, "duplicate_ack")


def test_port_reuse_starts_a_new_conversation(tmp_path):
    a = analyse_file(write_pcap(tmp_path / "r.pcap", _scenario("reuse")))
    convs = list(a.tcp())
    assert [c.packets for c in convs] == [8, 8]
    assert all(c.handshake and c.retransmissions == 0 for c in convs)


def test_refused_connection(tmp_path):
    (t,) = list(analyse_file(write_pcap(tmp_path / "r.pcap", _scenario("refused"))).tcp())
    assert t.refused and t.rst == 1 and t.closed_by == "server (RST)" and not t.handshake
    assert t.rtt_ms is None
    assert [p.label for p in t.ladder] == ["SYN", "RST-ACK"]


def test_fold_and_unfold_keep_everything(tmp_path, monkeypatch):
    """Closed conversations are folded into bytes; a late packet unfolds them and carries on."""
    monkeypatch.setattr(tcp_state, "FOLD_AFTER", 0)
    frames = tcp_daytime(C, 40000, S, 8080, 10.0)
    frames.append((12.0, tcp_frame(S, 8080, C, 40000, 5000 + 22, 1002, 0x11)))  # late FIN again
    a = analyse_file(write_pcap(tmp_path / "late.pcap", frames), detail=0)
    (t,) = list(a.tcp())
    assert t.packets == 9 and t.retransmissions == 1
    b = analyse_file(write_pcap(tmp_path / "d.pcap", tcp_daytime(C, 40000, S, 8080, 10.0)), detail=0)
    assert type(b.builder.tcp.convs[0]) is not list     # folded
    c = analyse_file(write_pcap(tmp_path / "e.pcap", tcp_daytime(C, 40000, S, 8080, 10.0)), detail=5)
    assert type(c.builder.tcp.convs[0]) is list         # kept for its ladder
    assert dataclasses.replace(next(b.tcp()), ladder=None) == dataclasses.replace(next(c.tcp()), ladder=None)


def test_udp_exchanges_and_icmp(tmp_path):
    icmp_unreach = eth(ipv4(S, C, 1, bytes([3, 3, 0, 0, 0, 0, 0, 0])
                            + ipv4(C, S, 17, udp(40002, 9999, b"GET TIME\n"))[:28]))
    frames = [(1.0, udp_frame(C, 40001, S, 8080, b"GET TIME\n")),
              (1.001, udp_frame(S, 8080, C, 40001, b"time\n")),
              (2.0, udp_frame(C, 40001, S, 8080, b"GET TIME\n")),          # lost reply
              (3.0, udp_frame(C, 40001, S, 8080, b"GET TIME\n")),
              (3.002, udp_frame(S, 8080, C, 40001, b"time\n")),
              (4.0, udp_frame(C, 40002, S, 9999, b"GET TIME\n")),
              (4.0001, icmp_unreach)]
    a = analyse_file(write_pcap(tmp_path / "u.pcap", frames))
    u, closed = list(a.udp())
    assert [e.answered for e in u.exchanges] == [True, False, True]
    assert u.unanswered == 1 and u.packets == 5 and u.rtt_ms == pytest.approx(1.0)
    assert closed.unanswered == 1 and closed.exchanges[0].note == "ICMP port unreachable"
    assert closed.packets == 1      # the ICMP error is not part of the UDP conversation (as tshark)


# --- output -------------------------------------------------------------------------------------------

def test_json_says_what_the_conversations_say(tmp_path):
    """The JSON lines and the conversations the ladders and tables show come from the same figures."""
    frames = _exchange() + _scenario("rto", 40010) + _scenario("reuse", 40020) + _scenario("refused", 40030)
    frames.sort(key=lambda f: f[0])
    a = analyse_file(write_pcap(tmp_path / "x.pcap", frames))
    doc = _document(a)
    convs = list(a.conversations())
    assert len(doc["conversations"]) == len(convs) == 6
    for line, c in zip(doc["conversations"], convs):
        assert (line["proto"], line["client"], line["server"]) == (c.proto, c.client, c.server)
        assert (line["packets"], line["bytes"]) == (c.packets, c.bytes)
        assert (line["payload_bytes"], line["server_payload_bytes"]) == (c.payload_bytes, c.server_payload)
        for k in ("rtt_ms", "ttfb_ms", "duration_ms"):
            want = getattr(c, k)
            assert line[k] == (None if want is None else round(want, 3)), k
        assert [e["answered"] for e in line["exchanges"]] == [e.answered for e in c.exchanges]
        if c.proto == "tcp":
            assert (line["closed_by"], line["refused"], line["handshake"], line["retransmissions"]) == (
                c.closed_by, c.refused, c.handshake, c.retransmissions)
    assert doc["summary"]["tcp"]["conversations"] == 5    # the reused 4-tuple counts twice
    assert doc["summary"]["tcp"]["refused"] == 1 and doc["summary"]["tcp"]["retransmissions"] == 1


def _stories(tmp_path: Path) -> list[Path]:
    """Captures whose JSON takes every branch: the examples (real traffic, odd medians), crafted stories,
    the bench traffic."""
    frames = _exchange() + _scenario("rto", 40010) + _scenario("reuse", 40020) + _scenario("refused", 40030)
    for n, kind in enumerate(("ooo", "spurious", "fast")):
        frames += [(t + 1 + n, f) for t, f in _scenario(kind, 40040 + n)]
    frames.sort(key=lambda f: f[0])
    bench = tmp_path / "b.pcap"
    write_bench_capture(bench, 300, 300)
    return [ROOT / "labctl" / "analyse" / "examples" / "tcp-vs-udp.pcap",
            ROOT / "labctl" / "analyse" / "examples" / "tcp-vs-udp-lossy.pcap",
            write_pcap(tmp_path / "s.pcap", frames), bench]


def test_exact_microseconds_write_the_float_text(tmp_path, monkeypatch):
    """MicroClock (integer microseconds, cached texts) writes the same bytes as FloatClock (floats)."""
    for p in _stories(tmp_path):
        a = analyse_file(p)
        assert json_report.clock_for(a.builder).exact
        exact, floats = io.StringIO(), io.StringIO()
        write_json(a, exact)
        monkeypatch.setattr(json_report, "clock_for", lambda b: FloatClock(b.times.seconds))
        write_json(a, floats)
        monkeypatch.undo()
        assert exact.getvalue() == floats.getvalue(), p


def test_folding_early_changes_nothing(tmp_path, monkeypatch):
    """Closed conversations folded from the first one (FOLD_FROM = 0) unfold exactly: same document."""
    for p in _stories(tmp_path):
        plain = io.StringIO()
        write_json(analyse_file(p, detail=0), plain)
        monkeypatch.setattr(tcp_state, "FOLD_FROM", 0)
        folded = io.StringIO()
        write_json(analyse_file(p, detail=0), folded)
        monkeypatch.undo()
        assert folded.getvalue() == plain.getvalue(), p


def _big_endian_copy(src: Path, dst: Path) -> Path:
    """The same capture with big-endian headers: the fast path does not read those."""
    data = src.read_bytes()
    magic, vmaj, vmin, tz, sig, snaplen, network = struct.unpack_from("<IHHiIII", data)
    out = [struct.pack(">IHHiIII", magic, vmaj, vmin, tz, sig, snaplen, network)]
    o = 24
    while o < len(data):
        sec, frac, incl, orig = struct.unpack_from("<IIII", data, o)
        out.append(struct.pack(">IIII", sec, frac, incl, orig) + data[o + 16:o + 16 + incl])
        o += 16 + incl
    dst.write_bytes(b"".join(out))
    return dst


@pytest.mark.parametrize("detail", [0, 8])
def test_fast_path_equals_general_path(tmp_path, detail):
    """Every packet through the general analysis gives the state the fast path's short cuts give."""
    for p in _stories(tmp_path):
        general = analyse_file(_big_endian_copy(p, tmp_path / "be.pcap"), detail=detail).builder
        fast = analyse_file(p, detail=detail).builder
        assert fast.tcp.keys == general.tcp.keys and len(fast.tcp) == len(general.tcp), p
        for i in range(len(fast.tcp)):
            assert list(fast.tcp.flat(i)) == list(general.tcp.flat(i)), (p, i)
            assert fast.tcp.detail_of(i) == general.tcp.detail_of(i), (p, i)
        assert fast.udp.convs == general.udp.convs and fast.udp.icmp == general.udp.icmp, p
        assert (fast.packets, fast.bytes, fast.skipped) == (general.packets, general.bytes, general.skipped)


def test_json_cli_on_bench_capture(tmp_path):
    p = tmp_path / "b.pcap"
    n = write_bench_capture(p, 50, 50)
    r = _run_cli(str(p), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    s = doc["summary"]
    assert s["packets"] == n == 500
    assert (s["tcp"]["conversations"], s["udp"]["conversations"]) == (50, 50)
    assert s["tcp"]["packets"] == 400 and s["udp"]["unanswered"] == 0


def test_terminal_report_plain_text(tmp_path):
    frames = sorted(_exchange() + _scenario("rto", 40010), key=lambda f: f[0])
    a = analyse_file(write_pcap(tmp_path / "x.pcap", frames))
    out = io.StringIO()
    render_terminal(a, out=out, ladders=2, width=200)
    text = out.getvalue()
    for word in ("SYN seq=0", "SYN-ACK seq=0 ack=1", "PSH-ACK seq=1 ack=1 len=21", "UDP len=9",
                 "retransmission", "TCP vs UDP in this capture", "header overhead", "client", "server",
                 "⋯ 220 ms pass ⋯", "lost? sent again at 250.0 ms"):
        assert word in text, word
    assert "\x1b[" not in text          # no colour codes into a file


def test_svg_and_html(tmp_path):
    frames = sorted(_exchange() + _scenario("rto", 40010), key=lambda f: f[0])
    p = write_pcap(tmp_path / "x.pcap", frames)
    r = _run_cli(str(p), "--svg", str(tmp_path / "svg"), "--html", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    svgs = sorted(x.name for x in (tmp_path / "svg").iterdir())
    assert "tcp-vs-udp.svg" in svgs and len(svgs) >= 3
    import xml.dom.minidom

    for name in svgs:
        xml.dom.minidom.parse(str(tmp_path / "svg" / name))      # well-formed
    html = (tmp_path / "r.html").read_text()
    assert html.count("<svg") >= 2 and "<script" not in html and "http://" not in html.replace(
        "http://www.w3.org/2000/svg", "")
    for q in ("What is the difference between communication with TCP and UDP?",
              "When would you choose which protocol?",
              "How can these two protocols be used with respect to system integration?"):
        assert q in html
    assert "retransmitted 1 segment" in html and "(1 retransmission)" in html


def test_parallel_json_is_the_same_document(tmp_path):
    """--jobs N (forked workers, conversations split by port hash) == the single-process document."""
    p = tmp_path / "b.pcap"
    write_bench_capture(p, 300, 300)
    frames = sorted(_exchange(5e8) + _scenario("rto", 40010) + _scenario("refused", 40030),
                    key=lambda f: f[0])
    with p.open("ab") as f:            # append a few stories after the bench traffic
        for ts, fr in frames:
            f.write(record(ts + 1.8e9, fr))
    from labctl.analyse.parallel import write_json_parallel

    single, multi = io.StringIO(), io.StringIO()
    write_json(analyse_file(p, detail=0), single)
    for jobs in (2, 3):
        multi = io.StringIO()
        write_json_parallel(p, multi, jobs)
        assert multi.getvalue() == single.getvalue()
    r = _run_cli(str(p), "--json", "--jobs", "2")
    assert r.returncode == 0 and r.stdout == single.getvalue()


def test_parallel_reports_bad_input(tmp_path):
    from labctl.analyse.parallel import write_json_parallel

    p = tmp_path / "x.pcap"
    p.write_text("not a capture")
    with pytest.raises(CaptureFileError):
        write_json_parallel(p, io.StringIO(), 2)


@pytest.mark.parametrize("name", ["tcp-vs-udp.pcap", "tcp-vs-udp-lossy.pcap"])
def test_example_captures_match_tshark(name):
    from test_analyse_support import assert_matches_tshark

    require_tool("tshark", "apt-get install tshark")
    path = ROOT / "labctl" / "analyse" / "examples" / name
    a = analyse_file(path)
    assert_matches_tshark(path, a)
    if "lossy" in name:
        assert sum(c.retransmissions for c in a.tcp()) == 12


def test_pcapng_two_interfaces_two_link_types(tmp_path):
    """dumpcap -i eth0 -i any style: packets from an Ethernet and a raw-IP interface, interleaved."""
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", 1, 0, 65535)) + block(1, struct.pack("<HHI", 101, 0, 65535))
    for i, (ts, fr) in enumerate(_exchange()):
        ifid = i % 2
        data = fr if ifid == 0 else fr[14:]
        t = round(ts * 1e6)
        out += block(6, struct.pack("<IIIII", ifid, t >> 32, t & 0xFFFFFFFF, len(data), len(data)) + data)
    p = tmp_path / "two.pcapng"
    p.write_bytes(out)
    a = analyse_file(p)
    assert a.linktype_names == ["Ethernet", "raw IP"]
    (t,) = list(a.tcp())
    assert t.packets == 8 and t.handshake and t.server_payload == 21


def test_no_conversations_says_what_to_check(tmp_path):
    p = write_pcap(tmp_path / "arp.pcap", [(1.0, eth(bytes(28), ethertype=0x0806))])
    out = io.StringIO()
    render_terminal(analyse_file(p), out=out)
    assert "No TCP or UDP conversations" in out.getvalue() and "1 packet," in out.getvalue()
