"""The ssh backend for real: the embedded lab's nodes, reached only through the exported inventory file.

``labctl inventory --format yaml`` writes the file; every later command runs with
``--backend ssh --inventory FILE``, so nothing but that file tells labctl how to reach the nodes
(real sshd per node, pinned host keys, route checked via the lab's bridge).
"""
from __future__ import annotations

import json

import pytest
import yaml

from labctl.inventory import load_inventory

pytestmark = pytest.mark.lab


def _ssh(inventory_file) -> tuple[str, ...]:
    return ("--backend", "ssh", "--inventory", str(inventory_file))


def test_the_exercise_runs_through_an_exported_inventory(netns_lab, tmp_path):
    lab = netns_lab
    exported = lab.cli("inventory", "--format", "yaml")
    assert exported.returncode == 0, exported.stderr
    inventory_file = tmp_path / "lab-inventory.yml"
    inventory_file.write_text(exported.stdout)
    assert load_inventory(inventory_file).hosts == lab.inventory.hosts
    as_json = lab.cli("inventory", "--format", "json")
    assert [h["host_key"] for h in json.loads(as_json.stdout)["hosts"]] == \
        [h.host_key for h in lab.inventory.hosts]

    up = lab.cli(*_ssh(inventory_file), "up")
    assert up.returncode == 0, up.stderr
    status = lab.cli(*_ssh(inventory_file), "status", "--json")
    assert status.returncode == 0, status.stderr
    assert [n["up"] for n in json.loads(status.stdout)["nodes"]] == [True] * 4

    run = lab.cli(*_ssh(inventory_file), "run", "tcp", "--json", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["ok"] for r in result["results"]] == [True, True, True]
    assert all(r["reply"].startswith("20") and r["reply"].rstrip().endswith("Z") for r in result["results"])
    assert result["server"] == lab.inventory.server.address

    pcap = tmp_path / "tcp.pcap"
    cap = lab.cli(*_ssh(inventory_file), "capture", "--port", "8080", "--run", "tcp", "--json",
                  "-o", str(pcap), timeout=120)
    assert cap.returncode == 0, cap.stdout + cap.stderr
    outcome = json.loads(cap.stdout.strip().splitlines()[-1])
    # 3 TCP exchanges: handshake, the reply (FIN may ride with it), the closes
    assert outcome["stats"]["dropped"] == 0 and outcome["stats"]["captured"] >= 3 * 5
    assert pcap.stat().st_size > 24 * 3

    # down through the ssh backend leaves the machines alone: they were not made by it
    assert lab.cli(*_ssh(inventory_file), "down").returncode == 0
    assert lab.cli("status").returncode == 0


def test_an_unknown_or_changed_host_key_is_refused(netns_lab, tmp_path):
    lab = netns_lab
    doc = yaml.safe_load(lab.cli("inventory", "--format", "yaml").stdout)
    # a key that is not the server's: client1's (a well-formed key, just the wrong one)
    doc["hosts"][0]["host_key"] = doc["hosts"][1]["host_key"]
    changed = tmp_path / "changed.yml"
    changed.write_text(yaml.safe_dump(doc))
    run = lab.cli(*_ssh(changed), "run", "tcp", timeout=120)
    assert run.returncode == 1
    assert "host key does not match the pinned key" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr

    del doc["hosts"][0]["host_key"]
    unknown = tmp_path / "unknown.yml"
    unknown.write_text(yaml.safe_dump(doc))
    run = lab.cli(*_ssh(unknown), "run", "tcp")
    assert run.returncode == 1
    assert "no host key: labctl refuses hosts whose key it does not know" in run.stderr


def test_labctl_ssh_works_through_the_exported_inventory(netns_lab, tmp_path):
    """`labctl ssh` pins the inventory's host key, whatever backend serves it; one argument is a
    command line (as with ssh), several are quoted word by word."""
    lab = netns_lab
    inventory_file = tmp_path / "lab-inventory.yml"
    inventory_file.write_text(lab.cli("inventory", "--format", "yaml").stdout)
    client1 = lab.inventory.get("client1")

    shown = lab.cli(*_ssh(inventory_file), "ssh", "client1", "ip -br a; ss -tn")
    assert shown.returncode == 0, shown.stderr
    eth0 = next(line.split() for line in shown.stdout.splitlines() if line.startswith("eth0"))
    assert f"{client1.address}/24" in eth0 and eth0[1] == "UP"
    assert "State" in shown.stdout and "ESTAB" in shown.stdout  # ss -tn ran too: this very SSH session
    words = lab.cli(*_ssh(inventory_file), "ssh", "client1", "sh", "-c", 'echo "$(hostname)|$1"', "sh",
                    "a b; c")
    assert (words.returncode, words.stdout.strip()) == (0, "client1|a b; c"), words.stderr
    assert lab.cli(*_ssh(inventory_file), "ssh", "server", "exit 5").returncode == 5

    doc = yaml.safe_load(inventory_file.read_text())
    doc["hosts"][1]["host_key"] = doc["hosts"][0]["host_key"]  # client1 pinned to the server's key
    swapped = tmp_path / "swapped.yml"
    swapped.write_text(yaml.safe_dump(doc))
    refused = lab.cli(*_ssh(swapped), "ssh", "client1", "echo must-not-run")
    assert refused.returncode == 255 and "must-not-run" not in refused.stdout
    assert "Host key verification failed" in refused.stderr
