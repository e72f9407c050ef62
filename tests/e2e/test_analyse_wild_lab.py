"""Captures from the wild, made in the real lab: IP fragments of a real large UDP datagram between two
namespaces, TCP keep-alives (TCP_KEEPIDLE of 1 s), a RST, and loss made by nftables; captured by
tcpdump on the server's lab interface and checked against tshark.

    LABCTL_REGEN_CORPUS=1 .venv/bin/python -m pytest tests/e2e/test_analyse_wild_lab.py
    # (that also refreshes tests/corpus/lab-wild.pcap)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_analyse_support import our_table, our_tcp_flags, sh, tcpdump, tshark_table, tshark_tcp_flags

from labctl.analyse import analyse_file
from tests.requires import require_tool

pytestmark = [pytest.mark.lab]

TRAFFIC = Path(__file__).with_name("wild_traffic.py")
CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def _loss(ns: str) -> None:
    """Every 10th segment of the bulk transfer is lost on its way into the client."""
    sh("nft", "add table inet lctwild", ns=ns)
    sh("nft", "add chain inet lctwild input { type filter hook input priority 0 ; }", ns=ns)
    sh("nft", "add rule inet lctwild input tcp sport 7004 meta length > 500 numgen inc mod 10 == 0 drop",
       ns=ns)


@pytest.fixture
def wild_capture(make_lab, tmp_path):
    for tool in ("tshark", "tcpdump", "nft", "ethtool"):
        require_tool(tool)
    lab = make_lab(clients=1)
    inventory = lab.up()
    server = next(h for h in inventory.hosts if h.role == "server")
    client = next(h for h in inventory.hosts if h.role == "client")
    sns, cns = f"{lab.name}-{server.name}", f"{lab.name}-{client.name}"
    for ns in (sns, cns):
        assert "default" not in sh("ip", "route", ns=ns).stdout          # isolated: no way out
        # frames as a NIC sends them (no segmentation offload), loss repaired the classic way
        sh("ethtool", "-K", server.lab_interface, "tso", "off", "gso", "off", "gro", "off", ns=ns,
           check=False)
        sh("sysctl", "-qw", "net.ipv4.tcp_sack=0", ns=ns)
    _loss(cns)
    path = tmp_path / "lab-wild.pcap"
    argv = ["ip", "netns", "exec", sns, sys.executable, str(TRAFFIC), "serve", server.address]
    serve = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert serve.stdout.readline().strip() == "ready"
        with tcpdump(server.lab_interface, path, "tcp or udp", netns=sns):
            out = subprocess.run(["ip", "netns", "exec", cns, sys.executable, str(TRAFFIC), "client",
                                  server.address], capture_output=True, text=True, timeout=120, check=True)
    finally:
        serve.stdin.close()
        serve.terminate()                  # by its pid
        serve.wait(10)
        sh("nft", "delete table inet lctwild", ns=cns, check=False)
    if os.environ.get("LABCTL_REGEN_CORPUS"):
        shutil.copy(path, CORPUS / "lab-wild.pcap")
    return path, json.loads(out.stdout), server.address


def test_lab_fragments_keepalives_rst_and_loss_agree_with_tshark(wild_capture):
    path, client, server = wild_capture
    assert client["udp_replies"] == [4000, 4000, 4000] and client["reset"] == "reset"
    assert client["bulk"] == 100_000
    a = analyse_file(path)
    ours, theirs = our_table(a), tshark_table(path)
    # every conversation as tshark has it; a reassembled datagram's bytes are all its fragments' frames
    assert Counter(k[:4] for k in ours.elements()) == Counter(k[:4] for k in theirs.elements())
    assert {k for k in ours if k[0] == "tcp"} == {k for k in theirs if k[0] == "tcp"}
    assert our_tcp_flags(a) == tshark_tcp_flags(path)
    (udp,) = [c for c in a.udp() if c.server == f"{server}:7001"]
    assert udp.unanswered == 0 and udp.server_payload == 3 * 4000 and udp.client_payload == 3020
    assert any("reassembled from" in w for w in a.warnings)
    tcp = {int(c.server.rsplit(":", 1)[1]): c for c in a.tcp()}
    keep, reset, bulk = tcp[7002], tcp[7003], tcp[7004]
    kas = int(subprocess.run(["tshark", "-r", str(path), "-Y", "tcp.analysis.keep_alive", "-T", "fields",
                              "-e", "frame.number"], capture_output=True, text=True).stdout.count("\n"))
    assert kas >= 2 and keep.dup_acks == 0 and keep.retransmissions == 0
    assert reset.rst >= 1 and reset.closed_by == "server (RST)" and reset.dup_acks == 0
    assert bulk.retransmissions >= 1 and bulk.server_payload == 100_000
    for c in a.conversations():
        assert 0 <= c.payload_bytes <= c.bytes


def test_capture_to_stdout_piped_into_analyse(make_lab):
    """`labctl capture -o - | labctl analyse -`: the pcap goes through the pipe, the report to stderr."""
    require_tool("tcpdump")
    lab = make_lab(clients=1)
    lab.up()
    repo = Path(__file__).resolve().parents[2]
    cap = subprocess.run(lab.cli_argv("capture", "--run", "udp", "-o", "-"), capture_output=True,
                         timeout=180, cwd=repo)
    assert cap.returncode == 0, cap.stderr.decode()
    assert cap.stdout[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1")
    assert b"tcpdump on" in cap.stderr
    r = subprocess.run([sys.executable, str(repo / "labctl.py"), "analyse", "-", "--json"], input=cap.stdout,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert doc["summary"]["file"] == "<stdin>" and doc["summary"]["udp"]["answered"] >= 1
