"""The README's first command, ./demo.sh, for real: install check, lab up, deploy, three captured
runs with their analysis and report,
lab down. It uses the default lab (192.168.20.0/24), so it holds the lock."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_demo_sh_runs_the_whole_exercise_and_cleans_up(lab_lock, monkeypatch, tmp_path):
    # a longer lead: this machine is shared with benchmarks that saturate it in bursts (see run.py)
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")
    out_dir = tmp_path / "demo"
    proc = subprocess.run(["./demo.sh", "-o", str(out_dir)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for step in ("installing what is needed", "bringing lab lab up", "deploying", "tcp worked", "udp worked",
                 "proto worked", "taking lab lab down", "all 3 hours worked"):
        assert step in out, step
    for proto in ("tcp", "udp", "proto"):
        pcap = out_dir / f"{proto}.pcap"
        assert pcap.stat().st_size > 24
        subprocess.run(["tcpdump", "-r", str(pcap), "-n"], capture_output=True, check=True)
    assert "Hello, World!" in (out_dir / "report.html").read_text()
    # the lab is gone: no namespace, no bridge, no state
    assert not Path("/sys/class/net/lab-br").exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(r"^lab-", netns, re.M), netns
    assert not Path("/run/labctl/lab").exists()
