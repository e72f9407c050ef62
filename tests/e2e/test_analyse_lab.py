"""The analysis of captures made by the real lab: `labctl capture --run tcp|udp` on a 3-client namespace
lab (sshd, deployed time server and clients), checked against tshark."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_analyse_support import assert_matches_tshark

from labctl.analyse import analyse_file
from tests.requires import require_tool

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", autouse=True)
def tshark() -> str:
    """Checked before any lab is built."""
    return require_tool("tshark")


def test_lab_captures_match_tshark(netns_lab, tmp_path):
    files = {}
    for proto in ("tcp", "udp"):
        out = tmp_path / f"{proto}.pcap"
        r = netns_lab.cli("capture", "--run", proto, "-o", str(out), "--json", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        json.loads(r.stdout.strip().splitlines()[-1])
        files[proto] = out
    clients = netns_lab.clients
    tcp = analyse_file(files["tcp"])
    assert_matches_tshark(files["tcp"], tcp)
    convs = [c for c in tcp.tcp() if c.got_answer]
    assert len({c.client.rsplit(":", 1)[0] for c in convs}) == clients
    assert all(c.handshake and c.closed_by is not None for c in convs)
    udp = analyse_file(files["udp"])
    assert_matches_tshark(files["udp"], udp)
    answered = [e for c in udp.udp() for e in c.exchanges if e.answered]
    assert len(answered) >= clients
    # the report a class would get from this run
    r = netns_lab.cli("analyse", str(files["tcp"]), "--html", str(tmp_path / "r.html"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SYN seq=0" in r.stdout and (tmp_path / "r.html").read_text().count("<svg") >= 1
