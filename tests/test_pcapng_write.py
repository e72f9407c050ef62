"""The pcapng writer and the incremental pcap stream parser, checked against tshark and labctl's reader."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from labctl.analyse import analyse_file
from labctl.analyse.pcap import CaptureFileError
from labctl.analyse.pcap_stream import PcapStream
from labctl.analyse.pcapng_write import Interface, file_header, packet_block, statistics_block
from tests.pcapwrite import global_header, record, tcp_daytime
from tests.requires import require_tool


def test_stream_parser_gets_every_packet_whatever_the_cut():
    frames = tcp_daytime("10.0.0.3", 40000, "10.0.0.2", 8080, 1_764_064_800.5)
    data = global_header() + b"".join(record(ts, f) for ts, f in frames)
    for step in (1, 7, 16, 100, len(data)):
        s = PcapStream()
        got = []
        for i in range(0, len(data), step):
            got += s.feed(data[i:i + step])
        assert [p.frame for p in got] == [f for _, f in frames]
        assert s.pending == 0 and s.packets == 8 and s.record_end == len(data) and s.linktype == 1
        assert got[0].ts_ns == 1_764_064_800_500_000_000
    s = PcapStream()
    s.feed(data[:-5])
    assert s.packets == 7 and s.pending == 16 + len(frames[-1][1]) - 5
    with pytest.raises(CaptureFileError, match="not pcap"):
        PcapStream().feed(b"GARBAGE!" * 4)


def test_nanosecond_pcap_stream():
    head = global_header(nanos=True)
    rec = (1).to_bytes(4, "little") + (123456789).to_bytes(4, "little") + (4).to_bytes(4, "little") * 2
    (pkt,) = PcapStream().feed(head + rec + b"abcd")
    assert pkt.ts_ns == 1_123_456_789 and pkt.frame == b"abcd"


def write_two_nodes(path: Path) -> None:
    ifaces = [Interface("server", "eth0", "192.168.20.2", comment="clock: this machine's"),
              Interface("client1", "eth0", "192.168.20.3")]
    frames = tcp_daytime("192.168.20.3", 40000, "192.168.20.2", 8080, 1_764_064_800.0)
    with path.open("wb") as f:
        f.write(file_header(ifaces))
        for ts, frame in frames:
            ns = round(ts * 1e9)
            f.write(packet_block(1, ns, frame))          # client1 sees it ...
            f.write(packet_block(0, ns + 30_000, frame))  # ... and the server 30 µs later
        f.write(statistics_block(0, 1_764_064_801 * 10**9, received=8, dropped=0))
        f.write(statistics_block(1, 1_764_064_801 * 10**9, received=8, dropped=0))


def test_pcapng_opens_in_tshark_with_named_interfaces(tmp_path):
    tshark = require_tool("tshark")
    path = tmp_path / "two.pcapng"
    write_two_nodes(path)
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.interface_name",
                          "-e", "frame.interface_description", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert len(out) == 16
    names = [line.split("\t")[0] for line in out]
    assert names.count("server/eth0") == 8 and names.count("client1/eth0") == 8
    assert {line.split("\t")[1] for line in out} == {"server 192.168.20.2", "client1 192.168.20.3"}
    first, second = (float(line.split("\t")[2]) for line in out[:2])
    assert abs((second - first) - 30e-6) < 1e-7   # nanosecond timestamps survive
    assert analyse_file(path).packets == 16
