"""The live view and replays (capture --live, analyse --replay) on synthetic captures of two nodes."""
from __future__ import annotations

import io

from labctl.analyse.live import LiveView, replay, split_key
from labctl.analyse.pcap_stream import read_points
from tests.test_pcapng_write import write_two_nodes


def test_replay_prints_one_line_per_packet_when_not_a_terminal(tmp_path):
    path = tmp_path / "two.pcapng"
    write_two_nodes(path)
    points, linktypes, packets, names = read_points(path)
    out = io.StringIO()
    slept = []
    n = replay(packets, LiveView(out, points, names, terminal=False, linktypes=linktypes), speed=0.5,
               sleep=slept.append)
    lines = out.getvalue().splitlines()
    assert n == len(lines) == 16
    assert "client1/eth0" in lines[0] and "SYN seq=0" in lines[0]
    assert "server/eth0" in lines[1] and "SYN seq=0" in lines[1]
    assert "SYN-ACK seq=0 ack=1" in lines[2]
    assert "PSH-ACK seq=1 ack=1 len=21" in "".join(lines)
    assert slept and max(slept) < 0.01              # 30 µs apart at half speed: short sleeps


def test_a_packet_seen_at_both_ends_is_one_arrow_with_its_one_way_time(tmp_path):
    path = tmp_path / "two.pcapng"
    write_two_nodes(path)
    points, linktypes, packets, names = read_points(path)
    view = LiveView(io.StringIO(), points, names, terminal=True, linktypes=linktypes)
    view._start = lambda: None                        # draw on demand, without rich's refresh thread
    for index, pkt in packets:
        view.packet(index, pkt)
    (lane,) = view.lanes.values()
    assert len(lane.arrows) == 8 and lane.packets == 16
    first = view._arrow(lane.arrows[0])
    assert "SYN seq=0" in first and "@client1 → server 0.030 ms" in first
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160)
    console.print(view.render())
    drawn = console.file.getvalue()
    assert "client1 40000 ⇄ server 8080" in drawn and "16 packets" in drawn


def test_split_key():
    key = bytes([192, 168, 20, 3, 192, 168, 20, 2]) + (40000).to_bytes(2, "big") + (8080).to_bytes(2, "big")
    assert split_key(key) == ("192.168.20.3:40000", "192.168.20.2:8080")
