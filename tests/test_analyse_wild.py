"""Captures from the wild: the corpus in tests/corpus/, each checked against tshark, and the reader's
defences against what files nobody here wrote can hold (crafted records, streams, odd timestamps).

The corpus: ``crafted-*`` files are written by tests/corpus/make.py (one case each); ``lab-*`` files were
captured in the lab by tests/e2e/test_analyse_wild_lab.py, which also checks them live. For every
file, labctl's conversation table (protocol, endpoints, frames, bytes as tshark prints them) and its
TCP analysis counts (retransmissions, fast and spurious ones, out-of-order segments, duplicate ACKs)
must equal tshark's; the one documented difference is a reassembled datagram's bytes (all its
fragments' frames here, only the completing frame's in tshark).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from test_analyse_support import our_table, our_tcp_flags, tshark_table, tshark_tcp_flags

from labctl.analyse import CaptureFileError, analyse_file
from labctl.analyse.pcap import BLOCK, open_source
from tests.requires import require_tool

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).with_name("corpus")
FILES = sorted(p for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))
sys.path.insert(0, str(CORPUS))

from frames import ACK, PSH, A, B, eth, exchange, ip4, tcp, write_pcap  # noqa: E402


@pytest.fixture(scope="module")
def tshark() -> str:
    return require_tool("tshark", "apt-get install tshark")


def _analysis(name: str):
    return analyse_file(CORPUS / name)


def _possible(a) -> None:
    """No conversation reports a number that cannot be."""
    for c in a.conversations():
        assert 0 <= c.payload_bytes <= c.bytes, c
        assert c.client_payload + c.server_payload == c.payload_bytes, c
        assert 0 <= c.overhead_pct <= 100 and c.packets > 0 and c.duration_ms >= 0, c


# --- the corpus against tshark ----------------------------------------------------------------------

@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_corpus_agrees_with_tshark(path, tshark):
    a = analyse_file(path)
    ours, theirs = our_table(a), tshark_table(path)
    if a.builder.decoder.frags.reassembled:
        # a reassembled datagram counts once (as in tshark) but with the bytes of all its fragments
        assert Counter(k[:4] for k in ours.elements()) == Counter(k[:4] for k in theirs.elements())
        assert any("reassembled" in w and "Wireshark" in w for w in a.warnings)
    else:
        assert ours == theirs
    assert our_tcp_flags(a) == tshark_tcp_flags(path)
    _possible(a)


def test_corpus_covers_every_case():
    from make import CASES

    names = {p.name for p in FILES}
    assert all(any(n.startswith(f"crafted-{case}") for n in names) for case in
               ("time", "iplen", "tcp-keepalive", "tcp-rst", "tcp-spurious", "tcp-midflow", "ipv6-jumbo",
                "ipv6-routing", "fragments", "encapsulations", "linktype"))
    assert len(CASES) == len([n for n in names if n.startswith("crafted-")])


# --- what each crafted case must show --------------------------------------------------------------

def test_times_beyond_2106_and_before_1970():
    late = _analysis("crafted-time-after-2106.pcapng")
    early = _analysis("crafted-time-before-1970.pcapng")
    (t,) = list(late.tcp())
    assert t.start == pytest.approx((1 << 32) + 10_000_000) and t.rtt_ms == pytest.approx(2.0, abs=1e-3)
    (t,) = list(early.tcp())
    assert t.start == pytest.approx(1_000_000_000.5 - 2_000_000_000)
    assert t.duration_ms == pytest.approx(7.0, abs=1e-3)


def test_ip_length_beyond_the_frame_is_clamped_once():
    a = _analysis("crafted-iplen-beyond-frame.pcap")
    (t,) = list(a.tcp())
    (u,) = list(a.udp())
    assert t.retransmissions == 0 and t.client_payload == 40        # not 1,400: what the frame holds
    assert u.payload_bytes == 4
    assert "2 packet(s): IP total length larger than the frame: payload clamped to the frame" in a.warnings
    _possible(a)


def test_lengths_below_the_headers_are_malformed_and_counted():
    a = _analysis("crafted-iplen-below-headers.pcap")
    assert a.tcp_count == 1 and a.udp_count == 1
    assert a.builder.skipped == {"malformed header": 3}
    for what in ("IP total length smaller than its header", "TCP header longer than the segment",
                 "UDP length below 8"):
        assert f"1 packet(s): {what}" in a.warnings


def test_keepalives_and_their_acks_are_not_duplicate_acks():
    (t,) = list(_analysis("crafted-tcp-keepalive.pcap").tcp())
    assert (t.dup_acks, t.retransmissions, t.packets) == (0, 0, 12)


def test_a_rst_is_never_a_duplicate_ack():
    a = _analysis("crafted-tcp-rst.pcap")
    assert sum(c.dup_acks for c in a.tcp()) == 0
    assert [c.refused for c in a.tcp()] == [False, True]


def test_already_acknowledged_is_spurious_before_the_out_of_order_window():
    (t,) = list(_analysis("crafted-tcp-spurious.pcap").tcp())
    assert (t.spurious_retransmissions, t.out_of_order, t.retransmissions) == (1, 1, 2)


def test_duplicate_acks_of_a_capture_that_starts_mid_flow():
    (t,) = list(_analysis("crafted-tcp-midflow.pcap").tcp())
    assert (t.dup_acks, t.fast_retransmissions, t.out_of_order) == (3, 1, 0)


def test_summary_does_not_call_spurious_retransmissions_missing(tmp_path):
    from labctl.analyse.story import findings
    from labctl.analyse.summary import totals

    s = 40100
    seg = ip4(B, A, 6, tcp(80, s, 5001, 1001, PSH | ACK, b"d" * 100))
    ack = ip4(A, B, 6, tcp(s, 80, 1001, 5101, ACK))
    frames = [*exchange(1.0, s)[:3], (1.01, eth(seg)), (1.011, eth(ack)), (1.05, eth(seg))]
    a = analyse_file(write_pcap(tmp_path / "sp.pcap", frames))
    text = " ".join(findings(*totals(a.builder)))
    assert "went missing" not in text and "spurious" in text


def test_jumbogram_payload_is_the_jumbo_length():
    (t,) = list(_analysis("crafted-ipv6-jumbo.pcap").tcp())
    assert t.client_payload == 70_000 and t.overhead_pct < 1


def test_routing_header_conversation_is_with_the_final_destination():
    a = _analysis("crafted-ipv6-routing.pcap")
    servers = sorted(c.server for c in a.udp())
    assert servers == ["[2001:db8::99]:5002", "[2001:db8::99]:5004"]
    (first,) = [c for c in a.udp() if c.server.endswith(":5002")]
    assert first.packets == 2 and first.unanswered == 0       # the reply came from the final one


def test_fragments_are_reassembled_and_the_reply_counts():
    a = _analysis("crafted-fragments.pcap")
    v4, v6 = sorted(a.udp(), key=lambda c: len(c.client))
    assert (v4.packets, v4.unanswered, v4.server_payload) == (2, 0, 2992)
    assert v4.bytes == 43 + 3 * 14 + 3 * 20 + 3000            # the request and all three fragments
    assert (v6.packets, v6.unanswered, v6.server_payload) == (2, 0, 1992)
    assert a.builder.skipped == {"IP fragment of a datagram never completed": 1}
    assert any("1 IP fragment(s) of 1 datagram(s) never completed" in w for w in a.warnings)


def test_reassembly_gives_up_like_a_real_stack():
    from labctl.analyse.fragments import MAX_HELD, Reassembler

    r = Reassembler()
    assert r.add((4, b"a", b"b", 1, 17), 100, 4, 0, b"x" * 1480, False, 1514) is None
    assert r.add((4, b"a", b"b", 2, 17), 131, 4, 0, b"y" * 1480, False, 1514) is None   # 31 s later
    assert r.lost["timeout"] == 1 and list(r.pending) == [(4, b"a", b"b", 2, 17)]
    six = (6, b"a", b"b", 3)
    r.add(six, 131, 6, 0, b"z" * 1232, False, 1294)
    r.add((4, b"c", b"d", 4, 17), 185, 4, 0, b"w" * 8, False, 62)   # 54 s: IPv4 gone, IPv6 kept
    assert six in r.pending and r.lost["timeout"] == 2
    d = r.add(six, 185, 6, 1232, b"z" * 100, True, 162)         # overlapping pieces complete it
    assert d is not None and bytes(d.data) == b"z" * 1332 and d.frames == 2 and d.wire == 1456
    small = Reassembler(max_held=10_000)
    for i in range(20):                                         # never more than the bound held
        small.add((4, b"e", b"f", i, 17), 1, 4, 0, b"v" * 1480, False, 1514)
        assert small.held <= 10_000
    assert small.lost["memory"] >= 13 and MAX_HELD == 4 << 20
    r.add((4, b"g", b"h", 9, 17), 190, 4, 65528, b"u" * 16, True, 50)  # beyond 64 KiB: malformed
    assert r.lost["malformed"] == 1
    r.finish()
    assert not r.pending and r.lost["end"] >= 1 and r.held == 0


def test_encapsulations_are_decoded_to_their_inner_flows():
    a = _analysis("crafted-encapsulations.pcap")
    tcp_ports = sorted(int(c.client.rsplit(":", 1)[1]) for c in a.tcp())
    assert tcp_ports == [41000, 41010, 41020, 41030, 41040, 41050, 41060, 41070]
    assert all(c.handshake and c.server_payload == 21 for c in a.tcp())
    tunnels = [c for c in a.udp() if c.server.endswith((":4789", ":6081"))]
    assert len(tunnels) == 2 and all(c.packets == 10 for c in tunnels)   # VXLAN, Geneve: outer UDP too
    assert a.builder.skipped == {"not IP: MACsec (encrypted)": 1}
    assert a.bytes == sum(len(fr) for fr in _frames_of(CORPUS / "crafted-encapsulations.pcap"))


def _frames_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    o, out = 24, []
    while o < len(data):
        incl = struct.unpack_from("<I", data, o + 8)[0]
        out.append(data[o + 16:o + 16 + incl])
        o += 16 + incl
    return out


@pytest.mark.parametrize("name,linktype", [("crafted-linktype-fcs.pcap", "Ethernet"),
                                           ("crafted-linktype-ppp.pcap", "PPP"),
                                           ("crafted-linktype-nflog.pcap", "Linux NFLOG"),
                                           ("crafted-linktype-ipoib.pcap", "IP over InfiniBand"),
                                           ("crafted-linktype-radiotap.pcap", "802.11 with radiotap header")])
def test_link_types(name, linktype):
    a = _analysis(name)
    assert a.linktype_names == [linktype]
    assert a.tcp_count == 1 and a.udp_count == 1 and not a.builder.skipped


def test_a_link_type_without_ip_is_named():
    from labctl.analyse.linktypes import linktype_name

    assert linktype_name(189) == "USB (Linux)" and linktype_name(60000) == "link type 60000"


# --- crafted records: refused at once, with the record's number -------------------------------------

class _Counting:
    """A file object that counts what was read from it."""

    def __init__(self, data: bytes) -> None:
        import io

        self.f = io.BytesIO(data)
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.read_bytes += len(b)
        return b

    def close(self) -> None:
        pass


def _read_all(data: bytes) -> tuple[int, object]:
    from labctl.analyse.pcap import Source

    src = _Counting(data)
    try:
        analyse_file(Source(src, "crafted", stream=True))
    except CaptureFileError as exc:
        return src.read_bytes, exc
    return src.read_bytes, None


def test_a_record_claiming_4_gb_is_refused_at_once():
    good = b"".join(struct.pack("<IIII", 1, 0, len(fr), len(fr)) + fr for _, fr in exchange(1.0)[:2])
    bad = struct.pack("<IIII", 1, 0, 0xFFFFFF00, 0xFFFFFF00) + bytes(3 * BLOCK)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    read, exc = _read_all(header + good + bad)
    assert isinstance(exc, CaptureFileError)
    assert "packet 3 claims 4,294,967,040 captured bytes" in str(exc)
    assert read <= 24 + BLOCK     # one block: nothing was buffered waiting for the 4 GB


def test_a_record_longer_than_any_tool_writes_is_refused_where_it_is(tmp_path):
    recs = [struct.pack("<IIII", 1, 0, len(fr), len(fr)) + fr for _, fr in exchange(1.0)]
    bad = struct.pack("<IIII", 1, 0, 300_000, 300_000) + bytes(300_000)     # fits the block, not the file
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    p = tmp_path / "mid.pcap"
    p.write_bytes(header + b"".join(recs[:4]) + bad + b"".join(recs[4:]))
    with pytest.raises(CaptureFileError, match="packet 5 claims 300,000 captured bytes"):
        analyse_file(p)


def test_pcapng_blocks_that_lie_about_their_length_are_refused():
    from frames import _block

    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(1, struct.pack("<HHI", 1, 0, 0))
    epb = _block(6, struct.pack("<IIIII", 0, 0, 0, 5000, 5000) + bytes(8))   # claims 5000, holds 8
    read, exc = _read_all(shb + idb + epb)
    assert "packet 1" in str(exc) and "more than its block holds" in str(exc)
    huge = struct.pack("<II", 6, 1 << 30) + bytes(64)
    read, exc = _read_all(shb + idb + huge)
    assert "claims 1,073,741,824 bytes" in str(exc) and read < 1 << 20


@pytest.mark.parametrize("head,match", [
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 4, 0, 0, 65535, 1), "pcap version 1.4"),
    (b"\x1f\x8b\x08\x00" + bytes(20), "gzip"),
    (struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1), "modified pcap"),
])
def test_files_tshark_refuses_are_refused_clearly(tmp_path, head, match):
    p = tmp_path / "x.pcap"
    p.write_bytes(head + bytes(32))
    with pytest.raises(CaptureFileError, match=match):
        analyse_file(p)


# --- streams: standard input, FIFOs; what is neither ------------------------------------------------

def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "labctl.py"), "analyse", *args], capture_output=True,
                          cwd=ROOT, timeout=60, **kw)


def test_standard_input_is_read_as_a_stream():
    path = CORPUS / "crafted-encapsulations.pcap"
    from_file = json.loads(_cli(str(path), "--json").stdout)
    piped = _cli("-", "--json", "--jobs", "2", input=path.read_bytes())
    assert piped.returncode == 0, piped.stderr
    doc = json.loads(piped.stdout)
    assert doc["conversations"] == from_file["conversations"] and doc["summary"]["file"] == "<stdin>"


def test_a_fifo_waits_for_its_writer_and_says_so(tmp_path):
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, str(ROOT / "labctl.py"), "analyse", str(fifo), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        line = proc.stderr.readline().decode()
        assert "is a FIFO with nothing written into it yet: waiting for a writer" in line
        data = (CORPUS / "crafted-tcp-rst.pcap").read_bytes()
        writer = threading.Thread(target=lambda: fifo.write_bytes(data))
        writer.start()
        out, _ = proc.communicate(timeout=60)
        writer.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and len(json.loads(out)["conversations"]) == 2


def test_what_is_neither_a_file_nor_a_pipe_is_refused():
    r = _cli("/dev/zero")
    assert r.returncode != 0 and b"is a character device, not a capture" in r.stderr
    with pytest.raises(CaptureFileError, match="directory"):
        open_source(CORPUS)


# --- the terminal ladder past 100,000 ms -------------------------------------------------------------

def test_ladder_time_column_holds_long_conversations(tmp_path):
    import io

    from labctl.analyse import render_terminal

    s = 40200
    frames = [*exchange(1.0, s)[:3]]
    for i in range(4):                  # data every 60 s: the last rows are past 100,000 ms
        t = 60.0 * (i + 1)
        frames += [(t, eth(ip4(A, B, 6, tcp(s, 80, 1001 + i, 5001, PSH | ACK, b"x")))),
                   (t + 0.001, eth(ip4(B, A, 6, tcp(80, s, 5001, 1002 + i, ACK))))]
    out = io.StringIO()
    render_terminal(analyse_file(write_pcap(tmp_path / "long.pcap", frames)), out=out, ladders=1, width=200)
    rows = [ln for ln in out.getvalue().splitlines() if "▶" in ln or "◀" in ln]
    assert any(r.startswith("239001.000") for r in rows)
    lanes = {tuple(i for i, ch in enumerate(r) if ch == "│") for r in rows if "│" in r}
    starts = {r.index("─") - 1 if "▶" in r else r.index("◀") - 1 for r in rows}
    assert len(starts) == 1 and len(lanes) <= 1      # every arrow leaves the same lane column


# --- a fuzz of the reader ---------------------------------------------------------------------------

def _fuzz_one(data: bytes) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        _read_all(data)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 40 * len(data) + (16 << 20)    # memory bounded by the input, never by what it claims


def test_fuzz_arbitrary_bytes_after_a_valid_header():
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    from frames import _block

    ng = (_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
          + _block(1, struct.pack("<HHI", 1, 0, 0)))
    good = b"".join(struct.pack("<IIII", 1, 0, len(fr), len(fr)) + fr for _, fr in exchange(1.0))

    @hyp.settings(max_examples=300, deadline=2000, derandomize=True,
                  suppress_health_check=[hyp.HealthCheck.too_slow])
    @hyp.given(head=st.sampled_from([pcap, ng, pcap + good]), tail=st.binary(max_size=4096),
               cut=st.integers(0, len(good)))
    def run(head: bytes, tail: bytes, cut: int) -> None:
        _fuzz_one(head + tail)
        _fuzz_one(pcap + good[:cut] + tail)
        _fuzz_one(head + bytes(tail[i] & 0x0F for i in range(len(tail))))   # small lengths, more blocks

    run()
