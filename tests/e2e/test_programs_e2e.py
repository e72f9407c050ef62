"""Programs labctl did not write, on the real embedded lab, through the CLI as a student types it.

The seed's Go programs (``../shared/bench``), mixed pairs with ours, a student's Python client, ``nc``
over TCP and UDP, a client that hangs, a server that never listens, a binary for another machine,
Ctrl-C and a killed labctl, a capture of the Go exchange, and the ssh backend.

The seed's Go TCP client dials 192.168.20.2:8080 hard-coded, so the lab here is on 192.168.20.0/24,
the default lab's subnet: under the lab lock, and only when no other lab or interface of this machine
uses that subnet (else a visible skip, a failure under CI), with a unique name, always taken down.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from labctl.backends.netns import NetnsBackend
from labctl.lab import load_lab
from tests.e2e.conftest import REPO, STATE_ROOT, LabUnderTest, _lab_ready_or_skip, leftovers
from tests.requires import SHARED_BENCH, missing, require_file, require_tool

pytestmark = pytest.mark.lab

SUBNET = ipaddress.IPv4Network("192.168.20.0/24")
SERVER = "192.168.20.2"
GO_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \+0000 UTC")   # Go's time.Now().String()
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")             # our server's


@pytest.fixture(autouse=True)
def patient_lead(monkeypatch):
    """(see test_exercise_e2e: function, not speed, on a machine shared with benchmarks)"""
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")


def subnet_in_use() -> list[str]:
    """Addresses and routes of this machine inside 192.168.20.0/24: another lab (or a real network)."""
    found = []
    addrs = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    for line in addrs.splitlines():
        fields = line.split()
        if "inet" in fields and ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).ip in SUBNET:
            found.append(f"{fields[1]} has {fields[fields.index('inet') + 1]}")
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    for route in routes.splitlines():
        dest = route.split()[0]
        if dest != "default" and ipaddress.IPv4Network(dest, strict=False).overlaps(SUBNET):
            found.append(f"route {route}")
    return found


def seed(name: str) -> Path:
    return require_file(SHARED_BENCH / name, "the course's shared/bench beside the checkout (see its README)")


def arm_binary(path: Path) -> Path:
    """An ELF binary for aarch64 (this machine is x86-64): the seed's client with its e_machine changed."""
    data = bytearray(seed("seed-tcpclient").read_bytes())
    data[18:20] = (183).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    path.chmod(0o755)
    return path


def seed_programs_on_a_free_card_subnet() -> None:
    """The lab can be built, the seed's four Go programs are there, and 192.168.20.0/24 is free (the
    seed's Go TCP client dials 192.168.20.2 hard-coded): otherwise a skip (a failure under CI)."""
    _lab_ready_or_skip()
    for name in ("seed-tcpserver", "seed-tcpclient", "seed-udpserver", "seed-udpclient"):
        seed(name)
    busy = subnet_in_use()
    if busy:
        missing("a free 192.168.20.0/24 (the seed's Go TCP client dials 192.168.20.2 hard-coded)",
                "in use here: " + "; ".join(busy))


@pytest.fixture
def go_lab(lab_lock, tmp_path):
    """A 2-client lab on 192.168.20.0/24 with the seed's programs (and a few more) in its lab file."""
    seed_programs_on_a_free_card_subnet()
    name = "p" + secrets.token_hex(3)
    arm_binary(tmp_path / "arm-client")
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text(f"""name: {name}
subnet: 192.168.20.0/24
host_address: 192.168.20.1
server_address: {SERVER}
clients: 2
programs:
  go-tcp:
    server: {SHARED_BENCH}/seed-tcpserver -port 8080
    client: {SHARED_BENCH}/seed-tcpclient
  go-udp:
    server: {SHARED_BENCH}/seed-udpserver -port {{port}}
    client: {SHARED_BENCH}/seed-udpclient {{server}}:{{port}}
  nc-udp:
    server: builtin
    client: nc -u -w 2 {{server}} {{port}}
    input: "anything\\n"
  hang2:
    server: builtin
    client: sh -c 'if [ {{node}} = client2 ]; then exec sleep 120; fi; exec nc {{server}} {{port}}'
    timeout: 1.5
  hang:
    server: builtin
    client: sleep 300
    timeout: 300
  deaf:
    server: sh -c 'echo warming up; echo "cannot bind, sorry" >&2; exec sleep 60'
    client: nc {{server}} {{port}}
    ready_timeout: 2
  arm:
    server: builtin
    client: ./arm-client
  armserver:
    server: ./arm-client
    client: nc {{server}} {{port}}
""")
    lab = LabUnderTest(name, lab_file, 2)
    backend = NetnsBackend(load_lab(lab_file), STATE_ROOT / name)
    try:
        lab.up()
        yield lab
    finally:
        backend.clean()
        left = leftovers(name, STATE_ROOT / name)
        assert not left, f"left behind: {left}"


