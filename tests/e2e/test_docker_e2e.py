"""The docker backend for real: a private dockerd, the node image built here, the exercise through the CLI.

``up`` → ``run tcp`` → ``capture --port 8080 --run udp`` → ``down``, each as ``python labctl.py
--backend docker ...`` against a dockerd this test starts (``DOCKER_HOST``) and stops by PID. Between
the steps it checks what the backend promises: an internal network on the lab's subnet and bridge,
nodes without a default route, the forwarding guard (a node that adds one still reaches nothing beyond
the host, and does without the guard), host keys pinned from ``docker exec``, and after ``down`` nothing left:
no container, network, volume or container layer (only the cached node image), no lab state; after the
daemon stops, no process or mount of it (the fixture).
"""
from __future__ import annotations

import json
import subprocess

import pytest

from labctl.analyse import analyse_file
from labctl.backends import forward_guard
from labctl.backends.docker.image import REPOSITORY, image_tag
from labctl.lab import load_lab
from tests.requires import require_tool

pytestmark = pytest.mark.lab


def _docker_exec(client, container: str, *argv: str) -> str:
    run = client.api.exec_create(container, list(argv))
    return client.api.exec_start(run["Id"]).decode()


def _check_the_guard_keeps_a_node_in(client, lab_name: str, spec) -> None:
    """A node given a default route (root in a node can) reaches the test's outside namespace only
    while the guard is away: the host forwards for it, and Docker (--iptables=false) stops nothing."""
    from tests.e2e.test_forward_guard_e2e import OUTSIDE_END, PROBES, arrived, ip_forward_on, outside

    container = f"{lab_name}-client1"
    send = ["python3", "-c", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"[s.sendto(b'probe', ({OUTSIDE_END!r}, 9)) for _ in range({PROBES})]"]
    with outside(spec.subnet) as out, ip_forward_on():
        _docker_exec(client, container, "ip", "route", "add", "default", "via", spec.host_address)
        try:
            forward_guard.remove(lab_name)
            _docker_exec(client, container, *send)
            assert arrived(out) >= PROBES, "without the guard the test's outside must be reachable"
            before = arrived(out)
            forward_guard.install(lab_name, f"{lab_name}-dk")
            _docker_exec(client, container, *send)
            assert arrived(out) == before, "with the guard nothing from the lab reaches the outside"
            assert forward_guard.counters(lab_name)["out of the lab"] >= PROBES
        finally:
            forward_guard.install(lab_name, f"{lab_name}-dk")
            _docker_exec(client, container, "ip", "route", "del", "default")


