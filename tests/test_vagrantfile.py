"""The Vagrantfile and the provisioners, checked without booting anything.

The Vagrantfile is evaluated by real Ruby (and ``vagrant validate`` when vagrant is installed); the
provisioners go through shellcheck, and their change-only-when-different helpers run for real.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from labctl.lab import load_lab
from tests.requires import require_tool

ROOT = Path(__file__).resolve().parent.parent
VAGRANTFILE = ROOT / "Vagrantfile"
PROVISION = ROOT / "provision"
SHELL_SCRIPTS = sorted(PROVISION.rglob("*.sh"))

def _eval_vagrantfile(env: dict[str, str]) -> dict:
    """Load the Vagrantfile in plain Ruby with Vagrant.configure stubbed out; return its constants."""
    ruby = require_tool("ruby", "apt-get install ruby (vagrant brings it)")
    script = ('module Vagrant; def self.configure(_v); end; end; load ARGV[0]; require "json"; '
              'puts({nodes: NODES, netmask: NETMASK, box: BOX, memory: MEMORY, ports: PORTS, '
              'pubkey: PUBKEY, service: SERVER_SERVICE, lab: LAB_NAME}.to_json)')
    proc = subprocess.run([ruby, "-e", script, str(VAGRANTFILE)], capture_output=True, text=True,
                          env={**os.environ, **env}, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_vagrantfile_takes_every_address_from_the_lab_file(tmp_path):
    lab = load_lab()
    seen = _eval_vagrantfile({"LABCTL_LAB": str(lab.source)})
    assert seen["nodes"] == [[n.name, n.role, n.address] for n in lab.nodes]
    assert seen["netmask"] == "255.255.255.0" and seen["lab"] == lab.name
    assert seen["box"] == lab.vagrant["box"] and seen["memory"] == lab.vagrant["memory"]
    assert seen["ports"] == {"tcp": lab.ports.tcp, "proto": lab.ports.proto, "time": lab.ports.time}

    other = tmp_path / "other.yml"
    other.write_text(lab.source.read_text().replace("192.168.20.", "10.77.3.").replace("clients: 3",
                                                                                          "clients: 5"))
    other_lab = load_lab(other)
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKo labctl\n")
    seen = _eval_vagrantfile({"LABCTL_LAB": str(other), "LABCTL_BOX": "labctl/debian12",
                              "LABCTL_PUBKEY": str(key), "LABCTL_SERVER_SERVICE": "0"})
    assert seen["nodes"] == [[n.name, n.role, n.address] for n in other_lab.nodes]
    assert seen["nodes"][-1] == ["client5", "client", "10.77.3.7"]
    assert (seen["box"], seen["pubkey"], seen["service"]) == ("labctl/debian12", key.read_text().strip(), "0")
    seen = _eval_vagrantfile({"LABCTL_LAB": str(other), "LABCTL_CLIENTS": "1"})
    assert [n[0] for n in seen["nodes"]] == ["server", "client1"]


def test_no_lab_address_is_written_twice():
    text = VAGRANTFILE.read_text()
    lab = load_lab()
    for node in lab.nodes:
        assert node.address not in text
    assert lab.subnet not in text and lab.host_address not in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b8080\b|\b8081\b", code.replace('"tcp" => 8080, "proto" => 8081', ""))


def test_network_isolation_settings_are_in_place():
    text = VAGRANTFILE.read_text()
    assert 'lv.management_network_mode = "none"' in text
    assert 'libvirt__forward_mode: "none"' in text
    assert 'lv.driver = "qemu"' in text and 'lv.cpu_model = "qemu64"' in text
    assert 'lv.graphics_type = "none"' in text
    assert 'synced_folder ".", "/vagrant", disabled: true' in text


@pytest.mark.parametrize("provider, options", [
    ("libvirt", []),
    ("virtualbox", ["--ignore-provider"] if shutil.which("VBoxManage") is None else []),
])
def test_vagrant_validate(tmp_path, provider, options):
    """Without VirtualBox installed, vagrant refuses to validate its block: everything else still is."""
    vagrant = require_tool("vagrant", "./install.sh --dev")
    env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
           "VAGRANT_DEFAULT_PROVIDER": provider, "LABCTL_PUBKEY": str(tmp_path / "none.pub")}
    proc = subprocess.run([vagrant, "validate", *options], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_provisioners_are_shellcheck_clean():
    shellcheck = require_tool("shellcheck", "./install.sh --dev")
    assert {p.name for p in SHELL_SCRIPTS} >= {"common.sh", "server.sh", "client.sh", "lib.sh", "build.sh"}
    proc = subprocess.run([shellcheck, "-x", "-S", "style", *map(str, SHELL_SCRIPTS)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_provisioners_are_strict():
    for script in SHELL_SCRIPTS:
        if script.name == "lib.sh":
            continue
        assert "set -euo pipefail" in script.read_text(), script


def _bash(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source {PROVISION / 'lib.sh'}; {script}"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)


def test_provisioner_helpers_change_only_what_differs(tmp_path):
    (tmp_path / "src").write_text("program v1\n")
    steps = ("install_file src out/prog 755 || true; "
             "write_file out/unit 644 <<< unit || true; ensure_packages bash coreutils; finish")
    first = _bash(steps, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "changed: out/prog" in first.stdout and "changed: out/unit" in first.stdout
    assert "bash: 2 changes" in first.stdout
    assert (tmp_path / "out" / "prog").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "unit").read_text() == "unit\n"
    second = _bash(steps, tmp_path)
    assert second.returncode == 0 and "changed" not in second.stdout and "0 changes" in second.stdout
    (tmp_path / "out" / "prog").chmod(0o644)  # a drifted mode is put back
    (tmp_path / "src").write_text("program v2\n")
    third = _bash(steps, tmp_path)
    assert "changed: out/prog" in third.stdout and "1 changes" in third.stdout
    assert (tmp_path / "out" / "prog").read_text() == "program v2\n"


def test_provisioners_refuse_to_run_without_the_vagrantfiles_environment(tmp_path):
    proc = subprocess.run(["bash", str(PROVISION / "server.sh")], env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "LABCTL_SOURCE is not set" in proc.stderr
