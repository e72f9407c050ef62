"""deploy, run and capture on the real lab: namespaces, sshd, tcpdump, the CLI as users type it.

Every pcap is checked with tshark (``-z conv,tcp`` / ``conv,udp``), independently of labctl.analyse.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.procs import live_processes
from tests.requires import require_tool
from tests.said import BACKEND_LINE

pytestmark = pytest.mark.lab

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture(autouse=True)
def patient_lead(monkeypatch):
    """This machine is shared with benchmarks that saturate both cores in bursts; a burst between
    run's measurement and its start instant can make a client miss the instant, which run reports as
    a failure (as it should). These tests are about function, not speed (bench/run.py measures the
    default lead), so they ask for a longer lead."""
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")


def conversations(pcap: Path, proto: str = "tcp") -> list[tuple[str, str]]:
    """(client endpoint, server endpoint) pairs of the pcap, according to tshark."""
    out = subprocess.run([require_tool("tshark"), "-r", str(pcap), "-q", "-z", f"conv,{proto}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    pairs = []
    for line in out.splitlines():
        m = re.match(r"^\s*(\S+:\d+)\s+<->\s+(\S+:\d+)\s", line)
        if m:
            pairs.append((m.group(1), m.group(2)))
    return pairs


def tshark_count(pcap: Path, display_filter: str) -> int:
    argv = [require_tool("tshark"), "-r", str(pcap), "-Y", display_filter, "-T", "fields",
            "-e", "frame.number"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return len(out.split())


def hosts(lab) -> dict[str, str]:
    return {h.name: h.address for h in lab.inventory.hosts}


def run_json(lab, *args: str) -> tuple[int, dict]:
    proc = lab.cli("run", *args, "--json", timeout=120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from run: rc={proc.returncode} {proc.stderr}"
    return proc.returncode, json.loads(lines[-1])


def tcpdumps_of_labctl(lab) -> list[int]:
    """Live tcpdump (or its timeout wrapper) processes started by labctl capture in ``lab``'s server."""
    try:
        server_ns = os.stat(f"/run/netns/{lab.name}-server").st_ino
    except FileNotFoundError:
        return []
    found = []
    for pid, cmd, entry in live_processes():
        try:
            ns = os.stat(entry / "ns" / "net").st_ino
        except OSError:
            continue
        ours = b"labctl-capture-" in cmd or b"--time-stamp-precision=nano" in cmd  # -w FILE, or -w -
        if ours and b"tcpdump" in cmd and ns == server_ns:
            found.append(pid)
    return found


def test_deploy_then_run_every_protocol(netns_lab):
    deploy = netns_lab.cli("deploy", "--json")
    assert deploy.returncode == 0, deploy.stderr
    report = json.loads(deploy.stdout)
    assert [n["node"] for n in report["nodes"]] == ["server", "client1", "client2", "client3"]
    assert {"timeserver.py", "serverctl.py", "startat.py"} <= set(report["nodes"][0]["copied"])
    assert report["nodes"][0]["server"].startswith("started pid")
    assert all("timeclient.py" in n["copied"] and "startat.py" in n["copied"] for n in report["nodes"][1:])
    again = json.loads(netns_lab.cli("deploy", "--json").stdout)
    assert all(n["copied"] == [] for n in again["nodes"])
    assert again["nodes"][0]["server"].startswith("running")

    addresses = hosts(netns_lab)
    for proto in ("tcp", "udp", "proto", "time"):
        rc, out = run_json(netns_lab, proto)
        assert rc == 0, [r["error"] for r in out["results"]]
        assert out["protocol"] == proto and isinstance(out["spread_ms"], float)
        assert [r["node"] for r in out["results"]] == ["client1", "client2", "client3"]
        for r in out["results"]:
            assert r["ok"] and r["error"] is None, r
            assert r["address"] == addresses[r["node"]]
            assert ISO.match(r["reply"]), r["reply"]
            assert {"start", "connected", "done", "connect_ms", "total_ms"} <= set(r["timings"])
        if proto == "proto":
            assert all(r["reply"].endswith("Hello, World!") for r in out["results"])
    # the human table names every node and the reply
    table = netns_lab.cli("run", "tcp")
    assert table.returncode == 0 and all(f"client{i}" in table.stdout for i in (1, 2, 3))


