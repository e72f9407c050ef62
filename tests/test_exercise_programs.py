"""The exercise's own programs (``--program``) and capture points (``--nodes``), without a lab: which
programs and nodes it accepts (one line for the others, before anything is made), a pcapng with one
interface per node counted at the server's point, and a program's hour in the report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labctl.analyse import analyse_file
from labctl.analyse.exercise_report import render_report
from labctl.analyse.one_point import at_point, points
from labctl.analyse.pcapng_write import Interface, file_header, packet_block
from labctl.exercise import ExerciseError, capture_points, own_programs
from labctl.lab import load_lab
from labctl.programs import ProgramError
from tests.pcapwrite import tcp_daytime, udp_frame
from tests.said import stderr_lines

REPO = Path(__file__).resolve().parents[1]
SERVER, C1, C2 = "192.168.73.2", "192.168.73.3", "192.168.73.4"


def lab_file(tmp_path: Path, programs: str = "") -> Path:
    (tmp_path / "srv.sh").write_text("#!/bin/sh\nexec sleep 60\n")
    path = tmp_path / "lab.yml"
    path.write_text(f"name: hexp\nsubnet: 192.168.73.0/24\nhost_address: 192.168.73.1\n"
                    f"server_address: {SERVER}\nclients: 2\n{programs}")
    return path


PROGRAMS = """programs:
  mine:
    server: ./srv.sh {port}
    client: nc {server} {port}
  other:
    server: builtin
    client: nc -u {server} {port}
"""


def test_programs_are_the_lab_files_in_order_each_once(tmp_path):
    lab = load_lab(lab_file(tmp_path, PROGRAMS))
    assert [s.name for s in own_programs(lab, ["other", "mine", "other"])] == ["other", "mine"]
    assert own_programs(lab, []) == []


def test_an_unknown_program_is_one_line_that_lists_the_labs(tmp_path):
    lab = load_lab(lab_file(tmp_path, PROGRAMS))
    with pytest.raises(ExerciseError) as exc:
        own_programs(lab, ["mine", "nope"])
    assert str(exc.value) == ("--program nope: not a program of lab hexp's lab file (its programs: mine, "
                              "other)")
    with pytest.raises(ExerciseError, match="tcp is a built-in hour, always run"):
        own_programs(lab, ["tcp"])
    bare = load_lab(lab_file(tmp_path))
    with pytest.raises(ExerciseError, match=r"its programs: none: add a programs: section"):
        own_programs(bare, ["mine"])


def test_a_program_whose_file_is_missing_is_refused_before_anything(tmp_path):
    lab = load_lab(lab_file(tmp_path, PROGRAMS))
    (tmp_path / "srv.sh").unlink()
    with pytest.raises(ProgramError, match=r"srv\.sh"):
        own_programs(lab, ["mine"])


def test_capture_points_put_the_server_first_and_require_it(tmp_path):
    lab = load_lab(lab_file(tmp_path))
    assert capture_points(lab, "server") == ["server"]
    assert capture_points(lab, "all") == ["server", "client1", "client2"]
    assert capture_points(lab, "client2,server,client2") == ["server", "client2"]
    with pytest.raises(ExerciseError, match="include server"):
        capture_points(lab, "client1")
    with pytest.raises(ExerciseError, match=r"no node 'client9' \(give all, server, .*: server, client1, "):
        capture_points(lab, "server,client9")
    with pytest.raises(ExerciseError, match="no node ' , '"):
        capture_points(lab, " , ")


def test_the_cli_refuses_an_unknown_program_in_one_line_and_makes_nothing(tmp_path):
    out = tmp_path / "ex"
    lab = lab_file(tmp_path, PROGRAMS)
    argv = [sys.executable, str(REPO / "labctl.py"), "--lab", str(lab), "--state-dir", str(tmp_path / "s"),
            "exercise", "--program", "nope", "-o", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = stderr_lines(proc.stderr)
    assert lines == ["labctl: --program nope: not a program of lab hexp's lab file (its programs: mine, "
                     "other)"], proc.stderr
    assert not out.exists() and not (tmp_path / "s" / "hexp").exists()
    assert "hexp-server" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _two_points(path: Path) -> Path:
    """A pcapng as ``capture --nodes server,client1`` writes it: client1's exchange seen at both
    points, client2's at the server only, and a UDP exchange of client1 at both."""
    c1 = tcp_daytime(C1, 40001, SERVER, 8080, 100.0)
    c2 = tcp_daytime(C2, 40002, SERVER, 8080, 100.0005)
    udp = [(100.01, udp_frame(C1, 40003, SERVER, 8080, b"x")),
           (100.0101, udp_frame(SERVER, 8080, C1, 40003, b"t"))]
    at_server = sorted(c1 + c2 + udp)
    at_client = [(t - 0.00001 if i % 2 == 0 else t + 0.00001, f) for i, (t, f) in enumerate(sorted(c1 + udp))]
    blocks = sorted([(t, 0, f) for t, f in at_server] + [(t, 1, f) for t, f in at_client])
    data = file_header([Interface("server", "eth0", SERVER), Interface("client1", "eth0", C1)])
    data += b"".join(packet_block(i, round(t * 1e9), f) for t, i, f in blocks)
    path.write_bytes(data)
    return path


