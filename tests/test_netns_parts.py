"""The namespace backend's parts that need no root: names, manifest, configs, keys, probes, preflight."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from labctl.backends import keys, probes
from labctl.backends.base import BackendError
from labctl.backends.netns import NetnsBackend, linux, sshd
from labctl.backends.netns import backend as netns_backend
from labctl.backends.netns import preflight as preflight_module
from labctl.backends.netns.backend import SubnetInUse
from labctl.backends.netns.preflight import PreflightError, Tool, install_command, problems
from labctl.backends.netns.state import IFNAMSIZ, LabPlan, StateDir, plan, veth_name
from labctl.backends.probes import subnet_users, tcp_accepting
from labctl.inventory import LabNotUp
from labctl.lab import MAX_CLIENTS, Lab
from tests.requires import require_file
from tests.said import stderr_lines

# --- names and manifest ------------------------------------------------------------------------------

def test_names_are_prefixed_by_the_lab_and_fit_ifnamsiz():
    p = plan(Lab(name="abcdefgh", clients=MAX_CLIENTS))
    assert p.bridge == "abcdefgh-br"
    assert p.nodes[0].netns == "abcdefgh-server" and p.nodes[0].veth == "abcdefgh-srv"
    assert p.nodes[-1].netns == "abcdefgh-client200" and p.nodes[-1].veth == "abcdefgh-c200"
    names = [p.bridge, *(n.veth for n in p.nodes)]
    assert max(len(n) for n in names) <= IFNAMSIZ
    assert len(set(names)) == len(names)


def test_default_lab_plan():
    p = plan(Lab())
    assert [(n.name, n.netns, n.veth, n.address) for n in p.nodes] == [
        ("server", "lab-server", "lab-srv", "192.168.20.2"),
        ("client1", "lab-client1", "lab-c1", "192.168.20.3"),
        ("client2", "lab-client2", "lab-c2", "192.168.20.4"),
        ("client3", "lab-client3", "lab-c3", "192.168.20.5")]
    assert (p.host_address, p.prefixlen, p.complete) == ("192.168.20.1", 24, False)
    assert veth_name("lab", "client17") == "lab-c17"


def test_manifest_round_trips_and_compares_by_shape(tmp_path):
    state = StateDir(tmp_path / "lab")
    assert state.read_plan() is None
    p = plan(Lab(clients=2))
    state.write_plan(p)
    assert stat.S_IMODE(os.stat(state.root).st_mode) == 0o700
    back = state.read_plan()
    assert back == p and back.same_shape(p)
    assert json.loads(state.manifest.read_text())["version"] == 1
    assert not p.same_shape(plan(Lab(clients=3)))
    assert p.node("client2").address == "192.168.20.4"
    with pytest.raises(BackendError, match="no node named 'client5'"):
        p.node("client5")


def test_a_damaged_manifest_is_a_clear_error(tmp_path):
    state = StateDir(tmp_path)
    state.manifest.write_text("{not json")
    with pytest.raises(BackendError, match="damaged"):
        state.read_plan()


def test_pid_and_log_helpers(tmp_path):
    state = StateDir(tmp_path)
    state.node_dir("server").mkdir(parents=True)
    assert state.read_pid("server") is None and state.log_tail("server") == ""
    state.pid_file("server").write_text("1234\n")
    state.log_file("server").write_text("a\nb\nc\nd\n")
    assert state.read_pid("server") == 1234
    assert state.log_tail("server") == "b / c / d"


# --- what up creates ---------------------------------------------------------------------------------

def test_create_commands_make_an_isolated_lab():
    p = plan(Lab(clients=1))
    cmds = netns_backend._create_commands(p)
    assert cmds[:3] == ["link add lab-br type bridge", "addr add 192.168.20.1/24 dev lab-br noprefixroute",
                        "link set lab-br up"]
    assert cmds[3] == "route add 192.168.20.0/24 dev lab-br src 192.168.20.1 quickack 1"
    assert "link add lab-srv type veth peer name eth0 netns lab-server" in cmds
    assert "link set lab-c1 master lab-br up" in cmds
    assert not any("default" in c or "via" in c for c in cmds)  # no way out


def test_sshd_config_is_key_only_and_per_node(tmp_path):
    state = StateDir(tmp_path / "lab")
    node = plan(Lab()).nodes[1]
    text = sshd.sshd_config(node, state)
    lines = {line.split()[0]: line.split(None, 1)[1] for line in text.splitlines() if line and line[0] != "#"}
    assert lines["ListenAddress"] == "192.168.20.3:22"
    assert lines["HostKey"] == str(state.host_key("client1"))
    assert lines["PidFile"] == str(state.pid_file("client1"))
    assert lines["AuthorizedKeysFile"] == str(state.authorized_keys)
    for key, value in {"PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no", "UsePAM": "no",
                       "PermitRootLogin": "prohibit-password", "AllowTcpForwarding": "no",
                       "AllowAgentForwarding": "no", "X11Forwarding": "no", "PermitTunnel": "no",
                       "Subsystem": "sftp internal-sftp", "StrictModes": "yes"}.items():
        assert lines[key] == value, key


def test_sshd_accepts_the_config(tmp_path):
    require_file(sshd.SSHD, "apt-get install openssh-server")
    state = StateDir(tmp_path / "lab")
    node = plan(Lab()).nodes[0]
    state.root.mkdir()
    state.authorized_keys.write_text("")
    sshd.prepare_node(node, state, "test")
    check = subprocess.run([sshd.SSHD, "-t", "-f", str(state.sshd_config("server"))],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_prepare_node_writes_a_private_home_and_a_0600_host_key(tmp_path):
    state = StateDir(tmp_path / "lab")
    node = plan(Lab()).nodes[0]
    public = sshd.prepare_node(node, state, "labctl@lab")
    assert public.startswith("ssh-ed25519 ") and len(public.split()) == 2
    assert stat.S_IMODE(os.stat(state.host_key("server")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state.node_root("server")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state.node_tmp("server")).st_mode) == 0o1777
    assert sorted(p.name for p in state.node_root("server").iterdir()) == [".bashrc", ".profile"]
    key = paramiko.Ed25519Key.from_private_key_file(str(state.host_key("server")))
    assert f"{key.get_name()} {key.get_base64()}" == public  # the pinned key is this node's key


def test_generated_keys_are_distinct_ed25519_openssh_keys():
    (priv1, pub1), (priv2, _) = keys.generate_keypair("a"), keys.generate_keypair("b")
    assert priv1 != priv2
    assert priv1.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub1.startswith("ssh-ed25519 ") and pub1.endswith(" a")


# --- probes: subnet in use, TCP port, processes ------------------------------------------------------

ROUTES = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel"},
    {"type": "local", "dst": "192.168.20.9", "dev": "wlan0", "table": "local"},
    {"dst": "192.168.20.0/24", "dev": "lab-br"},
    {"dst": "192.168.0.0/16", "dev": "tun0"},
]


def fake_ip(monkeypatch, routes):
    def run(argv, **kwargs):
        assert argv[:3] == ["ip", "-j", "-4"]
        return subprocess.CompletedProcess(argv, 0, json.dumps(routes), "")
    monkeypatch.setattr(probes.subprocess, "run", run)


def test_subnet_users_finds_overlapping_routes_and_addresses(monkeypatch):
    fake_ip(monkeypatch, ROUTES)
    users = subnet_users("192.168.20.0/24", exclude_dev="lab-br")
    assert users == ["local 192.168.20.9 dev wlan0", "route 192.168.0.0/16 dev tun0"]
    assert subnet_users("10.9.0.0/24", exclude_dev="lab-br") == []


def test_a_subnet_in_use_is_refused_before_anything_is_made(monkeypatch, tmp_path):
    fake_ip(monkeypatch, ROUTES)
    backend = NetnsBackend(Lab(), tmp_path / "lab")
    monkeypatch.setattr(linux, "netns_exists", lambda name: False)
    monkeypatch.setattr(linux, "link_exists", lambda name: False)
    with pytest.raises(SubnetInUse, match=r"192\.168\.20\.0/24 is already in use.*wlan0.*another private"):
        backend._refuse_conflicts(plan(Lab()))
    assert not (tmp_path / "lab").exists()


def test_names_that_exist_without_a_manifest_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(linux, "netns_exists", lambda name: name == "lab-client2")
    monkeypatch.setattr(linux, "link_exists", lambda name: name == "lab-br")
    with pytest.raises(BackendError, match=r"namespace lab-client2, interface lab-br.*will not touch"):
        NetnsBackend(Lab(), tmp_path / "lab")._refuse_conflicts(plan(Lab()))


def test_tcp_accepting_tells_open_from_closed_ports():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: refuses
    try:
        open_target, closed_target = listener.getsockname(), closed.getsockname()
        assert tcp_accepting([open_target, closed_target], 1.0) == {open_target}
        assert tcp_accepting([], 0.1) == set()
    finally:
        listener.close()
        closed.close()


def test_process_helpers_on_a_real_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert linux.process_alive(child.pid)
        assert linux.process_netns(child.pid) == linux.process_netns(os.getpid())
        assert linux.kill_and_wait([child.pid], timeout=2) == [child.pid]
        child.wait(timeout=5)
        assert not linux.process_alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_kill_and_wait_escalates_to_sigkill():
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
            "time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # SIGTERM is ignored from here on
        assert linux.kill_and_wait([child.pid], timeout=0.2) == [child.pid]
        assert child.wait(timeout=5) == -signal.SIGKILL  # killed, long before its 30 s sleep ended
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_not_alive():
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while linux.process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{child.pid}")  # not reaped yet: a zombie
    assert not linux.process_alive(child.pid)
    child.wait()


# --- backend state without a lab ---------------------------------------------------------------------

def test_status_inventory_and_down_of_a_lab_that_is_not_up(tmp_path):
    backend = NetnsBackend(Lab(), tmp_path / "lab")
    assert [(s.name, s.up, s.detail) for s in backend.status()][:2] == [
        ("server", False, "lab is not up"), ("client1", False, "lab is not up")]
    with pytest.raises(LabNotUp, match="lab is not up: run labctl up"):
        backend.inventory()
    backend.down()  # nothing to do is not an error
    assert backend.clean() == []


def test_an_incomplete_lab_is_reported_and_not_handed_out(tmp_path):
    backend = NetnsBackend(Lab(clients=1), tmp_path / "lab")
    backend.state.write_plan(plan(Lab(clients=1)))
    assert all("incomplete" in s.detail and not s.up for s in backend.status())
    with pytest.raises(LabNotUp, match="did not finish"):
        backend.inventory()


def test_the_manifest_records_completion():
    p = plan(Lab())
    done = netns_backend._completed(p)
    assert done.complete and done.owner_pid == os.getpid() and done.same_shape(p)
    assert LabPlan.from_json(done.to_json()) == done


# --- preflight ---------------------------------------------------------------------------------------

def test_preflight_names_the_apt_command_for_what_is_missing():
    tools = (Tool("/nonexistent/sshd", "openssh-server", "SSH"), Tool("ls", "coreutils", "x"),
             Tool("no-such-tcpdump-xyz", "tcpdump", "capture"))
    found = problems(tools, euid=0)
    assert found == ["missing: sshd (SSH), no-such-tcpdump-xyz (capture); "
                     "install with: apt-get install -y openssh-server tcpdump"]
    assert install_command([Tool("a", "p", ""), Tool("b", "p", "")]) == "apt-get install -y p"


def test_preflight_wants_root():
    found = problems((), euid=1000)
    assert len(found) == 1 and "needs root" in found[0] and "sudo" in found[0]


def test_preflight_names_each_lab_program_that_is_missing(monkeypatch):
    monkeypatch.setattr(preflight_module, "_found", lambda program: False)
    (found,) = problems(euid=0)
    for program, package in (("sshd", "openssh-server"), ("ip", "iproute2"), ("tcpdump", "tcpdump")):
        assert f"{program} (" in found and package in found.split("apt-get install -y ")[1], found


def test_a_failed_preflight_is_one_line_from_the_cli(monkeypatch, tmp_path, capsys):
    from labctl.cli import main

    lab_file = tmp_path / "lab.yml"  # a lab of this test's own, should the preflight not stop it
    lab_file.write_text("name: tpre\nsubnet: 192.168.62.0/24\nhost_address: 192.168.62.1\n"
                        "server_address: 192.168.62.2\nclients: 1\n")
    missing = "missing: tcpdump; apt-get install -y tcpdump"
    monkeypatch.setattr(preflight_module, "problems", lambda: [missing])
    assert main(["--lab", str(lab_file), "--state-dir", str(tmp_path), "up"]) == 1
    err = stderr_lines(capsys.readouterr().err)
    assert err == [f"labctl: {missing}"]
    assert not (tmp_path / "tpre").exists()


def test_up_refuses_early_when_preflight_fails(monkeypatch, tmp_path):
    from labctl.backends.netns import preflight

    monkeypatch.setattr(preflight, "problems", lambda: ["missing: tcpdump; apt-get install -y tcpdump"])
    with pytest.raises(PreflightError, match="apt-get install -y tcpdump"):
        NetnsBackend(Lab(), tmp_path / "lab").up()
    assert not (tmp_path / "lab").exists()


def test_inventory_hosts_carry_the_pinned_key_and_the_bridge(tmp_path):
    backend = NetnsBackend(Lab(clients=1), tmp_path / "lab")
    p = netns_backend._completed(plan(Lab(clients=1)))
    backend.state.write_plan(p)
    for node in p.nodes:
        backend.state.node_dir(node.name).mkdir(parents=True)
        Path(f"{backend.state.host_key(node.name)}.pub").write_text(f"ssh-ed25519 AAAA{node.name} c\n")
    inventory = backend.inventory()
    server = inventory.server
    assert (server.name, server.address, server.port, server.user) == ("server", "192.168.20.2", 22, "root")
    assert server.host_key == "ssh-ed25519 AAAAserver"
    assert (server.interface, server.lab_interface) == ("lab-br", "eth0")
    assert server.key_file == backend.state.client_key
    assert inventory.backend == "netns" and [h.name for h in inventory.clients] == ["client1"]
