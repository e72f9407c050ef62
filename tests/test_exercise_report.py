"""The exercise's renderers (timeline, textbook ladder, lab drawing, report) on a real example capture."""
from __future__ import annotations

import shutil
from pathlib import Path

from labctl.analyse import analyse_file, summarise
from labctl.analyse.exercise_report import render_report
from labctl.analyse.labdrawing import lab_svg
from labctl.analyse.textbook import TCP_TEXTBOOK, differences, late_clients, textbook_conversation
from labctl.analyse.timeline import marks, spread_ms, timeline_svg

EXAMPLES = Path(__file__).resolve().parents[1] / "labctl" / "analyse" / "examples"
PCAP = EXAMPLES / "tcp-vs-udp.pcap"
LOSSY = EXAMPLES / "tcp-vs-udp-lossy.pcap"


def test_timeline_draws_every_packet_on_its_lane_and_the_server_lane():
    analysis = analyse_file(PCAP)
    convs = [c for c in analysis.conversations() if c.ladder is not None]
    n = sum(len(c.ladder) for c in convs)
    svg = timeline_svg(analysis, {"10.231.0.2": "client1"}, "t")
    assert svg.count("<polygon") == 2 * n == 2 * len(marks(convs))
    assert "client1" in svg and "▲ client → server" in svg
    times = [m.t for m in marks(convs)]
    assert times == sorted(times)


def test_spread_is_first_to_last_client_first_packet():
    analysis = analyse_file(PCAP)
    convs = list(analysis.conversations())
    assert spread_ms(convs) is None   # one client address in this capture
    a, b = convs[0], convs[1]
    b.client = "10.9.9.9:1"
    assert spread_ms([a, b]) == abs(b.start - a.start) * 1000.0


def test_textbook_differences_name_the_fin_with_the_data_or_the_separate_packets():
    analysis = analyse_file(PCAP)
    tcp = summarise(analysis).shown("tcp", 1)[0]
    book = textbook_conversation(tcp)
    assert [p.label for p in book.ladder] == [p.label for p in TCP_TEXTBOOK] and book.retransmissions == 0
    said = " ".join(differences(tcp))
    assert f"this conversation took {len(tcp.ladder)}" in said
    assert "handshake took" in said


def test_textbook_differences_point_out_a_retransmission_under_loss():
    analysis = analyse_file(LOSSY)
    lost = [c for c in analysis.tcp() if c.retransmissions and c.ladder]
    assert lost
    assert any("sent again (retransmission)" in s for s in differences(lost[0]))


def test_lab_drawing_names_every_node():
    lab = {"name": "x", "backend": "netns", "subnet": "10.0.0.0/24", "ports": {"tcp": 8080, "proto": 8081},
           "nodes": [{"name": "server", "role": "server", "address": "10.0.0.2",
                      "programs": ["timeserver.py"]},
                     {"name": "client1", "role": "client", "address": "10.0.0.3",
                      "programs": ["timeclient.py"]}]}
    svg = lab_svg(lab)
    for text in ("server (server)", "client1 (client)", "10.0.0.3", "timeserver.py", "netns backend"):
        assert text in svg


def test_report_marks_a_failed_hour_and_keeps_the_others(tmp_path):
    shutil.copy(PCAP, tmp_path / "tcp.pcap")
    data = {"ok": False, "lab": {}, "commands": ["labctl exercise"], "hours": [
        {"protocol": "tcp", "title": "First hour", "ok": True, "pcap": "tcp.pcap", "seconds": 1.0,
         "failures": [], "run": None, "capture": None},
        {"protocol": "udp", "title": "Second hour", "ok": False, "pcap": None, "seconds": 1.0,
         "failures": ["client1: no reply"], "run": None, "capture": None}]}
    html = render_report(data, tmp_path)
    assert "something FAILED" in html and "client1: no reply" in html
    assert html.count('class="timeline"') == 1 and "No capture for this hour" in html
    assert "<script" not in html


def test_a_client_whose_first_packet_came_a_second_late_is_explained():
    analysis = analyse_file(PCAP)
    a, b = list(analysis.tcp())[:2]
    b.client, b.start = "10.9.9.9:1", a.start + 1.012
    said = late_clients([a, b], {"10.9.9.9": "client3"})
    assert len(said) == 1 and said[0].startswith("client3's first packet reached the server 1012 ms")
    assert "SYN was most likely lost" in said[0]
    assert late_clients([a]) == []
