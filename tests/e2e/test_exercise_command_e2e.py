"""``labctl exercise`` for real: from nothing to the report and the lab down again, through the CLI;
its figures checked against tshark on its own pcaps; the report opened in headless Chromium; and a
failed hour (the server stopped) reported as such with the other hours kept."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.requires import require_tool

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = REPO / "tests" / "artefacts"


@pytest.fixture(autouse=True)
def patient_lead(monkeypatch):
    """A longer lead: the machine is shared (see test_exercise_e2e.py); this is about function."""
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")


def tshark_packets(pcap: Path) -> list[tuple[float, str, str]]:
    """(time, source address, destination address) of every packet, according to tshark."""
    out = subprocess.run([require_tool("tshark"), "-r", str(pcap), "-T", "fields", "-e", "frame.time_epoch",
                          "-e", "ip.src", "-e", "ip.dst"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    rows = []
    for line in out.splitlines():
        t, src, dst = line.split("\t")
        rows.append((float(t), src, dst))
    return rows


def screenshot(html: Path, png: Path) -> None:
    chromium = require_tool("chromium", "apt-get install chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--hide-scrollbars", "--window-size=1280,5200",
                    f"--screenshot={png}", html.as_uri()],
                   capture_output=True, timeout=120, check=True)


def test_exercise_from_nothing_to_the_report_and_down_again(make_lab, tmp_path):
    lab = make_lab()
    out = tmp_path / "ex"
    proc = lab.cli("exercise", "-o", str(out), timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    for step in ("bringing lab", "deploying", "tcp worked", "udp worked", "proto worked", "taking lab",
                 "all 3 hours worked", "report.html"):
        assert step in text, step
    assert lab.leftovers() == []          # the lab is down again, nothing left
    data = json.loads((out / "run.json").read_text())
    assert data["ok"] and data["brought_up"] and data["taken_down"]
    server = next(n["address"] for n in data["lab"]["nodes"] if n["role"] == "server")
    clients = {n["address"] for n in data["lab"]["nodes"] if n["role"] == "client"}
    assert len(clients) == 3
    for hour in data["hours"]:
        pcap = out / hour["pcap"]
        packets = tshark_packets(pcap)
        summary = hour["capture"]["summary"]
        assert summary["packets"] == len(packets) == hour["capture"]["stats"]["captured"]
        first = {}
        for t, src, dst in packets:
            assert server in (src, dst)
            client = dst if src == server else src
            first.setdefault(client, t)
        assert set(first) == clients, hour["protocol"]
        spread = (max(first.values()) - min(first.values())) * 1000.0
        assert summary["spread_ms"] == pytest.approx(spread, abs=0.002), hour["protocol"]
        assert all(r["ok"] for r in hour["run"]["results"])
    report = (out / "report.html").read_text()
    assert report.count('class="timeline"') == 3
    assert 'class="labdrawing"' in report
    assert "The textbook picture beside the measured one" in report
    assert "Go in Practice, technique 24" in report
    # the measured spread of each hour, as tshark saw it, is in the report
    for hour in data["hours"]:
        assert f"spread on the wire {hour['capture']['summary']['spread_ms']:.2f} ms" in report
    # self-contained: nothing to fetch (the only URL is the SVG namespace), links are to the pcaps
    urls = set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'<>)]*", report))
    assert urls == {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\((?!#)", report)  # url(#marker) is local
    hrefs = set(re.findall(r'href="([^"]+)"', report))
    assert hrefs == {"tcp.pcap", "udp.pcap", "proto.pcap", "run.json"}
    png = ARTEFACTS / "exercise-report.png"
    screenshot(out / "report.html", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 100_000   # a page of drawings, not a blank one (~5 KB)


def test_a_failed_hour_is_reported_and_the_others_kept(make_lab, tmp_path):
    from labctl.deploy import ports_of, stop_server
    from labctl.exercise import run_exercise
    from labctl.remote import Connection

    lab = make_lab()
    inventory = lab.up()
    out = tmp_path / "ex"

    def refuse_after_tcp(hour) -> None:
        # the server is stopped, and its namespace answers the line protocol's port with a TCP reset, so
        # the next hour's clients are refused even though run starts a server that is not running
        if hour.protocol == "tcp":
            with Connection(inventory.server) as conn:
                assert stop_server(conn) is True
            port = ports_of(inventory).proto
            rules = ("add table inet t_refuse\n"
                     "add chain inet t_refuse input { type filter hook input priority -10; }\n"
                     f"add rule inet t_refuse input tcp dport {port} reject with tcp reset\n")
            subprocess.run(["ip", "netns", "exec", f"{lab.name}-server", "nft", "-f", "-"], input=rules,
                           text=True, check=True, timeout=30)   # gone with the namespace at teardown

    ex = run_exercise(lab.backend(), out, keep=False, on_hour=refuse_after_tcp,
                      protocols=("tcp", "proto"))
    assert not ex.brought_up and not ex.taken_down   # it was up: it stays up
    assert [h.protocol for h in ex.hours] == ["tcp", "proto"]
    assert ex.hours[0].ok and not ex.hours[1].ok and not ex.ok
    assert (out / "tcp.pcap").exists() and (out / "proto.pcap").exists()
    assert any("refused" in f for f in ex.hours[1].failures()), ex.hours[1].failures()
    report = (out / "report.html").read_text()
    assert "something FAILED" in report and "refused" in report
    assert report.count('class="timeline"') == 2
    data = json.loads((out / "run.json").read_text())
    assert data["ok"] is False and data["hours"][0]["ok"] and not data["hours"][1]["ok"]


def test_ctrl_c_stops_cleanly_keeping_what_was_done(make_lab, tmp_path):
    import signal
    import time

    lab = make_lab()
    out = tmp_path / "ex"
    proc = subprocess.Popen(lab.cli_argv("exercise", "-o", str(out)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("tcp "):       # the first hour is done: interrupt the second one
                time.sleep(0.3)
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(seen) + rest
    assert proc.returncode == 130, text[-3000:]
    data = json.loads((out / "run.json").read_text())
    assert data["interrupted"] and not data["ok"] and data["taken_down"]
    assert data["hours"][0]["ok"] and (out / "tcp.pcap").exists()
    assert len(data["hours"]) < 3
    assert "interrupted" in (out / "report.html").read_text()
    assert lab.leftovers() == []
