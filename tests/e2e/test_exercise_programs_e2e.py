"""``labctl exercise --program NAME`` and ``--nodes all`` for real, through the CLI, from nothing to the
report and the lab down again: the seed's Go programs as hours of their own (every client answered,
the hour's figures checked against tshark on its pcap, the report saying whose program it is), and a
capture on every node (one pcapng, one interface per node; the report's counts are tshark's at the
server's interface).

The seed's Go TCP client dials 192.168.20.2:8080 hard-coded, so that lab is on 192.168.20.0/24, under
the lab lock and only when nothing else here uses that subnet (see test_programs_e2e.py).
"""
from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections import Counter
from html import escape
from pathlib import Path

import pytest

from labctl.backends.netns import NetnsBackend
from labctl.lab import load_lab
from tests.e2e.conftest import STATE_ROOT, LabUnderTest, leftovers
from tests.e2e.test_programs_e2e import GO_TIME, seed_programs_on_a_free_card_subnet
from tests.requires import SHARED_BENCH, require_tool

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def patient_lead(monkeypatch):
    """(see test_exercise_e2e: function, not speed, on a machine shared with benchmarks)"""
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")


@pytest.fixture
def seed_lab(lab_lock, tmp_path):
    """A 3-client lab file on 192.168.20.0/24 with the seed's Go programs; not up (the exercise brings
    it up); whatever happens, nothing of it is left afterwards."""
    seed_programs_on_a_free_card_subnet()
    name = "x" + secrets.token_hex(3)
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text(f"""name: {name}
subnet: 192.168.20.0/24
host_address: 192.168.20.1
server_address: 192.168.20.2
clients: 3
programs:
  seed-tcp:
    server: {SHARED_BENCH}/seed-tcpserver -port 8080
    client: {SHARED_BENCH}/seed-tcpclient
  seed-udp:
    server: {SHARED_BENCH}/seed-udpserver -port {{port}}
    client: {SHARED_BENCH}/seed-udpclient {{server}}:{{port}}
  deaf:
    server: sh -c 'echo "cannot bind, sorry" >&2; exec sleep 60'
    client: nc -w 1 {{server}} {{port}}
    ready_timeout: 1
""")
    lab = LabUnderTest(name, lab_file, 3)
    try:
        yield lab
    finally:
        NetnsBackend(load_lab(lab_file), STATE_ROOT / name).clean()
        left = leftovers(name, STATE_ROOT / name)
        assert not left, f"left behind: {left}"


