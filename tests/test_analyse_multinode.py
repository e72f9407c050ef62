"""Several capture points as one analysis: synthetic pcapng (one interface per node) and pcap pairs."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from labctl.analyse import analyse_file, summarise, terminal
from labctl.analyse.json_report import write_json
from labctl.analyse.multinode import analyse_captures
from labctl.analyse.pcapng_write import Interface, file_header, packet_block
from labctl.analyse.points import count_points
from labctl.analyse.svg import conversation_svg
from tests.pcapwrite import (
    eth,
    ipv4,
    record,
    tcp,
    tcp_daytime,
    udp_frame,
    write_pcap,
)
from tests.pcapwrite import (
    global_header as pcap_header,
)
from tests.requires import require_tool

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_764_064_800.5
SERVER, CLIENT = "10.0.0.2", "10.0.0.3"
NODES = [Interface("server", "eth0", SERVER), Interface("client1", "eth0", CLIENT)]
HOP_NS = 30_000      # one-way time on the synthetic wire


def write_points(path: Path, sightings: list[tuple[int, int, bytes]], ifaces=NODES) -> Path:
    """A pcapng of (interface, ns, frame) sightings, merged in time order as labctl capture writes it."""
    with path.open("wb") as f:
        f.write(file_header(ifaces))
        for i, ns, frame in sorted(sightings, key=lambda s: s[1]):
            f.write(packet_block(i, ns, frame))
    return path


def daytime_sightings(lose: set[int] = frozenset(), hop_ns: int = HOP_NS) -> list[tuple[int, int, bytes]]:
    """The exercise's TCP exchange seen at both ends; the packets numbered in ``lose`` only at their
    sender (0 SYN, 1 SYN-ACK, 3 the server's data, ...)."""
    out = []
    for n, (ts, frame) in enumerate(tcp_daytime(CLIENT, 40000, SERVER, 8080, T0)):
        ns = round(ts * 1e9)
        sender, receiver = (1, 0) if n % 2 == 0 else (0, 1)
        out.append((sender, ns, frame))
        if n not in lose:
            out.append((receiver, ns + hop_ns, frame))
    return out


def test_each_packet_counts_once_and_crossings_are_measured(tmp_path):
    path = write_points(tmp_path / "both.pcapng", daytime_sightings())
    assert count_points(path) == 2
    a = analyse_captures([path])
    assert a.packets == 8        # distinct packets, not the 16 sightings
    (conv,) = list(a.tcp())
    assert conv.packets == 8 and conv.retransmissions == 0 and conv.dup_acks == 0 and conv.handshake
    assert (conv.client_node, conv.server_node) == ("client1", "server")
    cr = conv.crossings
    assert cr.to_server.packets == 4 and cr.to_client.packets == 4 and not cr.lost
    assert abs(cr.to_server.median_ms - HOP_NS / 1e6) < 1e-9
    assert cr.seen_at == ["server/eth0", "client1/eth0"] and cr.files == [str(path)]
    syn = conv.ladder[0]
    assert syn.label == "SYN" and abs(syn.one_way_ms - 0.03) < 1e-6
    report = a.multi.report()
    assert [p.packets for p in report.points] == [8, 8] and report.sightings == 16
    assert report.sent == 8 and report.arrived == 8 and report.lost == 0
    assert set(report.hops) == {"client1 → server", "server → client1"}


def test_a_lost_packet_is_named_where_it_was_last_seen(tmp_path):
    path = write_points(tmp_path / "lost.pcapng", daytime_sightings(lose={1}))   # the SYN-ACK
    a = analyse_captures([path])
    (conv,) = list(a.tcp())
    (lost,) = conv.crossings.lost
    assert lost.text == "SYN-ACK left server at 0.100 ms, never reached client1"
    synack = conv.ladder[1]
    assert synack.lost_to == "client1" and synack.arrive_ms is None
    summary = summarise(a)
    out = io.StringIO()
    terminal.render(summary, out=out, ladders=1, width=200)
    text = out.getvalue()
    assert "✗ never reached client1" in text
    assert "SYN-ACK left server at 0.100 ms, never reached client1" in text
    assert "capture point client1/eth0 (client1 10.0.0.3" in text
    svg = conversation_svg(conv)
    assert "✗" in svg and 'stroke-dasharray="7 4"' in svg
    assert sum("marker-end" in seg for seg in svg.split("<line")) == 7     # 7 arrows and one stub
    doc = io.StringIO()
    write_json(a, doc)
    j = json.loads(doc.getvalue())
    (line,) = [c for c in j["conversations"] if c["proto"] == "tcp"]
    assert line["lost"][0]["packet"] == "SYN-ACK" and line["lost"][0]["to"] == "client1"
    assert line["one_way_ms"]["to_server"]["packets"] == 4 and line["files"] == [str(path)]
    nodes = j["summary"]["nodes"]
    assert nodes["lost"] == 1 and nodes["lost_packets"][0]["last_seen"] == "server"
    assert [p["packets"] for p in nodes["capture_points"]] == [8, 7]


def test_svg_slants_an_arrow_by_its_one_way_time(tmp_path):
    path = write_points(tmp_path / "slow.pcapng", daytime_sightings(hop_ns=60_000))
    (conv,) = list(analyse_captures([path]).tcp())
    svg = conversation_svg(conv)
    arrows = [seg for seg in svg.split("<line")[1:] if "marker-end" in seg]
    y1 = [float(seg.split('y1="')[1].split('"')[0]) for seg in arrows]
    y2 = [float(seg.split('y2="')[1].split('"')[0]) for seg in arrows]
    assert len(arrows) == 8
    # 0.06 ms of the 0.1 ms between rows (34 px): the arrow ends ~20 px lower than it starts
    assert all(18 < b - a < 23 for a, b in zip(y1, y2))


def test_a_routed_packet_matches_despite_ttl_checksum_and_macs(tmp_path):
    ip = ipv4(CLIENT, SERVER, 6, tcp(40000, 8080, 1000, 0, 0x02), ident=77)
    routed = bytearray(ip)
    routed[8] -= 1                      # TTL
    routed[10:12] = b"\x12\x34"          # header checksum
    frame_b = b"\x02\x00\x00\x00\x00\x09" + b"\x02\x00\x00\x00\x00\x08" + b"\x08\x00" + bytes(routed)
    ns = round(T0 * 1e9)
    path = write_points(tmp_path / "routed.pcapng", [(1, ns, eth(ip)), (0, ns + 50_000, frame_b)])
    a = analyse_captures([path])
    assert a.packets == 1
    (conv,) = list(a.tcp())
    assert conv.crossings.to_server.packets == 1 and abs(conv.crossings.to_server.median_ms - 0.05) < 1e-9
    other = bytearray(routed)
    other[4:6] = b"\x00\x4e"             # another IP ID: another packet
    path = write_points(tmp_path / "two.pcapng", [(1, ns, eth(ip)), (0, ns + 50_000, eth(bytes(other)))])
    assert analyse_captures([path]).packets == 2


def test_the_same_datagram_sent_twice_pairs_in_order(tmp_path):
    ask = udp_frame(CLIENT, 50000, SERVER, 8081, b"GET TIME\n")   # IP ID 0 both times: same bytes
    ns = round(T0 * 1e9)
    s = [(1, ns, ask), (0, ns + 40_000, ask), (1, ns + 1_000_000, ask)]   # the second one lost
    a = analyse_captures([write_points(tmp_path / "udp.pcapng", s)])
    (conv,) = list(a.udp())
    assert conv.packets == 2
    assert conv.crossings.to_server.packets == 1 and len(conv.crossings.lost) == 1
    assert conv.crossings.lost[0].text == "UDP len=9 left client1 at 1.000 ms, never reached server"


def test_several_pcap_files_are_one_analysis_and_say_where_each_conversation_came_from(tmp_path):
    frames = tcp_daytime(CLIENT, 40000, SERVER, 8080, T0)
    other = tcp_daytime("10.0.0.4", 40001, SERVER, 8080, T0 + 0.01)
    client = write_pcap(tmp_path / "client1.pcap", frames)
    server = tmp_path / "server.pcap"
    with server.open("wb") as f:        # the server saw both clients, 20 µs after they sent
        f.write(pcap_header())
        for ts, fr in sorted([(ts + 2e-5, fr) for ts, fr in frames] + list(other)):
            f.write(record(ts, fr))
    a = analyse_captures([client, server])
    assert a.packets == 16 and a.tcp_count == 2
    points = a.multi.points
    assert [(p.node, p.address) for p in points] == [("client1", CLIENT), ("server", SERVER)]
    doc = io.StringIO()
    write_json(a, doc)
    convs = {c["client"]: c for c in json.loads(doc.getvalue())["conversations"]}
    assert convs[f"{CLIENT}:40000"]["files"] == [str(client), str(server)]
    assert convs["10.0.0.4:40001"]["files"] == [str(server)]
    assert convs[f"{CLIENT}:40000"]["one_way_ms"]["to_server"]["packets"] == 4
    assert convs["10.0.0.4:40001"]["one_way_ms"]["to_server"]["packets"] == 0
    assert convs[f"{CLIENT}:40000"]["retransmissions"] == 0


def test_single_interface_pcapng_is_analysed_as_before(tmp_path):
    frames = tcp_daytime(CLIENT, 40000, SERVER, 8080, T0)
    path = write_points(tmp_path / "one.pcapng", [(0, round(ts * 1e9), f) for ts, f in frames], NODES[:1])
    assert count_points(path) == 1
    r = _cli("analyse", str(path), "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert "nodes" not in j["summary"] and "files" not in j["conversations"][0]
    assert j["summary"]["packets"] == analyse_file(path).packets == 8


def test_cli_reads_several_files_and_refuses_stdin_among_them(tmp_path):
    path = write_points(tmp_path / "lost.pcapng", daytime_sightings(lose={3}))
    r = _cli("analyse", str(path), "--ladders", "1")
    assert r.returncode == 0, r.stderr
    assert "PSH-ACK len=21 left server at 0.300 ms, never reached client1" in r.stdout
    assert "Between the nodes" in r.stdout
    r = _cli("analyse", str(path), "-")
    assert r.returncode != 0 and "standard input ('-') can only be analysed alone" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("analyse", str(path), str(tmp_path / "missing.pcap"))
    assert r.returncode != 0 and "missing.pcap: no such file" in r.stderr and "Traceback" not in r.stderr
    html = tmp_path / "r.html"
    r = _cli("analyse", str(path), str(path), "--html", str(html))
    assert r.returncode == 0, r.stderr
    text = html.read_text()
    assert "Between the nodes" in text and "never reached client1" in text


def test_per_interface_counts_match_tshark(tmp_path):
    tshark = require_tool("tshark", "apt-get install tshark")
    path = write_points(tmp_path / "lost.pcapng", daytime_sightings(lose={1, 3}))
    rows = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.interface_name",
                           "-e", "frame.len"], capture_output=True, text=True, check=True).stdout.splitlines()
    counted: dict[str, list[int]] = {}
    for row in rows:
        name, length = row.split("\t")
        counted.setdefault(name, []).append(int(length))
    a = analyse_captures([path])
    assert {p.name: (p.packets, p.bytes) for p in a.multi.points} == {
        n: (len(v), sum(v)) for n, v in counted.items()}


def test_a_cut_pcapng_says_so(tmp_path):
    path = write_points(tmp_path / "cut.pcapng", daytime_sightings())
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    a = analyse_captures([path])
    assert any("ends in the middle of a pcapng block" in w for w in a.warnings)
    assert sum(p.packets for p in a.multi.points) == 15


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "labctl.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)



def test_a_stream_of_several_nodes_on_standard_input_is_matched_too(tmp_path):
    path = write_points(tmp_path / "lost.pcapng", daytime_sightings(lose={1}))
    r = subprocess.run([sys.executable, str(ROOT / "labctl.py"), "analyse", "-", "--json"], cwd=ROOT,
                       input=path.read_bytes(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["summary"]["packets"] == 8 and j["summary"]["nodes"]["lost"] == 1
    assert j["conversations"][0]["files"] == ["<stdin>"]
    plain = write_pcap(tmp_path / "one.pcap", tcp_daytime(CLIENT, 40000, SERVER, 8080, T0))
    r = subprocess.run([sys.executable, str(ROOT / "labctl.py"), "analyse", "-", "--json"], cwd=ROOT,
                       input=plain.read_bytes(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["summary"]["packets"] == 8 and "nodes" not in j["summary"]