def test_the_exercise_runs_in_containers(make_container_lab, docker_daemon, tmp_path, monkeypatch):
    require_tool("mmdebstrap", "apt-get install -y mmdebstrap (builds the node image once, in ~1.5 min)")
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")  # a shared CI machine (bench/ does the timing)
    from labctl.backends.docker.daemon import connect

    lab = make_container_lab(clients=3)
    up = lab.cli("up", "--json", timeout=600)  # the first time on a machine it builds the image (~2 min)
    assert up.returncode == 0, up.stderr
    inventory = json.loads(up.stdout)
    assert inventory["backend"] == "docker" and len(inventory["hosts"]) == 4

    client = connect()
    spec = load_lab(lab.lab_file)
    network = client.api.inspect_network(f"labctl-{lab.name}")
    assert network["Internal"] is True and network["Driver"] == "bridge"
    assert network["IPAM"]["Config"] == [{"Subnet": spec.subnet, "Gateway": spec.host_address}]
    assert network["Options"]["com.docker.network.bridge.name"] == f"{lab.name}-dk"
    route = subprocess.run(["ip", "route", "get", spec.server_address], capture_output=True, text=True)
    assert f"dev {lab.name}-dk " in route.stdout
    for host in inventory["hosts"]:
        container = f"{lab.name}-{host['name']}"
        details = client.api.inspect_container(container)
        assert details["HostConfig"]["CapAdd"] == ["NET_RAW", "NET_ADMIN"]
        assert not details["HostConfig"]["Privileged"] and not details["HostConfig"]["PortBindings"]
        assert details["NetworkSettings"]["Networks"][f"labctl-{lab.name}"]["IPAddress"] == host["address"]
        # the pin is the key the container holds, read over the daemon's channel
        pub = _docker_exec(client, container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
        assert host["host_key"] == " ".join(pub.split()[:2])
        assert host["interface"] == f"{lab.name}-dk" and host["lab_interface"] == "eth0"
        routes = _docker_exec(client, container, "ip", "-4", "route")
        assert "default" not in routes and spec.subnet in routes  # nothing it sends can leave the lab

    assert forward_guard.present(lab.name)  # dockerd --iptables=false: labctl's guard keeps the lab in
    _check_the_guard_keeps_a_node_in(client, lab.name, spec)
    status = lab.cli("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert [n["up"] for n in json.loads(status.stdout)["nodes"]] == [True] * 4

    again = lab.cli("up", "--json", timeout=120)  # idempotent: the running lab is kept, keys unchanged
    assert again.returncode == 0 and json.loads(again.stdout) == inventory, again.stderr
    client.api.stop(f"{lab.name}-client3", timeout=1)
    status = lab.cli("status", "--json")
    assert status.returncode == 1
    assert [n["up"] for n in json.loads(status.stdout)["nodes"]] == [True, True, True, False]
    assert "is exited" in json.loads(status.stdout)["nodes"][3]["detail"]
    repaired = lab.cli("up", "--json", timeout=120)  # a stopped node: the lab is made anew
    assert repaired.returncode == 0, repaired.stderr
    inventory = json.loads(repaired.stdout)
    assert lab.cli("status").returncode == 0

    shaped = lab.cli("impair", "--node", "client2", "--rate", "1mbit")  # tc inside the container (NET_ADMIN)
    assert shaped.returncode == 0 and "rate 1mbit out (htb)" in shaped.stdout, shaped.stdout + shaped.stderr
    assert lab.cli("impair", "--clear").returncode == 0

    ssh = lab.cli("ssh", "client2", "hostname")  # the system ssh client, with the pinned known_hosts
    assert ssh.returncode == 0 and ssh.stdout.strip() == "client2", ssh.stderr

    run = lab.cli("run", "tcp", "--json", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["ok"] for r in result["results"]] == [True, True, True]
    assert all(r["reply"].startswith("20") and r["reply"].rstrip().endswith("Z") for r in result["results"])

    pcap = tmp_path / "udp.pcap"
    cap = lab.cli("capture", "--port", "8080", "--run", "udp", "--json", "-o", str(pcap), timeout=120)
    assert cap.returncode == 0, cap.stdout + cap.stderr
    outcome = json.loads(cap.stdout.strip().splitlines()[-1])
    assert outcome["stats"]["dropped"] == 0 and outcome["stats"]["captured"] == 6  # 3 requests, 3 replies
    udp = list(analyse_file(pcap).udp())
    clients = {h["address"] for h in inventory["hosts"] if h["role"] == "client"}
    assert {c.client.rsplit(":", 1)[0] for c in udp} == clients
    assert all(c.packets == 2 and c.got_answer for c in udp)

    down = lab.cli("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert client.api.containers(all=True) == []
    assert {n["Name"] for n in client.api.networks()} <= {"none", "host"}
    assert client.api.volumes().get("Volumes") in (None, [])
    assert {tag for image in client.api.images(all=True) for tag in image["RepoTags"] or ["<none>"]} \
        == {image_tag(), f"{REPOSITORY}:latest"}
    layers = [p for p in (docker_daemon.root / "data" / "overlay2").iterdir() if p.name != "l"]
    assert len(layers) == 1, layers  # the image's one layer; every container's layers are gone
    assert not lab.state_dir.exists() and not (lab.state_root / lab.name).exists()
    assert not forward_guard.present(lab.name)
    assert subprocess.run(["ip", "link", "show", f"{lab.name}-dk"], capture_output=True).returncode != 0
    client.close()
