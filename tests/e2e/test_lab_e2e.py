"""The embedded lab against the real thing: namespaces, bridge, one sshd per node, paramiko sessions."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from dataclasses import replace

import paramiko
import pytest

from labctl.backends.netns import linux
from labctl.backends.netns.state import plan
from labctl.inventory import LabNotUp
from labctl.lab import load_lab
from labctl.remote import Connection, Group, HostKeyError, RemoteError
from labctl.safety import check_route

pytestmark = pytest.mark.lab


def pids_of(state_dir) -> dict[str, int]:
    """Each node's sshd pid, from its pid file."""
    return {d.name: int((d / "sshd.pid").read_text()) for d in sorted((state_dir / "nodes").iterdir())
            if (d / "sshd.pid").exists()}


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_up_status_ssh_down_through_the_cli(make_lab):
    lab = make_lab(clients=3)
    up = lab.cli("up", "--json")
    assert up.returncode == 0, up.stderr
    hosts = json.loads(up.stdout)["hosts"]
    assert [h["name"] for h in hosts] == ["server", "client1", "client2", "client3"]
    assert [h["address"] for h in hosts] == [f"192.168.120.{i}" for i in (2, 3, 4, 5)]
    for h in hosts:
        assert (h["port"], h["user"], h["lab_interface"]) == (22, "root", "eth0")
        assert h["interface"] == f"{lab.name}-br"
        assert h["host_key"].startswith("ssh-ed25519 ")
        assert stat.S_IMODE(os.stat(h["key"]).st_mode) == 0o600
    known = (lab.state_dir / "known_hosts").read_text().splitlines()
    assert known == [f"{h['address']} {h['host_key']}" for h in hosts]

    status = lab.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["backend"] == "netns"
    assert [{k: n[k] for k in ("name", "role", "address", "up")} for n in report["nodes"]] == \
        [{"name": h["name"], "role": h["role"], "address": h["address"], "up": True} for h in hosts]

    # command mode: words arrive intact (shlex.join), the exit status comes back
    ssh = lab.cli("ssh", "client2", "sh", "-c", 'echo "$(hostname)|$1|$2"; exit 7', "sh", "a b", "$HOME")
    assert ssh.returncode == 7, ssh.stderr
    assert ssh.stdout.strip() == "client2|a b|$HOME"
    assert lab.cli("ssh", "nosuch", "true").returncode == 1

    down = lab.cli("down")
    assert down.returncode == 0, down.stderr
    assert lab.leftovers() == []
    after = lab.cli("status", "--json")
    assert after.returncode == 1
    assert not any(n["up"] for n in json.loads(after.stdout)["nodes"])
    refused = lab.cli("ssh", "server", "true")
    assert refused.returncode == 1 and "lab is not up" in refused.stderr
    assert lab.cli("down").returncode == 0  # down twice is fine


def test_nodes_are_separate_machines_reached_with_pinned_keys(netns_lab, tmp_path):
    inventory = netns_lab.inventory
    with Group(inventory.hosts) as group:
        result = group.run(["sh", "-c", "hostname; ip -4 -o addr show dev eth0; ip -4 route; "
                                        "cat /sys/class/net/eth0/address; ls -A /root"])
        assert result.ok, result.failures
        for host in inventory:
            lines = result[host.name].stdout.splitlines()
            assert lines[0] == host.name  # own UTS namespace
            assert f"inet {host.address}/24" in lines[1]
            assert not any(line.startswith("default") for line in lines)  # no way out of the lab
            assert lines[-2:] == [".bashrc", ".profile"]  # a minimal private /root

        routes = group.run(["ip", "-4", "route"])
        for host in inventory:  # the lab subnet, and the host's /32 with quickack (SSH): no way out
            assert routes[host.name].stdout.splitlines() == [
                f"192.168.120.0/24 dev eth0 proto kernel scope link src {host.address} ",
                "192.168.120.1 dev eth0 scope link quickack 1 "]

        marker = tmp_path / "marker"
        marker.write_text("only on the server\n")
        server, client = group.connections["server"], group.connections["client1"]
        server.put(marker, "/root/marker")
        server.put(marker, "/tmp/marker")
        assert server.run(["cat", "/root/marker", "/tmp/marker"]).stdout.count("only on the server") == 2
        assert client.run(["ls", "/root/marker"], check=False).exited != 0
        assert client.run(["ls", "/tmp/marker"], check=False).exited != 0
        assert not os.path.exists("/root/marker")

    # the known_hosts file pins the keys for any client: paramiko with RejectPolicy accepts exactly those
    server_host = inventory.get("server")
    client = paramiko.SSHClient()
    client.load_host_keys(str(netns_lab.state_dir / "known_hosts"))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(server_host.address, username="root", key_filename=str(server_host.key_file),
                       allow_agent=False, look_for_keys=False, timeout=5)
        _, out, _ = client.exec_command("hostname")
        assert out.read().decode().strip() == "server"
    finally:
        client.close()

    # another node's key pinned for the server: refused, never accepted
    wrong = replace(server_host, host_key=inventory.get("client1").host_key)
    with pytest.raises(HostKeyError):
        Connection(wrong).open()
    unknown = paramiko.SSHClient()
    unknown.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        unknown.connect(server_host.address, username="root", key_filename=str(server_host.key_file),
                        allow_agent=False, look_for_keys=False, timeout=5)
    unknown.close()


