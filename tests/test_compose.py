"""The compose variant, checked without a Docker engine (none runs here): the files parse, agree with
the lab file, keep the lab isolated, and ``docker compose config`` accepts them if the client has compose.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl.lab import load_lab
from tests.requires import require_root, require_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_lab_files_nodes_on_its_addresses():
    lab = load_lab()
    doc = _compose()
    services = doc["services"]
    assert list(services) == [n.name for n in lab.nodes]
    for node in lab.nodes:
        service = services[node.name]
        assert service["networks"]["lab"]["ipv4_address"] == node.address
        assert service["hostname"] == node.name
        assert service["build"] == "." and "NET_RAW" in service["cap_add"]
    network = doc["networks"]["lab"]
    assert network["ipam"]["config"] == [{"subnet": lab.subnet, "gateway": lab.host_address}]


def test_compose_network_is_isolated():
    network = _compose()["networks"]["lab"]
    assert network["internal"] is True and network["driver"] == "bridge"
    for service in _compose()["services"].values():
        assert "ports" not in service and "network_mode" not in service and not service.get("privileged")


def test_dockerfile_builds_an_sshd_node_with_the_programs():
    text = DOCKERFILE.read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "FROM" and "ENTRYPOINT" in instructions and "CMD" in instructions
    assert re.search(r"^FROM debian:bookworm", text, re.M)
    for package in ("openssh-server", "python3", "tcpdump", "--no-install-recommends"):
        assert package in text
    assert 'CMD ["/usr/sbin/sshd", "-D", "-e"]' in text
    assert "PasswordAuthentication no" in text and "rm -f /etc/ssh/ssh_host_*" in text
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).is_file(), path


def test_entrypoint_for_real_in_a_private_mount_namespace(tmp_path):
    """The entrypoint runs against tmpfs over /etc/ssh and /root (this machine's stay untouched)."""
    require_root()
    require_tool("unshare", "apt-get install util-linux")
    entrypoint = ROOT / "provision/compose/entrypoint.sh"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKo labctl"
    script = (f"mount -t tmpfs none /etc/ssh && mount -t tmpfs none /root && "
              f"bash {entrypoint} true && bash {entrypoint} cat /root/.ssh/authorized_keys && "
              "stat -c '%a' /root/.ssh/authorized_keys && ls /etc/ssh")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          env={"PATH": os.environ["PATH"], "LABCTL_AUTHORIZED_KEY": key},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("ssh-keygen:")]
    assert lines[0] == key and lines[1] == "600"  # the key once, though the entrypoint ran twice
    assert "ssh_host_ed25519_key.pub" in lines
    refused = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f"mount -t tmpfs none /etc/ssh && mount -t tmpfs none /root && "
                              f"bash {entrypoint} true"],
                             env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "set LABCTL_AUTHORIZED_KEY" in refused.stderr


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="the docker client has no compose plugin here")
def test_docker_compose_config_accepts_the_file():
    proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
