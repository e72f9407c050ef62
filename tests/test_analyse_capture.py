"""Analysis of real captures: real sockets, real tcpdump, checked against tshark.

The traffic runs on the loopback of a private network namespace (the host's lo is shared with other
work on this machine, whose bursts make tcpdump drop packets). Needs root, tcpdump and tshark.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from test_analyse_support import (
    assert_matches_tshark,
    lab_lock,
    netns,
    run_clients,
    servers,
    tcpdump,
)

from labctl.analyse import analyse_file
from labctl.analyse.json_report import write_json
from tests.requires import require_root, require_tool

PORTS = (8080, 8081, 8082)
CLOSED = 8083
N = 3


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """Three captures of the same traffic pattern: lo, lo with snaplen 80, and -i any (SLL2)."""
    require_root()
    for tool in ("tcpdump", "tshark", "ip"):
        require_tool(tool, "apt-get install iproute2" if tool == "ip" else "")
    d = tmp_path_factory.mktemp("cap")
    ns = f"lcta-lo-{os.getpid()}"
    results = {}
    with lab_lock(), netns(ns), servers(ns, "127.0.0.1", PORTS):
        for name, iface, snap in (("lo", "lo", 0), ("snap80", "lo", 80), ("any", "any", 0)):
            path = d / f"{name}.pcap"
            with tcpdump(iface, path, "tcp or udp or icmp", netns=ns, snaplen=snap):
                results[name] = (path, run_clients(ns, "127.0.0.1", PORTS, CLOSED, N))
    return results


def test_clean_loopback_matches_tshark(captures):
    path, clients = captures["lo"]
    assert clients["tcp"] == ["ok"] * N and clients["udp"] == ["ok"] * N
    a = analyse_file(path)
    assert_matches_tshark(path, a)
    tcp = list(a.tcp())
    udp = list(a.udp())
    assert len(tcp) == 2 * N + 1 and len(udp) == N + 1
    daytime = [c for c in tcp if c.server.endswith(":8080")]
    assert all(c.handshake and c.server_payload > 0 and c.retransmissions == 0 for c in daytime)
    assert all(c.closed_by == "server" for c in daytime)         # the server closes after the line
    (refused,) = [c for c in tcp if c.server.endswith(f":{CLOSED}")]
    assert refused.refused and refused.packets == 2
    answered = [c for c in udp if c.server.endswith(":8082")]
    assert all(c.packets == 2 and c.unanswered == 0 for c in answered)
    (lost,) = [c for c in udp if c.server.endswith(f":{CLOSED}")]
    assert lost.unanswered == 1 and lost.exchanges[0].note == "ICMP port unreachable"
    labels = [p.label for p in daytime[0].ladder]
    assert labels[:3] == ["SYN", "SYN-ACK", "ACK"] and "PSH-ACK" in labels and "FIN-ACK" in labels


def test_snaplen_cut_capture_still_counts_payload(captures):
    """-s 80 keeps the headers (TCP with timestamps: 66 bytes) and cuts the payload."""
    full, _ = captures["lo"]
    path, _ = captures["snap80"]
    a = analyse_file(path)
    assert_matches_tshark(path, a)
    assert a.info.snaplen == 80 and not a.warnings
    b = analyse_file(full)
    # same shape of traffic: payload is read from the IP header, not from the cut frame
    assert sorted(c.payload_bytes for c in a.tcp()) == sorted(c.payload_bytes for c in b.tcp())
    assert sorted(c.bytes for c in a.udp()) == sorted(c.bytes for c in b.udp())


def test_any_interface_sll2(captures):
    path, _ = captures["any"]
    a = analyse_file(path)
    assert a.linktype_names == ["Linux cooked v2 (SLL2)"]
    assert_matches_tshark(path, a)
    assert a.tcp_count == 2 * N + 1


def test_pcapng_from_editcap(captures, tmp_path):
    path, _ = captures["lo"]
    ng = tmp_path / "lo.pcapng"
    require_tool("editcap", "apt-get install tshark (editcap comes with it)")
    subprocess.run(["editcap", "-F", "pcapng", str(path), str(ng)], check=True, capture_output=True)
    a, b = analyse_file(path), analyse_file(ng)
    assert b.info.format == "pcapng"
    docs = []
    for analysis in (a, b):
        out = io.StringIO()
        write_json(analysis, out)
        docs.append(json.loads(out.getvalue())["conversations"])
    assert docs[0] == docs[1]
    assert_matches_tshark(ng, b)


def test_cli_text_report_on_real_capture(captures):
    path, _ = captures["lo"]
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([str(root / ".venv/bin/python"), str(root / "labctl.py"), "analyse", str(path),
                        "--ladders", "1"], capture_output=True, text=True, cwd=root, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SYN seq=0" in r.stdout and "TCP vs UDP in this capture" in r.stdout