def test_tx_checksum_offload_is_off_on_both_veth_ends(netns_lab):
    inventory = netns_lab.inventory
    with linux.socket.socket(linux.socket.AF_INET, linux.socket.SOCK_DGRAM) as sock:
        for node_plan_veth in (f"{netns_lab.name}-srv", f"{netns_lab.name}-c1"):
            assert linux.tx_checksum(sock, node_plan_veth) is False
    out = subprocess.run(["ethtool", "-k", f"{netns_lab.name}-srv"], capture_output=True, text=True).stdout
    assert "tx-checksumming: off" in out
    with Connection(inventory.get("server")) as server:
        assert "tx-checksumming: off" in server.run(["ethtool", "-k", "eth0"]).stdout


def test_up_is_idempotent(make_lab):
    lab = make_lab(clients=2)
    first = lab.up()
    pids = pids_of(lab.state_dir)
    second = lab.up()
    assert second.hosts == first.hosts  # same addresses, same pinned host keys, same key file
    assert pids_of(lab.state_dir) == pids  # nothing restarted
    again = lab.cli("up")
    assert again.returncode == 0, again.stderr
    assert pids_of(lab.state_dir) == pids
    with Group(second.hosts) as group:
        assert group.open().ok


def test_up_with_another_size_rebuilds_the_lab(make_lab):
    lab = make_lab(clients=2)
    lab.up()
    bigger = lab.up(clients=4)
    assert [h.name for h in bigger] == ["server", "client1", "client2", "client3", "client4"]
    smaller = lab.up(clients=1)
    assert [h.name for h in smaller] == ["server", "client1"]
    assert not linux.netns_exists(f"{lab.name}-client3")
    assert not linux.link_exists(f"{lab.name}-c4")


def test_a_killed_node_sshd_is_down_and_the_others_are_fine(netns_lab):
    backend = netns_lab.backend()
    victim = pids_of(netns_lab.state_dir)["client2"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not linux.process_alive(victim), what="sshd to die")

    status = {n.name: n for n in backend.status()}
    assert not status["client2"].up and "not running" in status["client2"].detail
    assert all(status[name].up for name in ("server", "client1", "client3"))
    cli = netns_lab.cli("status", "--json")
    assert cli.returncode == 1
    assert {n["name"]: n["up"] for n in json.loads(cli.stdout)["nodes"]} == \
        {"server": True, "client1": True, "client2": False, "client3": True}

    with Group(netns_lab.inventory.hosts) as group:
        opened = group.run(["hostname"])
    assert set(opened.failures) == {"client2"} and isinstance(opened.failures["client2"], RemoteError)
    assert {name: r.stdout.strip() for name, r in opened.results.items()} == \
        {"server": "server", "client1": "client1", "client3": "client3"}

    backend.up()  # up repairs: restarts the dead sshd only
    assert all(n.up for n in backend.status())
    assert pids_of(netns_lab.state_dir)["client2"] != victim


