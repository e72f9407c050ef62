"""What TCP's retransmissions cost (labctl/analyse/resent.py), on crafted captures, checked against tshark."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from labctl.analyse import analyse_file, summarise
from labctl.analyse.json_report import write_json
from labctl.analyse.resent import Resent, cost_ms, explain, unknown
from tests.pcapwrite import tcp_frame, write_pcap
from tests.requires import require_tool

C, S = "10.0.0.1", "10.0.0.2"
CS, SS = 1000, 5000


def _handshake(t: float) -> list[tuple[float, bytes]]:
    return [(t, tcp_frame(C, 40000, S, 8080, CS, 0, 0x02)),
            (t + 0.010, tcp_frame(S, 8080, C, 40000, SS, CS + 1, 0x12)),
            (t + 0.020, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 1, 0x10))]


def _story(kind: str) -> list[tuple[float, bytes]]:
    t = 10.0
    line = b"2026-12-02T01:00:00Z\n"
    n = len(line)
    if kind == "syn":      # the client's SYN lost twice: sent at 0, 1 s and 3 s
        return [(t, tcp_frame(C, 40000, S, 8080, CS, 0, 0x02)),
                (t + 1.0, tcp_frame(C, 40000, S, 8080, CS, 0, 0x02)),
                (t + 3.0, tcp_frame(C, 40000, S, 8080, CS, 0, 0x02)),
                (t + 3.01, tcp_frame(S, 8080, C, 40000, SS, CS + 1, 0x12)),
                (t + 3.02, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 1, 0x10))]
    if kind == "data-then-fin":   # the server's line lost, its FIN not: the line is sent again 210 ms later
        return [*_handshake(t),
                (t + 0.030, tcp_frame(S, 8080, C, 40000, SS + 1, CS + 1, 0x18, line)),
                (t + 0.031, tcp_frame(S, 8080, C, 40000, SS + 1 + n, CS + 1, 0x11)),
                (t + 0.032, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 1, 0x10)),
                (t + 0.240, tcp_frame(S, 8080, C, 40000, SS + 1, CS + 1, 0x18, line)),
                (t + 0.241, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 2 + n, 0x11)),
                (t + 0.242, tcp_frame(S, 8080, C, 40000, SS + 2 + n, CS + 2, 0x10))]
    if kind == "two":   # the SYN-ACK lost (SYN and SYN-ACK again after 1 s), then the line (200 ms): 1.201 s
        return [(t, tcp_frame(C, 40000, S, 8080, CS, 0, 0x02)),
                (t + 0.001, tcp_frame(S, 8080, C, 40000, SS, CS + 1, 0x12)),
                (t + 1.0, tcp_frame(C, 40000, S, 8080, CS, 0, 0x02)),
                (t + 1.001, tcp_frame(S, 8080, C, 40000, SS, CS + 1, 0x12)),
                (t + 1.002, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 1, 0x10)),
                (t + 1.003, tcp_frame(S, 8080, C, 40000, SS + 1, CS + 1, 0x18, line)),
                (t + 1.203, tcp_frame(S, 8080, C, 40000, SS + 1, CS + 1, 0x18, line)),
                (t + 1.204, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 1 + n, 0x10))]
    if kind == "mid-burst":   # three segments in one burst, the middle one sent again: its original's
        d = b"x" * 100        # time is not in the state (a burst keeps only its first byte's)
        return [*_handshake(t),
                (t + 0.030, tcp_frame(S, 8080, C, 40000, SS + 1, CS + 1, 0x10, d)),
                (t + 0.031, tcp_frame(S, 8080, C, 40000, SS + 101, CS + 1, 0x10, d)),
                (t + 0.032, tcp_frame(S, 8080, C, 40000, SS + 201, CS + 1, 0x18, d)),
                (t + 0.040, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 101, 0x10)),
                (t + 0.300, tcp_frame(S, 8080, C, 40000, SS + 101, CS + 1, 0x10, d)),
                (t + 0.301, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 301, 0x10))]
    if kind == "spurious":   # the line arrived and was acknowledged, yet sent again: it cost nothing
        return [*_handshake(t),
                (t + 0.03, tcp_frame(S, 8080, C, 40000, SS + 1, CS + 1, 0x18, line)),
                (t + 0.04, tcp_frame(C, 40000, S, 8080, CS + 1, SS + 1 + n, 0x10)),
                (t + 0.3, tcp_frame(S, 8080, C, 40000, SS + 1, CS + 1, 0x18, line))]
    raise ValueError(kind)


EXPECT = {  # kind: (retransmissions, cost ms or None, segments of unknown cost)
    "syn": (2, 3000.0, 0), "data-then-fin": (1, 210.0, 0), "two": (3, 1201.0, 0),
    "mid-burst": (1, None, 1), "spurious": (1, 0.0, 0),
}


def _tshark_rto(path: Path) -> list[float]:
    """tshark's tcp.analysis.rto of every retransmission: seconds since that segment's first copy."""
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "tcp.analysis.retransmission", "-T", "fields",
                          "-e", "tcp.analysis.rto"], capture_output=True, text=True, check=True).stdout
    return [float(x) for x in out.split()]


@pytest.mark.parametrize("kind", sorted(EXPECT))
def test_the_cost_of_each_story(tmp_path, kind):
    n, cost, unknown_n = EXPECT[kind]
    p = write_pcap(tmp_path / f"{kind}.pcap", _story(kind))
    for detail in (0, 8):                   # the same with and without the packets kept for ladders
        (conv,) = list(analyse_file(p, detail=detail).tcp())
        assert conv.retransmissions == n == sum(r.copies for r in conv.resent)
        assert conv.retransmission_ms == (None if cost is None else pytest.approx(cost, abs=0.01))
        assert unknown(conv.resent) == unknown_n
    s = summarise(analyse_file(p)).tcp
    assert (s.retransmitted, s.retransmission_unknown) == (1, unknown_n)
    assert s.retransmission_ms == pytest.approx(cost or 0.0, abs=0.01)


@pytest.mark.parametrize("kind", ["syn", "data-then-fin", "two"])
def test_each_segments_cost_is_tsharks_rto_of_its_last_copy(tmp_path, kind):
    require_tool("tshark", "apt-get install tshark")
    p = write_pcap(tmp_path / f"{kind}.pcap", _story(kind))
    (conv,) = list(analyse_file(p).tcp())
    rto = _tshark_rto(p)
    assert len(rto) == conv.retransmissions
    last_copies = sorted(round(r.cost_ms, 3) for r in conv.resent)
    assert last_copies == sorted(round(x * 1000, 3) for x in rto if round(x * 1000, 3) in last_copies)
    assert max(last_copies) == pytest.approx(max(rto) * 1000, abs=0.001)


def test_the_json_line_of_a_conversation_that_resent_explains_it(tmp_path):
    p = write_pcap(tmp_path / "d.pcap", _story("data-then-fin"))
    out = io.StringIO()
    write_json(analyse_file(p), out)
    doc = json.loads(out.getvalue())
    (line,) = doc["conversations"]
    assert line["resent"]["cost_ms"] == pytest.approx(210.0) and line["resent"]["unknown"] == 0
    (seg,) = line["resent"]["segments"]
    assert seg == {"from": "server", "seq": 1, "copies": 1, "first_ms": 30.0, "last_ms": 240.0,
                   "spurious": False, "bytes": 21, "cost_ms": 210.0}
    assert "the server's 21 bytes at seq 1 sent again once: 210.0 ms" in line["resent"]["explained"]
    assert "210.0 ms more than the clean exchange" in line["resent"]["explained"]
    assert doc["summary"]["tcp"]["retransmission_ms"] == pytest.approx(210.0)
    assert doc["summary"]["tcp"]["retransmitted_conversations"] == 1


def test_a_clean_conversation_has_no_resent_field(tmp_path):
    frames = _handshake(10.0)
    out = io.StringIO()
    write_json(analyse_file(write_pcap(tmp_path / "c.pcap", frames)), out)
    doc = json.loads(out.getvalue())
    assert "resent" not in doc["conversations"][0] and doc["summary"]["tcp"]["retransmission_ms"] == 0


def test_cost_is_the_union_of_the_intervals():
    def seg(a, z, spurious=False):
        return Resent(True, 0, 1, a, z, spurious)

    assert cost_ms([seg(0.0, 200.0), seg(100.0, 300.0)]) == 300.0        # overlapping: counted once
    assert cost_ms([seg(0.0, 200.0), seg(1000.0, 1100.0)]) == 300.0     # apart: added up
    assert cost_ms([seg(None, 50.0)]) is None and unknown([seg(None, 50.0)]) == 1
    assert cost_ms([seg(10.0, 50.0, spurious=True)]) == 0.0
    assert cost_ms([]) is None
    text = explain([Resent(True, 0, 2, 0.0, 3000.0, False)])
    assert text.startswith("2 retransmissions, 3000.0 ms more than the clean exchange")
    assert "the client's SYN sent again twice" in text
