"""The compose variant without a daemon: the committed file is what the lab file makes, keeps the lab
isolated, and runs the docker backend's image; the Dockerfile is the same recipe; the node's entrypoint
runs for real in private namespaces. (tests/e2e/test_compose_e2e.py runs it with Debian's docker-compose.)
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl.backends.docker.compose import compose_bridge, network_name, render
from labctl.lab import load_lab
from tests.requires import require_root, require_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NODE = ROOT / "provision" / "node"


def test_the_committed_compose_file_is_what_lab_yml_makes():
    assert COMPOSE.read_text() == render(load_lab()), \
        "regenerate it: python -m labctl.backends.docker.compose file > docker-compose.yml"


@pytest.mark.parametrize("clients", [1, 3, 7])
def test_compose_has_the_lab_files_nodes_on_their_addresses(tmp_path, clients):
    lab_file = tmp_path / "other.yml"
    lab_file.write_text(f"name: other\nsubnet: 10.44.0.0/16\nhost_address: 10.44.0.1\n"
                        f"server_address: 10.44.1.10\nclients: {clients}\n")
    lab = load_lab(lab_file)
    doc = yaml.safe_load(render(lab))
    services = doc["services"]
    assert list(services) == [n.name for n in lab.nodes]
    for node in lab.nodes:
        service = services[node.name]
        assert service["networks"]["lab"]["ipv4_address"] == node.address
        assert service["hostname"] == node.name and service["image"] == "labctl-node:latest"
        assert service["cap_add"] == ["NET_RAW", "NET_ADMIN"] and service["init"] is True
        assert service["environment"]["LABCTL_HOST_ADDRESS"] == lab.host_address
    network = doc["networks"]["lab"]
    assert network["ipam"]["config"] == [{"subnet": lab.subnet, "gateway": lab.host_address}]
    assert network["name"] == network_name(lab) == "labctl-other-compose"
    assert network["driver_opts"]["com.docker.network.bridge.name"] == compose_bridge(lab) == "other-dkc"


def test_compose_network_is_isolated():
    doc = yaml.safe_load(COMPOSE.read_text())
    network = doc["networks"]["lab"]
    assert network["internal"] is True and network["driver"] == "bridge"
    assert network["driver_opts"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    for service in doc["services"].values():
        assert "ports" not in service and "network_mode" not in service and not service.get("privileged")


def _image_packages() -> set[str]:
    match = re.search(r"^PACKAGES=(\S+)$", (NODE / "image.sh").read_text(), re.M)
    assert match
    return set(match.group(1).split(","))


def test_the_dockerfile_is_the_same_recipe_as_the_local_image():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM debian:bookworm", text, re.M)
    install = re.search(r"--no-install-recommends \\\n(.*?) \\\n", text, re.S)
    assert install and set(install.group(1).split()) == _image_packages()
    assert {"python3", "openssh-server", "tcpdump", "iproute2", "nftables"} <= _image_packages()
    copies = dict(re.findall(r"^COPY (\S+) (\S+)$", text, re.M))
    assert copies == {"provision/node/sshd.conf": "/etc/ssh/sshd_config.d/labctl.conf",
                      "provision/node/entrypoint.sh": "/usr/local/sbin/labctl-entrypoint"}
    image_sh = (NODE / "image.sh").read_text()
    for source, target in copies.items():
        assert (ROOT / source).is_file()
        assert f'"$HERE/{Path(source).name}" "$rootfs{target}"' in image_sh  # the local image has it too
    assert 'ENTRYPOINT ["/usr/local/sbin/labctl-entrypoint"]' in text
    assert 'CMD ["/usr/sbin/sshd", "-D", "-e"]' in text and "rm -f /etc/ssh/ssh_host_*" in text


def test_sshd_settings_allow_only_keys_and_no_forwarding():
    settings = dict(line.split(None, 1) for line in (NODE / "sshd.conf").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert settings["PasswordAuthentication"] == "no" and settings["KbdInteractiveAuthentication"] == "no"
    assert settings["PermitRootLogin"] == "prohibit-password" and settings["AllowTcpForwarding"] == "no"
    assert settings["HostKey"] == "/etc/ssh/ssh_host_ed25519_key"


def _in_private_namespaces(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``script`` with tmpfs over /etc/ssh and /root, in a new mount and network namespace (only lo:
    the entrypoint's route and interface steps touch nothing of this machine's)."""
    return subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c",
                           "mount -t tmpfs none /etc/ssh && mount -t tmpfs none /root && " + script],
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                          check=False)


def test_entrypoint_for_real_in_private_namespaces():
    require_root()
    require_tool("unshare", "apt-get install util-linux")
    entrypoint = NODE / "entrypoint.sh"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKo labctl"
    proc = _in_private_namespaces(f"bash {entrypoint} true && bash {entrypoint} cat "
                                  "/root/.ssh/authorized_keys && stat -c '%a' /root/.ssh/authorized_keys "
                                  "&& ls /etc/ssh",
                                  {"LABCTL_AUTHORIZED_KEY": key})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == key and lines[1] == "600"  # the key once, though the entrypoint ran twice
    assert "ssh_host_ed25519_key.pub" in lines and "ssh_host_ed25519_key" in lines
    refused = _in_private_namespaces(f"bash {entrypoint} true", {})
    assert refused.returncode == 2 and "set LABCTL_AUTHORIZED_KEY" in refused.stderr