def test_a_pcapng_of_several_nodes_is_counted_at_the_servers_point(tmp_path):
    pcap = _two_points(tmp_path / "tcp.pcapng")
    assert points(pcap) == {"server/eth0": 18, "client1/eth0": 10}
    whole = analyse_file(pcap)
    assert whole.packets == 28      # every packet once per node that saw it
    source, name = at_point(pcap, "server")
    server = analyse_file(source)
    assert name == "server/eth0" and server.packets == 18
    assert server.tcp_count == 2 and server.udp_count == 1
    assert all(c.retransmissions == 0 for c in server.tcp())
    source, name = at_point(pcap, "client1")
    assert analyse_file(source).packets == 10
    one = tmp_path / "one.pcap"
    from tests.pcapwrite import write_pcap

    write_pcap(one, tcp_daytime(C1, 40001, SERVER, 8080, 100.0))
    assert at_point(one, "server") == (one, None) and points(one) == {"capture": 8}


def _data(hours: list[dict]) -> dict:
    nodes = [{"name": "server", "role": "server", "address": SERVER, "programs": []},
             {"name": "client1", "role": "client", "address": C1, "programs": []},
             {"name": "client2", "role": "client", "address": C2, "programs": []}]
    return {"ok": True, "lab": {"name": "hexp", "backend": "netns", "nodes": nodes, "ports": {}},
            "commands": ["labctl exercise"], "hours": hours}


def _hour(name: str, protocol: str, pcap: str, **more) -> dict:
    return {"protocol": protocol, "name": name, "title": name, "ok": True, "pcap": pcap, "seconds": 1.0,
            "failures": [], "run": None, "capture": None, **more}


def test_the_report_counts_a_several_node_capture_at_the_server(tmp_path):
    _two_points(tmp_path / "tcp.pcapng")
    html = render_report(_data([_hour("tcp", "tcp", "tcp.pcapng")]), tmp_path)
    assert ("The capture holds 2 capture points, one per node (server/eth0 18, client1/eth0 10 packets)"
            in html)
    assert "counted at one point, <b>server/eth0</b>" in html
    assert "18 packets, 2 TCP and 1 UDP conversations" in html
    assert html.count('class="timeline"') == 1 and 'href="tcp.pcapng"' in html


def test_a_programs_hour_says_whose_it_is_and_draws_its_protocols_textbook(tmp_path):
    from tests.pcapwrite import write_pcap

    write_pcap(tmp_path / "program-mine.pcap",
               [(100.0, udp_frame(C1, 40003, SERVER, 9000, b"anything")),
                (100.001, udp_frame(SERVER, 9000, C1, 40003, b"2026-12-02 00:00:00 +0000 UTC"))])
    own = {"name": "mine", "server": "./udpserver -port {port}", "client": "./udpclient {server}:{port}"}
    run = {"results": [{"node": "client1", "address": C1, "ok": True, "reply": "Go time",
                        "timings": {"start": 10.0, "exec": 11.0, "end": 11.0125}}]}
    hour = _hour("program-mine", "udp", "program-mine.pcap", program=own, run=run)
    hour["title"] = "Your program mine (the lab file's programs:), over UDP"
    html = render_report(_data([hour]), tmp_path)
    assert "Your program <b>mine</b>, from the lab file's <code>programs:</code> (not labctl's)" in html
    assert "<code>./udpserver -port {port}</code>" in html and "it speaks UDP" in html
    assert "<h3>UDP: the textbook (left) and this capture (right)</h3>" in html
    assert "Go in Practice, technique 24" in html
    assert "<td>12.50</td>" in html and "total ms is from the instant to its exit" in html
    json.dumps(hour)   # (the hour is plain data, as run.json holds it)