def run_json(lab, *args: str, timeout: float = 120) -> tuple[int, dict, str]:
    proc = lab.cli("run", *args, "--json", timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from run: rc={proc.returncode} {proc.stderr}"
    return proc.returncode, json.loads(lines[-1]), proc.stderr


def client_processes(lab, node: str) -> list[str]:
    """What runs in a client node besides its sshd listener (after a run: nothing)."""
    pids = subprocess.run(["ip", "netns", "pids", f"{lab.name}-{node}"], capture_output=True,
                          text=True).stdout
    out = []
    for pid in pids.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state not in "ZX" and not cmd.startswith("sshd:") and "sshd -D" not in cmd:
            out.append(f"{pid} {cmd}")
    return out


def nothing_left_on_clients(lab, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = client_processes(lab, "client1") + client_processes(lab, "client2")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_the_seeds_go_programs_end_to_end(go_lab):
    deploy = go_lab.cli("deploy", "go-tcp", "--json")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    server = json.loads(deploy.stdout)["nodes"][0]
    assert "programs/go-tcp/seed-tcpserver" in server["copied"] and server["server"].startswith("started")
    assert server["listening"] == ["tcp 8080"]

    rc, out, _ = run_json(go_lab, "go-tcp")
    assert rc == 0, out
    assert out["program"] == "go-tcp" and [r["node"] for r in out["results"]] == ["client1", "client2"]
    for r in out["results"]:
        assert r["ok"] and r["exit"] == 0 and r["error"] is None, r
        assert GO_TIME.search(r["reply"]) and r["reply"].endswith("...Hallo"), r["reply"]
        assert {"start", "exec", "end"} <= set(r["timings"]) and r["timings"]["start"] < r["timings"]["exec"]
    assert isinstance(out["spread_ms"], float)

    rc, out, stderr = run_json(go_lab, "go-udp")
    assert rc == 0, out
    assert "stopped go-tcp" in stderr  # one server per port: the Go TCP server held 8080
    for r in out["results"]:  # the Go UDP server's answer: Go's time format, and no "...Hallo"
        assert r["ok"] and GO_TIME.search(r["reply"]) and "Hallo" not in r["reply"], r
    logs = go_lab.cli("logs", "server")
    assert logs.returncode == 0 and "go-udp (running" in logs.stdout
    assert "192.168.20.3" in logs.stdout  # the seed's UDP server prints each peer
    assert nothing_left_on_clients(go_lab) == []


def test_mixed_pairs_our_server_with_their_client_and_theirs_with_ours(go_lab):
    rc, out, _ = run_json(go_lab, "tcp", "--client", str(SHARED_BENCH / "seed-tcpclient"))
    assert rc == 0, out
    for r in out["results"]:  # the Go client printed our server's time (and an empty line: Println)
        assert r["ok"] and ISO.match(r["reply"].strip()), r
    rc, out, stderr = run_json(go_lab, "tcp", "--server", f"{SHARED_BENCH}/seed-tcpserver -port {{port}}")
    assert rc == 0, out
    assert "stopped timeserver" in stderr
    for r in out["results"]:  # our built-in client read the Go server's line
        assert r["ok"] and r["reply"].endswith("...Hallo") and "connect_ms" in r["timings"], r
    rc, out, stderr = run_json(go_lab, "udp")  # back to ours: the Go server is stopped for it
    assert rc == 0 and all(ISO.match(r["reply"]) for r in out["results"]), out


def test_a_students_python_client_and_nc_over_tcp_and_udp(go_lab, tmp_path):
    require_tool("nc", "apt-get install netcat-openbsd")
    client = tmp_path / "client.py"  # as a student writes it: no #!, not executable
    client.write_text("import socket, sys\n"
                      "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
                      "print('the server says', s.recv(200).decode().strip())\n")
    client.chmod(0o644)
    rc, out, _ = run_json(go_lab, "--client", f"{client} {{server}} {{port}}")
    assert rc == 0, out
    assert out["program"] == "adhoc"
    assert all(r["ok"] and r["reply"].startswith("the server says 20") for r in out["results"]), out
    rc, out, _ = run_json(go_lab, "--client", "nc {server} {port}")
    assert rc == 0 and all(ISO.match(r["reply"]) for r in out["results"]), out
    rc, out, _ = run_json(go_lab, "nc-udp")
    assert rc == 0 and all(ISO.match(r["reply"]) for r in out["results"]), out


def test_a_hanging_client_is_killed_at_its_timeout_and_the_others_kept(go_lab):
    rc, out, _ = run_json(go_lab, "hang2")
    assert rc == 1
    by = {r["node"]: r for r in out["results"]}
    assert by["client1"]["ok"] and ISO.match(by["client1"]["reply"]), by["client1"]
    hung = by["client2"]
    assert not hung["ok"] and hung["exit"] == 124 and hung["error"].startswith("timed out"), hung
    assert nothing_left_on_clients(go_lab) == []


def test_a_server_that_never_listens_is_a_clear_error_with_its_log(go_lab):
    proc = go_lab.cli("deploy", "deaf")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    text = " ".join(proc.stdout.split())
    assert "sh was started but it did not listen on tcp/udp 8080 within 2 s" in text, text
    assert "cannot bind, sorry" in text
    logs = go_lab.cli("logs")
    assert "deaf (not running)" in logs.stdout and "warming up" in logs.stdout


def test_a_binary_for_another_machine_is_one_clear_line(go_lab):
    rc, out, _ = run_json(go_lab, "arm")
    assert rc == 1
    for r in out["results"]:
        assert r["exit"] == 126
        assert r["error"] == f"exec format error: arm-client is aarch64, {r['node']} is x86-64"
    proc = go_lab.cli("deploy", "armserver", "--json")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["nodes"][0]["error"]
    assert error == "exec format error: arm-client is aarch64, server is x86-64"


def _run_hanging(lab) -> subprocess.Popen:
    proc = subprocess.Popen(lab.cli_argv("run", "hang"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while not all(any("sleep 300" in p for p in client_processes(lab, n)) for n in ("client1", "client2")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def test_ctrl_c_during_run_stops_the_clients_and_prints_what_came_back(go_lab):
    go_lab.cli("deploy", check=True)
    proc = _run_hanging(go_lab)
    try:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)  # (the clients' timeout is 300 s)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "INTERRUPTED" in stdout and "client1" in stdout and "client2" in stdout
    assert "interrupted: every client was stopped" in stderr
    assert nothing_left_on_clients(go_lab) == []


def test_a_killed_labctl_leaves_nothing_running_on_the_nodes(go_lab):
    go_lab.cli("deploy", check=True)
    proc = _run_hanging(go_lab)
    proc.kill()   # SIGKILL: no handler of labctl's runs; the nodes notice the connection drop
    proc.communicate(timeout=30)
    assert nothing_left_on_clients(go_lab) == []


def test_capture_run_go_tcp_and_analyse(go_lab, tmp_path):
    tshark = require_tool("tshark")
    pcap = tmp_path / "go.pcap"
    proc = go_lab.cli("capture", "--run", "go-tcp", "-o", str(pcap), "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ports"] == [8080] and result["run"]["program"] == "go-tcp"
    assert result["summary"]["open"] == 0 and result["summary"]["spread_ms"] is not None
    conv = subprocess.run([tshark, "-r", str(pcap), "-q", "-z", "conv,tcp"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    pairs = re.findall(r"^\s*(\S+):\d+\s+<->\s+(\S+:\d+)\s", conv, re.M)
    assert sorted(pairs) == [("192.168.20.3", f"{SERVER}:8080"), ("192.168.20.4", f"{SERVER}:8080")], conv
    hallo = subprocess.run([tshark, "-r", str(pcap), "-Y", 'frame contains "...Hallo"', "-T", "fields",
                            "-e", "frame.number"], capture_output=True, text=True, check=True).stdout.split()
    assert len(hallo) == 2  # the Go server's line, once per client, on the wire
    analysed = go_lab.cli("analyse", str(pcap), "--json")
    assert analysed.returncode == 0, analysed.stderr
    assert "192.168.20.3" in analysed.stdout and "Traceback" not in analysed.stderr
    drawn = go_lab.cli("analyse", str(pcap))
    assert drawn.returncode == 0 and "SYN" in drawn.stdout


def test_through_the_ssh_backend(go_lab, tmp_path):
    exported = go_lab.cli("inventory", "--format", "yaml")
    assert exported.returncode == 0, exported.stderr
    inventory_file = tmp_path / "inventory.yml"
    inventory_file.write_text(exported.stdout)
    ssh = ("--backend", "ssh", "--inventory", str(inventory_file))
    proc = go_lab.cli(*ssh, "run", "go-tcp", "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(r["ok"] and r["reply"].endswith("...Hallo") for r in out["results"]), out
    assert go_lab.cli(*ssh, "logs").stdout.count("go-tcp (running") == 1


def test_bad_program_input_is_one_clear_line(go_lab):
    for args, message in ((("run", "tcp", "--timeout", "inf"), "must be a number more than 0"),
                          (("run", "tcp", "--timeout", "1e9"), "at most 3600"),
                          (("run", "nosuch"), "no program named 'nosuch'"),
                          (("run",), "run what?"),
                          (("run", "--client", "x {nope}"), "unknown placeholder {nope}"),
                          (("run", "--client", "./not-here.py"), "not-here.py not found"),
                          (("run", "go-tcp", "--send", "x"), "--send is for the line protocol"),
                          (("logs", "client1"), "client1 is a client")):
        proc = go_lab.cli(*args)
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert message in proc.stderr.strip().splitlines()[-1], (args, proc.stderr)  # (after any usage)
