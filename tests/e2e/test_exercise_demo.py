"""The README's first command, ./demo.sh, for real: install check, lab up, deploy, three captured
runs with their analysis, lab down. It uses the default lab (192.168.20.0/24), so it holds the lock."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_demo_sh_runs_the_whole_exercise_and_cleans_up(lab_lock, monkeypatch):
    # a longer lead: this machine is shared with benchmarks that saturate it in bursts (see run.py)
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")
    for proto in ("tcp", "udp", "proto"):
        (REPO / "captures" / f"demo-{proto}.pcap").unlink(missing_ok=True)
    proc = subprocess.run(["./demo.sh"], cwd=REPO, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for step in ("bringing the lab up", "deploying", "over tcp", "over udp", "over proto", "all worked",
                 "taking the lab down"):
        assert step in out, step
    assert out.count("0 dropped by kernel") == 3
    assert len(re.findall(r"SYN-ACK", out)) >= 2  # the TCP ladders (tcp and proto)
    assert "UDP" in out and "Hello, World!" in out
    for proto in ("tcp", "udp", "proto"):
        pcap = REPO / "captures" / f"demo-{proto}.pcap"
        assert pcap.stat().st_size > 24
        subprocess.run(["tcpdump", "-r", str(pcap), "-n"], capture_output=True, check=True)
    # the lab is gone: no namespace, no bridge, no state
    assert not Path("/sys/class/net/lab-br").exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(r"^lab-", netns, re.M), netns
    assert not Path("/run/labctl/lab").exists()