def tshark_rows(pcap: Path) -> list[tuple[str, float, str, str, str]]:
    """(capture point, time, source, destination, protocol) of every packet, according to tshark."""
    out = subprocess.run([require_tool("tshark"), "-r", str(pcap), "-T", "fields",
                          "-e", "frame.interface_name", "-e", "frame.time_epoch", "-e", "ip.src",
                          "-e", "ip.dst", "-e", "ip.proto"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = []
    for line in out.splitlines():
        point, t, src, dst, proto = line.split("\t")
        rows.append((point, float(t), src, dst, {"6": "tcp", "17": "udp"}.get(proto, proto)))
    return rows


def check_hour_against_tshark(hour: dict, pcap: Path, server: str, clients: set[str], point: str = ""):
    """The hour's packets and spread are tshark's (at ``point``: the server's interface of a pcapng)."""
    rows = [r for r in tshark_rows(pcap) if not point or r[0] == point]
    summary = hour["capture"]["summary"]
    assert summary["packets"] == len(rows), hour["name"]
    first: dict[str, float] = {}
    for _point, t, src, dst, _proto in rows:
        assert server in (src, dst)
        first.setdefault(dst if src == server else src, t)
    assert set(first) == clients, hour["name"]
    spread = (max(first.values()) - min(first.values())) * 1000.0
    assert summary["spread_ms"] == pytest.approx(spread, abs=0.002), hour["name"]
    return rows


def test_the_seeds_go_programs_get_hours_of_their_own(seed_lab, tmp_path):
    out = tmp_path / "ex"
    proc = seed_lab.cli("exercise", "--program", "seed-tcp", "--program", "seed-udp", "-o", str(out),
                        timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    for said in ("deploying seed-tcp", "program-seed-tcp worked", "program-seed-udp worked",
                 "all 5 hours worked", "taking lab"):
        assert said in text, said
    assert seed_lab.leftovers() == []
    data = json.loads((out / "run.json").read_text())
    assert data["ok"] and data["taken_down"] and data["capture_nodes"] == ["server"]
    assert [h["name"] for h in data["hours"]] == ["tcp", "udp", "proto", "program-seed-tcp",
                                                  "program-seed-udp"]
    server = "192.168.20.2"
    clients = {"192.168.20.3", "192.168.20.4", "192.168.20.5"}
    hours = {h["name"]: h for h in data["hours"]}
    for name, proto in (("program-seed-tcp", "tcp"), ("program-seed-udp", "udp")):
        hour = hours[name]
        assert hour["ok"] and hour["protocol"] == proto and hour["title"].endswith(f"over {proto.upper()}")
        assert hour["program"]["name"] == name.removeprefix("program-")
        assert hour["program"]["server"].startswith(str(SHARED_BENCH))
        results = hour["run"]["results"]
        assert [r["node"] for r in results] == ["client1", "client2", "client3"]
        for r in results:  # every client answered, with the Go server's time
            assert r["ok"] and r["exit"] == 0 and GO_TIME.search(r["reply"]), r
            assert r["reply"].endswith("...Hallo") == (proto == "tcp"), r["reply"]
        rows = check_hour_against_tshark(hour, out / hour["pcap"], server, clients)
        assert {r[4] for r in rows} == {proto}
        assert hour["capture"]["summary"]["protocols"] == {proto: len(rows)}
    tcp_rows = tshark_rows(out / "program-seed-tcp.pcap")
    syn = subprocess.run([require_tool("tshark"), "-r", str(out / "program-seed-tcp.pcap"), "-Y",
                          "tcp.flags.syn == 1 && tcp.flags.ack == 0", "-T", "fields", "-e", "ip.src"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert sorted(syn) == sorted(clients) and len(tcp_rows) >= 3 * 7
    report = (out / "report.html").read_text()
    assert report.count('class="timeline"') == 5
    for name, proto in (("seed-tcp", "TCP"), ("seed-udp", "UDP")):
        assert f"Your program <b>{name}</b>, from the lab file's <code>programs:</code>" in report
        assert escape(f"Your program {name} (the lab file's programs:), over {proto}") in report
        assert f"it speaks {proto}" in report
        hour = hours[f"program-{name}"]
        assert (f'<a href="program-{name}.pcap">program-{name}.pcap</a>: '
                f'{hour["capture"]["summary"]["packets"]} packets') in report
        assert f"spread on the wire {hour['capture']['summary']['spread_ms']:.2f} ms" in report
    # each program's section draws the textbook exchange of its own protocol
    section = report.split('<h2 id="program-seed-udp">')[1]
    assert "<h3>UDP: the textbook (left) and this capture (right)</h3>" in section
    section = report.split('<h2 id="program-seed-tcp">')[1].split("<h2")[0]
    assert "<h3>TCP: the textbook (left) and this capture (right)</h3>" in section
    # the commands that reproduce it name the programs
    assert re.search(r"labctl --lab \S+ exercise .*--program seed-tcp --program seed-udp", report)
    assert re.search(r"labctl --lab \S+ capture --run seed-udp", report)


def test_capture_on_every_node_one_interface_per_node_counted_at_the_server(make_lab, tmp_path):
    lab = make_lab()
    out = tmp_path / "ex"
    proc = lab.cli("exercise", "--nodes", "all", "-o", str(out), timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "on every node" in text and "all 3 hours worked" in text
    assert lab.leftovers() == []
    data = json.loads((out / "run.json").read_text())
    assert data["capture_nodes"] == ["server", "client1", "client2", "client3"]
    nodes = {n["name"]: n["address"] for n in data["lab"]["nodes"]}
    server = nodes["server"]
    report = (out / "report.html").read_text()
    for hour in data["hours"]:
        pcap = out / hour["pcap"]
        assert pcap.suffix == ".pcapng" and hour["ok"]
        rows = tshark_rows(pcap)
        per_point = Counter(r[0] for r in rows)
        assert set(per_point) == {f"{n}/eth0" for n in nodes}, per_point
        summary = hour["capture"]["summary"]
        assert summary["counted_at"] == "server/eth0" and summary["all_points"] == len(rows)
        assert summary["points"] == dict(per_point)
        assert hour["capture"]["stats"]["captured"] == len(rows)
        check_hour_against_tshark(hour, pcap, server, {a for n, a in nodes.items() if n != "server"},
                                  point="server/eth0")
        # each client saw its own packets only, each of them also at the server
        at_server = Counter((src, dst) for p, _t, src, dst, _ in rows if p == "server/eth0")
        for name, address in nodes.items():
            if name != "server":
                mine = Counter((s, d) for p, _t, s, d, _ in rows if p == f"{name}/eth0")
                assert mine and all(address in pair for pair in mine), name
                assert all(at_server[pair] == n for pair, n in mine.items()), name
        assert (f'<a href="{hour["pcap"]}">{hour["pcap"]}</a>: {per_point["server/eth0"]} packets'
                in report), hour["name"]
        assert f"spread on the wire {summary['spread_ms']:.2f} ms" in report
    assert report.count("counted at one point, <b>server/eth0</b>") == 3
    assert report.count('class="timeline"') == 3
    hrefs = set(re.findall(r'href="([^"]+)"', report))
    assert hrefs == {"tcp.pcapng", "udp.pcapng", "proto.pcapng", "run.json"}


def test_a_program_whose_server_never_listens_fails_its_hour_only(seed_lab, tmp_path):
    out = tmp_path / "ex"
    proc = seed_lab.cli("exercise", "--program", "deaf", "--program", "seed-udp", "-o", str(out), timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]
    assert "program-deaf FAILED" in text and "program-seed-udp worked" in text, text[-4000:]
    assert seed_lab.leftovers() == []
    data = json.loads((out / "run.json").read_text())
    hours = {h["name"]: h for h in data["hours"]}
    assert not data["ok"] and all(hours[n]["ok"] for n in ("tcp", "udp", "proto", "program-seed-udp"))
    assert not hours["program-deaf"]["ok"] and hours["program-deaf"]["failures"]
    assert all(not r["ok"] for r in hours["program-deaf"]["run"]["results"])
    report = (out / "report.html").read_text()
    assert "something FAILED" in report and report.count('class="timeline"') == 5