def _start_up(lab, clients: int) -> subprocess.Popen:
    return subprocess.Popen(lab.cli_argv("up", "--clients", str(clients)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_progress(proc: subprocess.Popen, words: str) -> list[str]:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if words in line:
            return seen
    raise AssertionError(f"up ended before {words!r}: {''.join(seen)}")


@pytest.mark.parametrize(("sig", "stage"), [(signal.SIGINT, "starting"), (signal.SIGINT, "checking SSH"),
                                            (signal.SIGTERM, "starting")])
def test_interrupting_up_leaves_nothing_behind(make_lab, sig, stage):
    lab = make_lab(clients=3)
    proc = _start_up(lab, 31)
    try:
        _wait_for_progress(proc, stage)
        assert linux.netns_exists(f"{lab.name}-server")  # really mid-way: the lab is half made
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert lab.leftovers() == []


def test_clean_after_kill_9_during_up(make_lab):
    lab = make_lab(clients=3)
    proc = _start_up(lab, 15)
    try:
        _wait_for_progress(proc, "starting")
        time.sleep(0.03)  # some sshds forked, some not
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = lab.leftovers()
    assert any(item.startswith("netns ") for item in left), left  # the kill really left a half lab
    status = lab.cli("status", "--json")
    assert status.returncode == 1 and "incomplete" in status.stdout
    clean = lab.cli("clean")
    assert clean.returncode == 0, clean.stderr
    assert "removed" in clean.stdout and "namespace" in clean.stdout
    assert lab.leftovers() == []
    assert "nothing to clean" in lab.cli("clean").stdout


def test_connections_are_refused_unless_the_route_leaves_by_the_lab_bridge(make_lab):
    lab = make_lab(clients=1)
    host = lab.up().get("server")
    check_route(host.address, host.interface)  # up: fine
    with pytest.raises(LabNotUp, match="lab is not up: run labctl up"):
        check_route("198.51.100.7", host.interface)  # an address outside the lab: refused
    lab.backend().down()
    with pytest.raises(LabNotUp, match="lab is not up: run labctl up"):
        check_route(host.address, host.interface)
    with pytest.raises(LabNotUp):
        Connection(host).open()
    refused = lab.cli("ssh", "server", "true")
    assert refused.returncode == 1 and "lab is not up: run labctl up" in refused.stderr


def test_a_subnet_already_in_use_is_refused(make_lab):
    lab = make_lab(clients=1)
    dummy = f"{lab.name}-dm"
    subprocess.run(["ip", "link", "add", dummy, "type", "bridge"], check=True)  # no dummy module here
    try:
        subprocess.run(["ip", "addr", "add", "192.168.120.77/24", "dev", dummy], check=True)
        subprocess.run(["ip", "link", "set", dummy, "up"], check=True)
        result = lab.cli("up")
        assert result.returncode == 1
        assert "192.168.120.0/24 is already in use" in result.stderr and dummy in result.stderr
        assert "Traceback" not in result.stderr
        assert not linux.netns_exists(f"{lab.name}-server")
    finally:
        subprocess.run(["ip", "link", "del", dummy], check=False)
    assert lab.leftovers() == []


def test_names_that_are_not_ours_are_refused_and_kept(make_lab):
    lab = make_lab(clients=1)
    foreign = f"{lab.name}-server"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        result = lab.cli("up")
        assert result.returncode == 1
        assert f"network namespace {foreign}" in result.stderr and "will not touch" in result.stderr
        assert linux.netns_exists(foreign)  # not ours: left alone, by up and by clean
        lab.cli("clean")
        assert linux.netns_exists(foreign)
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=False)


def test_32_nodes(make_lab):
    lab = make_lab(clients=31)
    inventory = lab.up()
    assert len(inventory) == 32
    assert [n.netns for n in plan(load_lab(lab.lab_file, clients=31)).nodes] == \
        [f"{lab.name}-{h.name}" for h in inventory]
    with Group(inventory.hosts) as group:
        result = group.run(["hostname"])
    assert result.ok, result.failures
    assert all(result[h.name].stdout.strip() == h.name for h in inventory)
    assert all(n.up for n in lab.backend().status())
    lab.backend().down()
    assert lab.leftovers() == []


def test_a_node_that_does_not_come_up_is_named_with_the_reason(make_lab, monkeypatch):
    from labctl.backends.netns import sshd
    from labctl.backends.netns.backend import NodeFailed

    real_config = sshd.sshd_config

    def broken_for_client1(node, state, port=22):
        text = real_config(node, state, port)
        return text + "NoSuchOption yes\n" if node.name == "client1" else text

    monkeypatch.setattr(sshd, "sshd_config", broken_for_client1)
    lab = make_lab(clients=2)
    with pytest.raises(NodeFailed, match=r"node client1 did not come up: its sshd exited \(.*NoSuchOption"):
        lab.up()
    assert lab.leftovers() == []  # a failed up rolls back like an interrupted one
