"""deploy, run and capture against a real OpenSSH sshd on loopback (no lab, no lock needed).

Four "nodes" (server, client1..3) are four names for one sshd on 127.0.0.1; each test gets its own
remote directory, and the lab's ports are free high ports, so nothing collides with a running lab.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from loopback_sshd import free_port, loopback_sshd

from labctl.capture import CaptureError, capture, parse_stats
from labctl.deploy import LAUNCHER_FILES, ensure, probe, program_for, stop_server
from labctl.inventory import Host, Inventory
from labctl.lab import Lab, Ports
from labctl.remote import Group
from tests.requires import require_tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def loop_sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 accepting one generated key; stopped by PID."""
    extra = "MaxSessions 100\nMaxStartups 100\n"
    with loopback_sshd(tmp_path_factory.mktemp("sshd"), extra_config=extra) as d:
        yield {"port": d.port, "key_file": d.key_file, "host_key": d.host_key}


@pytest.fixture
def loop_lab(loop_sshd, tmp_path):
    """An inventory of server + client1..3 on the loopback sshd, with free ports and its own remote dir."""
    ports = Ports(tcp=free_port(), proto=free_port(), time=free_port())
    lab = Lab(name="loop", clients=3, ports=ports)  # only its ports matter: the hosts are on loopback
    common = {"address": "127.0.0.1", "port": loop_sshd["port"], "user": "root",
              "key_file": loop_sshd["key_file"], "host_key": loop_sshd["host_key"],
              "interface": "lo", "lab_interface": "lo"}
    hosts = (Host(name="server", role="server", **common),
             *(Host(name=f"client{i}", role="client", **common) for i in range(1, 4)))
    remote = tmp_path / "remote"
    remote.mkdir()
    inventory = Inventory(backend="loop", hosts=hosts, lab=lab)
    yield inventory, str(remote)
    # stop whatever server the test left running, by its recorded PID (the keeper stops its group)
    for pid_file in (remote / "servers").glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_deploy_copies_only_what_changed_and_manages_the_server(loop_lab):
    inventory, remote = loop_lab
    ports = inventory.lab.ports
    with Group(inventory.hosts) as g:
        first = ensure(g, ports, remote_dir=remote)
        assert first.ok, first.to_json()
        server = first.nodes[0]
        assert "timeserver.py" in server.copied  # (the launcher: shared with the "clients" here)
        there = set(server.copied + server.unchanged)
        assert {"serverctl.py", "startat.py", "timeserver_protocol.py"} <= there
        assert server.server.startswith("started pid ")
        assert set(server.listening) >= {f"tcp {ports.tcp}", f"udp {ports.tcp}", f"tcp {ports.proto}"}
        # the three "clients" share one directory here: whoever looks first copies, the others may not
        assert all(sorted(n.copied + n.unchanged) == sorted([*LAUNCHER_FILES, "timeclient.py"])
                   for n in first.nodes[1:])
        assert any(n.copied for n in first.nodes[1:])
        pid = int(server.server.split()[-1])
        assert Path(f"/proc/{pid}").exists()
        # the server answers on its TCP port (RFC 868 on the time port too)
        with socket.create_connection(("127.0.0.1", ports.tcp), timeout=2) as s:
            assert s.recv(100).strip()
        with socket.create_connection(("127.0.0.1", ports.time), timeout=2) as s:
            assert len(s.recv(8)) == 4

        again = ensure(g, ports, remote_dir=remote)
        assert again.ok
        assert again.nodes[0].copied == [] and again.nodes[0].server == f"running pid {pid}"
        assert all(n.copied == [] for n in again.nodes)

        # a changed port restarts the server (its command line is part of what is deployed)
        moved = Ports(tcp=free_port(), proto=ports.proto, time=ports.time)
        third = ensure(g, moved, remote_dir=remote)
        assert third.nodes[0].server.startswith("restarted pid ")
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]

        assert stop_server(g.connections["server"], remote_dir=remote) is True
        assert probe(g.connections["server"], program_for(inventory), remote).server_pid is None


def test_deploy_reports_a_dead_node_and_keeps_the_others(loop_lab):
    inventory, remote = loop_lab
    dead = Host(**{**inventory.hosts[1].__dict__, "name": "client9", "port": free_port()})
    with Group([*inventory.hosts, dead]) as g:
        report = ensure(g, inventory.lab.ports, remote_dir=remote)
    assert not report.ok
    by_node = {n.node: n for n in report.nodes}
    assert "connection refused" in by_node["client9"].error
    assert by_node["server"].ok and by_node["server"].server.startswith("started")