def test_run_deploys_when_needed(netns_lab):
    rc, out = run_json(netns_lab, "udp")  # nothing deployed yet: run deploys first
    assert rc == 0 and all(r["ok"] for r in out["results"])


def test_capture_with_run_brings_home_a_complete_pcap(netns_lab, tmp_path):
    addresses = hosts(netns_lab)
    server = addresses["server"]
    clients = {addresses[f"client{i}"] for i in (1, 2, 3)}
    for proto, port in (("tcp", 8080), ("udp", 8080), ("proto", 8081)):
        out = tmp_path / f"{proto}.pcap"
        proc = netns_lab.cli("capture", "--run", proto, "-o", str(out), "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        result = json.loads(proc.stdout)
        stats = result["stats"]
        assert stats["captured"] == stats["received"] and stats["dropped"] == 0
        assert result["run"]["protocol"] == proto and all(r["ok"] for r in result["run"]["results"])
        kind = "udp" if proto == "udp" else "tcp"
        pairs = conversations(out, kind)
        assert len(pairs) == 3, pairs
        assert {a.rsplit(":", 1)[0] for a, _ in pairs} == clients
        assert {b for _, b in pairs} == {f"{server}:{port}"}
        assert tshark_count(out, "frame") == stats["captured"]
        if kind == "tcp":  # every conversation complete: 3 SYNs, 3 SYN-ACKs, FINs both ways
            assert tshark_count(out, "tcp.flags.syn==1 && tcp.flags.ack==0") == 3
            assert tshark_count(out, "tcp.flags.syn==1 && tcp.flags.ack==1") == 3
            assert tshark_count(out, "tcp.flags.fin==1") == 6
        assert result["summary"]["clients"] and result["summary"]["open"] == 0
    assert not tcpdumps_of_labctl(netns_lab)


def test_capture_without_run_until_duration(netns_lab, tmp_path):
    netns_lab.cli("deploy", check=True)
    out = tmp_path / "d.pcap"
    argv = netns_lab.cli_argv("capture", "--port", "8080", "--duration", "3", "-o", str(out))
    proc = subprocess.Popen(argv,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        line = proc.stderr.readline()
        while line.startswith(BACKEND_LINE):  # the line naming the backend in use comes first
            line = proc.stderr.readline()
        assert "tcpdump listening on server eth0" in line, line
        assert netns_lab.cli("run", "tcp").returncode == 0
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "0 dropped by kernel" in stdout and "client1" in stdout
    assert len(conversations(out)) == 3
    assert not tcpdumps_of_labctl(netns_lab)


@pytest.mark.parametrize("when", ["listening", "during-run", "early"])
def test_ctrl_c_during_capture_brings_home_the_pcap_and_stops_tcpdump(netns_lab, tmp_path, when):
    netns_lab.cli("deploy", check=True)
    out = tmp_path / "c.pcap"
    args = ["capture", "-o", str(out)]
    if when == "during-run":
        args += ["--run", "udp", "--port", "8080"]
    proc = subprocess.Popen(netns_lab.cli_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        if when == "early":
            _past_start_up(proc.pid)  # connecting, or starting tcpdump: before or while it gets ready
        else:
            line = proc.stderr.readline()
            while line.startswith(BACKEND_LINE):  # the line naming the backend comes first
                line = proc.stderr.readline()
            assert "tcpdump listening" in line, line
            if when == "listening":
                assert netns_lab.cli("run", "udp").returncode == 0
            else:
                time.sleep(0.05)  # the run has started: clients are being exec'ed
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # impatient user: a second Ctrl-C must not break the clean-up
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in stderr, stderr
    time.sleep(0.1)
    assert not tcpdumps_of_labctl(netns_lab), "a tcpdump is still running"
    if when == "listening":
        assert proc.returncode == 0, stderr  # Ctrl-C is how a capture without --run/--duration ends
        assert "stopped by Ctrl-C" in stdout
        assert len(conversations(out, "udp")) == 3
    elif when == "during-run":  # the run is cut short: exit 130, and the pcap still comes home whole
        assert proc.returncode == 130, (proc.returncode, stderr)
        assert "capture INCOMPLETE" not in stderr, stderr
        _reads_back(out)
    elif out.exists():  # early, but tcpdump had started: the capture ends as a Ctrl-C while listening
        assert proc.returncode == 0 and "stopped by Ctrl-C" in stdout, (proc.returncode, stdout, stderr)
        _reads_back(out)
    else:  # early, still connecting: nothing was started, so nothing is left and nothing comes home
        assert proc.returncode == 130 and stderr.strip().endswith("labctl: interrupted"), \
            (proc.returncode, stderr)


def _past_start_up(pid: int, timeout: float = 60) -> None:
    """Wait until the process opened its first socket (its first SSH connection): start-up is over,
    whatever the machine's load (a fixed sleep lands in the imports on a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in fds):
                return
        except OSError:  # an fd closed while we looked
            pass
        time.sleep(0.002)
    pytest.fail(f"labctl (pid {pid}) opened no connection within {timeout:g} s")


def _reads_back(pcap: Path) -> None:
    subprocess.run([require_tool("tshark"), "-r", str(pcap)], capture_output=True, check=True, timeout=60)


def _sshd_pid(lab, node: str) -> int:
    return int((lab.state_dir / "nodes" / node / "sshd.pid").read_text())


def _netns_pids(lab, node: str) -> list[int]:
    ns = f"{lab.name}-{node}"
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=True).stdout
    return [int(p) for p in out.split()]


def test_a_dead_client_node_is_reported_and_the_others_kept(netns_lab):
    netns_lab.cli("deploy", check=True)
    os.kill(_sshd_pid(netns_lab, "client2"), signal.SIGTERM)  # client2's sshd is gone: no new logins
    time.sleep(0.2)
    rc, out = run_json(netns_lab, "tcp")
    assert rc == 1
    by = {r["node"]: r for r in out["results"]}
    assert by["client1"]["ok"] and by["client3"]["ok"]
    assert not by["client2"]["ok"] and "connection refused" in by["client2"]["error"]


def test_a_client_node_dying_mid_run_keeps_the_others(netns_lab):
    netns_lab.cli("deploy", check=True)
    proc = subprocess.Popen(netns_lab.cli_argv("run", "tcp", "--repeat", "40", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        first = json.loads(proc.stdout.readline())
        assert all(r["ok"] for r in first["results"])
        for pid in _netns_pids(netns_lab, "client3"):  # the node dies: its sshd and every session
            os.kill(pid, signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    last = json.loads(stdout.splitlines()[-1])
    by = {r["node"]: r for r in last["results"]}
    assert by["client1"]["ok"] and by["client2"]["ok"]
    assert not by["client3"]["ok"] and by["client3"]["error"]


def test_server_down_clients_report_connection_refused(netns_lab):
    netns_lab.cli("deploy", check=True)
    from labctl.deploy import stop_server
    from labctl.remote import Connection

    inventory = netns_lab.inventory
    with Connection(inventory.server) as conn:
        assert stop_server(conn) is True
    rc, out = run_json(netns_lab, "tcp", "--no-deploy")
    assert rc == 1
    assert len(out["results"]) == 3
    for r in out["results"]:
        assert not r["ok"] and "connection refused" in r["error"], r
    # without --no-deploy, run notices the server is not running and starts it again
    rc, out = run_json(netns_lab, "tcp")
    assert rc == 0 and all(r["ok"] for r in out["results"])


def test_bad_input_is_one_clear_line(netns_lab):
    proc = netns_lab.cli("capture", "--port", "70000", "--duration", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "1..65535" in proc.stderr
    proc = netns_lab.cli("capture", "--node", "nosuch", "--duration", "1")
    assert proc.returncode == 1 and "no node named 'nosuch'" in proc.stderr
    proc = netns_lab.cli("run", "tcp", "--send", "GET TIME")
    assert proc.returncode == 2 and "--send is for the line protocol" in proc.stderr
