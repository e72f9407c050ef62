"""Per UDP client: did it get an answer, from which side (labctl/analyse/clients.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labctl.analyse import analyse_file
from labctl.analyse.clients import (
    CAPTURE_ONLY,
    CLIENT_SIDE,
    RESULTS,
    ResultsError,
    Seen,
    load_results,
    seen_per_client,
    udp_clients,
)
from tests.pcapwrite import udp_frame, write_pcap

ROOT = Path(__file__).resolve().parent.parent
SERVER = "192.168.71.2"
A, B, C = "192.168.71.3", "192.168.71.4", "192.168.71.5"


def _capture(tmp_path: Path) -> Path:
    """At the server: A asked and was answered; B's datagram never reached it; C's reply was sent (and,
    as the run will say, lost on the way back)."""
    t = 10.0
    return write_pcap(tmp_path / "server.pcap", [
        (t, udp_frame(A, 40001, SERVER, 8080, b"anything")),
        (t + 0.0002, udp_frame(SERVER, 8080, A, 40001, b"2026-12-02T01:00:00Z\n")),
        (t + 0.001, udp_frame(C, 40003, SERVER, 8080, b"anything")),
        (t + 0.0012, udp_frame(SERVER, 8080, C, 40003, b"2026-12-02T01:00:00Z\n")),
    ])


def _run() -> dict:
    return {"program": "udp", "protocol": "udp", "results": [
        {"node": "client1", "address": A, "ok": True, "attempts": 1, "timeouts": 0},
        {"node": "client2", "address": B, "ok": False, "attempts": 1, "timeouts": 1,
         "error": "udp 192.168.71.2:8080: timed out"},
        {"node": "client3", "address": C, "ok": False, "attempts": 1, "timeouts": 1,
         "error": "udp 192.168.71.2:8080: timed out"},
    ]}


def test_the_capture_alone_cannot_see_a_datagram_lost_before_it(tmp_path):
    clients = udp_clients(seen_per_client(analyse_file(_capture(tmp_path)).builder)).listed
    assert [(c.address, c.answered, c.source) for c in clients] == [(A, True, CAPTURE_ONLY),
                                                                     (C, True, CAPTURE_ONLY)]  # (B: absent)


def test_the_runs_results_tell_who_got_nothing_and_where_it_was_lost(tmp_path):
    seen = seen_per_client(analyse_file(_capture(tmp_path)).builder)
    a, b, c = udp_clients(seen, _run(), captured={"server"}).listed
    assert (a.node, a.answered, a.source, a.attempts) == ("client1", True, RESULTS, 1)
    assert not b.answered and b.timeouts == 1 and b.requests_seen == 0
    assert "0 of its 1 datagrams: 1 lost on the way to the server" in b.why
    assert "nobody but the client's timeout noticed" in b.why
    assert not c.answered and "the answer was lost on the way back" in c.why
    assert c.to_json()["timeouts"] == 1 and "got NO answer" in c.sentence()


def test_a_captured_client_is_judged_from_its_own_side(tmp_path):
    # captured on client1 and client3 (capture --nodes): what their own interfaces saw decides
    seen = {A: Seen(1, 1), C: Seen(1, 0)}
    a, b, c = udp_clients(seen, _run(), captured={"server", "client1", "client3"}).listed
    assert (a.source, a.answered) == (CLIENT_SIDE, True)
    assert (b.source, b.answered) == (RESULTS, False)
    assert (c.source, c.answered) == (CLIENT_SIDE, False)


def test_a_program_labctl_did_not_write_has_unknown_attempts():
    run = {"program": "mine", "results": [{"node": "client1", "address": A, "ok": True,
                                           "attempts": "unknown", "timeouts": "unknown"}]}
    (a,) = udp_clients({A: Seen(1, 1)}, run).listed
    assert a.attempts is None and a.to_json()["attempts"] == "unknown"


def test_a_tcp_runs_results_do_not_judge_udp_clients():
    run = {"program": "tcp", "protocol": "tcp", "results": [{"node": "client1", "address": A, "ok": False}]}
    assert udp_clients({}, run).listed == []


def test_workers_counts_merge():
    from labctl.analyse.summary import Totals

    one, two = Totals("udp"), Totals("udp")
    one.seen, two.seen = {A: Seen(2, 1)}, {A: Seen(1, 1), B: Seen(1, 0)}
    one.merge(two)
    assert (one.seen[A].requests, one.seen[A].replies, one.seen[B].replies) == (3, 2, 0)


def test_thousands_of_clients_list_the_first_and_count_all():
    seen = {f"10.0.{i // 256}.{i % 256}": Seen(1, i % 2) for i in range(5000)}
    clients = udp_clients(seen, limit=64)
    assert len(clients.listed) == 64 and clients.total == 5000 and clients.answered == 2500
    assert [c.address for c in clients.listed[:3]] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert "the first 64 of 5000 UDP clients; 2500 of all 5000 got an answer" in clients.note()


def test_load_results_reads_run_capture_and_exercise_documents(tmp_path):
    run = _run()
    p = tmp_path / "run.json"
    p.write_text(json.dumps(run))
    assert load_results(p) == (run, None)
    p.write_text(json.dumps({"path": "x.pcapng", "nodes": [{"node": "server"}, {"node": "client1"}],
                             "run": run}))
    assert load_results(p) == (run, {"server", "client1"})
    hours = [{"pcap": "tcp.pcap", "run": {"results": []}},
             {"pcap": "udp-lossy.pcap", "run": run, "capture": {"node": "server"}}]
    p.write_text(json.dumps({"hours": hours}))
    assert load_results(p, "/somewhere/udp-lossy.pcap") == (run, {"server"})
    with pytest.raises(ResultsError, match="no hour of this exercise captured"):
        load_results(p, "other.pcap")
    p.write_text(json.dumps(run) + "\n" + json.dumps(run) + "\n")
    with pytest.raises(ResultsError, match="2 runs"):
        load_results(p)
    p.write_text("{not json")
    with pytest.raises(ResultsError, match="not JSON"):
        load_results(p)


def test_analyse_results_in_text_and_json(tmp_path):
    pcap = _capture(tmp_path)
    results = tmp_path / "run.json"
    results.write_text(json.dumps(_run()))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "labctl.py"), "analyse", str(pcap), *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    text = cli("--results", str(results))
    assert text.returncode == 0, text.stderr
    assert "client2 192.168.71.4: got NO answer" in text.stdout
    assert "lost on the way to the server" in text.stdout
    doc = json.loads(cli("--results", str(results), "--json").stdout)
    assert [c["answered"] for c in doc["summary"]["udp_clients"]] == [True, False, False]
    for missing in (tmp_path / "missing.json", Path("/dev/zero")):   # (a device is never read)
        bad = cli("--results", str(missing))
        assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("labctl: --results")
    bad = cli("--results", str(tmp_path / "missing.json"))
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("labctl: --results")
    assert "Traceback" not in bad.stderr


def test_clients_seen_only_in_the_capture_are_listed_ipv4_then_ipv6():
    seen = {"[2001:db8::1]": Seen(1, 1), "10.0.0.9": Seen(1, 0), "10.0.0.10": Seen(2, 2)}
    assert [c.address for c in udp_clients(seen).listed] == ["10.0.0.9", "10.0.0.10", "[2001:db8::1]"]