def test_capture_on_loopback_brings_every_packet_home_and_flags_lo_double_count(loop_lab, tmp_path):
    tcpdump = require_tool("tcpdump")
    inventory, remote = loop_lab
    port = free_port()
    sent = [b"x%d" % i for i in range(20)]
    with Group([inventory.server]) as g:
        conn = g.connections["server"]

        def talk():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                for payload in sent:
                    u.sendto(payload, ("127.0.0.1", port))

        # On "lo" the kernel's filter also counts each packet's outgoing copy, which libpcap then
        # discards: tcpdump reports 20 captured of (at least) 40 received. capture cannot tell that
        # from lost packets, so it says INCOMPLETE rather than pass it silently; the pcap comes home
        # anyway, with every packet, and the remote copy is removed. (On a lab node's eth0 the counts
        # agree: tests/e2e/test_exercise_e2e.py checks captured == received there.)
        with pytest.raises(CaptureError, match=r"INCOMPLETE on server: tcpdump says 20 captured, "
                                               r"\d+ received by filter, 0 dropped") as err:
            capture(conn, [port], output=tmp_path / "c.pcap", during=talk, settle=0.05, remote_dir=remote)
        assert int(str(err.value).split(", ")[1].split()[0]) >= 40
        assert str(tmp_path / "c.pcap") in str(err.value)
    # every datagram sent is in the file, once, in order (read back by tcpdump itself)
    read = subprocess.run([tcpdump, "-r", str(tmp_path / "c.pcap"), "-nn", "-A", "-q"], capture_output=True,
                          text=True, check=True).stdout
    headers = [line for line in read.splitlines() if f"127.0.0.1.{port}: UDP" in line]
    assert len(headers) == len(sent), read
    assert [int(h.rsplit("length ", 1)[1]) for h in headers] == [len(p) for p in sent]
    assert not list(Path(remote).glob("labctl-capture-*"))  # the remote pcap and log are removed
    assert not subprocess.run(["pgrep", "-f", f"{remote}/labctl-capture-"], capture_output=True).stdout


def test_parse_stats_needs_all_three_counts():
    assert parse_stats("1 packet captured\n1 packet received by filter\n0 packets dropped by kernel\n") \
        .complete
    assert not parse_stats("1 packet captured\n2 packets received by filter\n0 packets dropped by kernel\n") \
        .complete
    with pytest.raises(CaptureError, match="statistics"):
        parse_stats("tcpdump: lo: No such device exists\n")


def test_deploy_refuses_to_share_the_port_with_a_foreign_server(loop_lab):
    inventory, remote = loop_lab
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # like a second timeserver would
        squatter.bind(("127.0.0.1", inventory.lab.ports.tcp))
        squatter.listen()
        with Group([inventory.server]) as g:
            report = ensure(g, inventory.lab.ports, remote_dir=remote)
    assert not report.ok
    tcp = inventory.lab.ports.tcp
    assert f"port tcp {tcp} is already in use by pid {os.getpid()}" in report.nodes[0].error
    assert not list((Path(remote) / "servers").glob("*.pid"))


def _program(inventory, remote, **entry):
    from labctl.programs import parse_program

    return program_for(inventory, parse_program("mine", entry))


def test_run_a_foreign_client_through_the_launcher_over_real_ssh(loop_lab, tmp_path):
    """The whole path of `labctl run` for a program labctl did not write: deploy, startat, the tether."""
    from labctl.run import Runner

    inventory, remote = loop_lab
    client = tmp_path / "client.py"  # a student's client: not executable, run with its interpreter
    client.write_text("import socket, sys\ns = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
                      "print('got', s.recv(100).decode().strip(), 'on', sys.argv[3])\n")
    client.chmod(0o644)
    program = _program(inventory, remote, server="builtin", client=f"{client} {{server}} {{port}} {{node}}")
    with Runner(inventory, remote_dir=remote) as runner:
        result = runner.trigger(program)
    assert result.ok, [r.error for r in result.results]
    assert sorted(r.reply.split()[-1] for r in result.results) == ["client1", "client2", "client3"]
    assert all(r.reply.startswith("got 20") and r.exit == 0 for r in result.results)
    assert all({"start", "ready", "execve", "exec", "end"} <= set(r.timings) for r in result.results)
    assert result.spread_ms is not None


def test_ctrl_c_during_run_stops_every_client_and_keeps_what_came_back(loop_lab, tmp_path):
    import threading

    from labctl.run import Runner

    inventory, remote = loop_lab
    marker = f"labctl-test-hang-{os.getpid()}-{free_port()}"
    # a client that hangs, and a child of it, both with the marker in their command lines
    client = ("python3 -c 'import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, *sys.argv[1:]]); time.sleep(300)' "
              f"-c 'import time; time.sleep(300)' {marker}")
    program = _program(inventory, remote, server="builtin", client=client, timeout=300)
    running: list[str] = []

    def ctrl_c() -> None:
        running.extend(subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split())
        os.kill(os.getpid(), signal.SIGINT)

    with Runner(inventory, remote_dir=remote) as runner:
        runner.prepare(program)
        timer = threading.Timer(runner.prepared.lead + 1.0, ctrl_c)
        timer.start()
        try:
            result = runner.trigger(program)
        finally:
            timer.cancel()
    assert len(running) >= 6  # (while it ran: 3 clients and a child each)
    assert result.interrupted and not result.ok and len(result.results) == 3
    assert all(r.error == "interrupted (Ctrl-C): its client was stopped" for r in result.results)
    deadline = time.monotonic() + 5
    left = ["?"]
    while left and time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []  # nothing of any client is left running
