"""A lossy run on real Ethernet frames: two namespaces joined by a veth, nftables dropping packets.

Server namespace: drops every third UDP request on input (those requests show in the capture, which
sees frames before the firewall, but never get an answer). Client namespace: drops every other TCP
data segment from the server, so the server retransmits. SACK is off in both namespaces so the loss
is repaired the classic way (duplicate ACK / timer) rather than within microseconds. tcpdump runs in
the server namespace on its veth, as in the exercise ("start TCPDump on your server machine").
Checked against tshark; the HTML report is opened in headless Chromium.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_analyse_support import (
    assert_matches_tshark,
    netns,
    run_clients,
    servers,
    sh,
    tcpdump,
    tshark_count,
    veth_pair,
)

from labctl.analyse import analyse_file
from tests.requires import require_root, require_tool

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PORTS = (8080, 8081, 8082)
CLOSED = 8083
N = 6
SERVER, CLIENT = "10.231.0.1", "10.231.0.2"


def _firewall(ns: str, rule: str) -> None:
    sh("nft", "add table inet lcta", ns=ns)
    sh("nft", "add chain inet lcta input { type filter hook input priority 0 ; }", ns=ns)
    sh("nft", f"add rule inet lcta input {rule}", ns=ns)


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    import fcntl

    require_root()
    for tool, package in (("tcpdump", "tcpdump"), ("tshark", "tshark"), ("nft", "nftables"),
                          ("ip", "iproute2")):
        require_tool(tool, f"apt-get install {package}")
    d = tmp_path_factory.mktemp("lossy")
    path = d / "lossy.pcap"
    pid = os.getpid()
    sns, cns = f"lcta-s-{pid}", f"lcta-c-{pid}"
    with open("/run/labctl-test.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with netns(sns, cns), veth_pair(sns, cns, f"lcta{pid % 100000}") as (sif, _cif):
                for ns in (sns, cns):
                    sh("sysctl", "-qw", "net.ipv4.tcp_sack=0", ns=ns)
                    assert "default" not in sh("ip", "route", ns=ns).stdout   # isolated
                _firewall(sns, f"udp dport {PORTS[2]} numgen inc mod 3 == 0 drop")
                _firewall(cns, "tcp sport { 8080, 8081 } tcp flags & psh == psh numgen inc mod 2 == 0 drop")
                with servers(sns, SERVER, PORTS), tcpdump(sif, path, netns=sns):
                    clients = run_clients(cns, SERVER, PORTS, CLOSED, N)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    leftovers = [n for n in sh("ip", "netns", "list").stdout.split() if n in (sns, cns)]
    assert not leftovers
    return path, clients


def test_lossy_run_matches_tshark(lossy):
    path, clients = lossy
    a = analyse_file(path)
    assert a.linktype_names == ["Ethernet"]
    assert_matches_tshark(path, a)
    tcp = list(a.tcp())
    assert sum(c.retransmissions for c in tcp) >= N // 2
    assert sum(c.retransmissions for c in tcp) == tshark_count(path, "tcp.analysis.retransmission")
    assert sum(c.dup_acks for c in tcp) == tshark_count(path, "tcp.analysis.duplicate_ack")
    # TCP repaired every loss: every TCP client got its time
    assert clients["tcp"] == ["ok"] * N and clients["req"] == ["ok"] * N
    served = [c for c in tcp if c.server.endswith((":8080", ":8081"))]
    assert len(served) == 2 * N and all(c.got_answer for c in served)
    # UDP did not: the requests the server's firewall ate are unanswered in the capture too
    udp = [c for c in a.udp() if c.server.endswith(":8082")]
    timeouts = clients["udp"].count("timeout")
    assert timeouts >= 1 and sum(c.unanswered for c in udp) == timeouts
    (refused,) = [c for c in tcp if c.server.endswith(f":{CLOSED}")]
    assert refused.refused and clients["refused_tcp"] == "refused"


def test_lossy_ladder_shows_the_repair(lossy):
    path, _ = lossy
    r = subprocess.run([sys.executable, str(REPO / "labctl.py"), "analyse", str(path), "--ladders", "1"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "retransmission" in out and "✗ no reply" in out
    assert "TCP retransmitted" in out and "UDP requests got no reply" in out


def test_html_report_renders_in_chromium(lossy, tmp_path):
    path, _ = lossy
    html = tmp_path / "report.html"
    r = subprocess.run([sys.executable, str(REPO / "labctl.py"), "analyse", str(path), "--html", str(html),
                        "--ladders", "0"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    chromium = shutil.which("chromium-browser") or require_tool("chromium", "apt-get install chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium, *flags, f"--user-data-dir={profile}", "--dump-dom",
                              html.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<svg") >= 2 and "<line" in dom and "retransmission" in dom
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *flags, f"--user-data-dir={profile}", f"--screenshot={shot}",
                        "--window-size=1200,1600", html.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 30_000      # a blank page compresses to a few kB
    keep = os.environ.get("LABCTL_ARTEFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "analyse-report.png")
        shutil.copy(html, Path(keep) / "analyse-report.html")
        shutil.copy(path, Path(keep) / "analyse-lossy.pcap")
