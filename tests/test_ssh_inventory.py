"""The inventory file: parsing, validation (host keys above all), and the export round trip."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import paramiko
import pytest
import yaml

from labctl.backends.base import BackendError
from labctl.cli import main
from labctl.inventory import (
    Host,
    Inventory,
    InventoryError,
    check_host_key,
    dump_inventory,
    load_inventory,
    parse_inventory,
    write_inventory,
)
from labctl.lab import load_lab


def _keygen(path: Path, kind: str = "ed25519") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    client = d / "id_ed25519"
    _keygen(client)
    client.chmod(0o600)
    host_keys = [" ".join(_keygen(d / f"host{i}").split()[:2]) for i in range(4)]
    ecdsa = " ".join(_keygen(d / "host_ecdsa", "ecdsa").split()[:2])
    return {"dir": d, "client": client, "host_keys": host_keys, "ecdsa": ecdsa}


def _doc(keys, **host0) -> dict:
    names = ["server", "client1", "client2", "client3"]
    hosts = [{"name": n, "role": "server" if n == "server" else "client", "address": f"192.168.20.{i + 2}",
              "port": 22, "user": "root", "key": str(keys["client"]), "host_key": keys["host_keys"][i]}
             for i, n in enumerate(names)]
    hosts[0].update(host0)
    hosts[0] = {k: v for k, v in hosts[0].items() if v is not None}
    return {"hosts": hosts}


def _write(tmp_path: Path, doc) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def test_a_full_inventory_loads(keys, tmp_path):
    inv = load_inventory(_write(tmp_path, _doc(keys, interface="lab-br", lab_interface="eth1", port=2222,
                                               user="vagrant")))
    assert [h.name for h in inv] == ["server", "client1", "client2", "client3"]
    assert inv.server.address == "192.168.20.2" and [c.address for c in inv.clients][-1] == "192.168.20.5"
    server = inv.server
    assert (server.port, server.user, server.interface, server.lab_interface) == (2222, "vagrant", "lab-br",
                                                                                  "eth1")
    assert server.host_key == keys["host_keys"][0] and server.key_file == keys["client"]
    assert inv.get("client1").interface is None and inv.get("client1").lab_interface == "eth0"
    assert inv.backend == "ssh"


def test_export_round_trips_in_both_formats(keys, tmp_path):
    lab = load_lab()
    hosts = tuple(Host(n.name, n.role, n.address, key_file=keys["client"], host_key=keys["host_keys"][i],
                       interface="lab-br", host_address=lab.host_address if i else None)
                  for i, n in enumerate(lab.nodes))
    original = Inventory("netns", hosts, lab)
    for fmt in ("yaml", "json"):
        text = dump_inventory(original, fmt)
        path = tmp_path / f"inv.{fmt}"
        path.write_text(text)
        back = load_inventory(path, lab)
        assert back.hosts == original.hosts, fmt
        assert back.backend == "netns"
    assert json.loads(dump_inventory(original, "json"))["hosts"][0]["host_key"] == keys["host_keys"][0]
    out = write_inventory(original, tmp_path / "w.json")
    assert json.loads(out.read_text())["lab"] == "lab"
    with pytest.raises(InventoryError, match="unknown inventory format"):
        dump_inventory(original, "toml")


def test_a_host_without_a_host_key_is_refused(keys, tmp_path):
    with pytest.raises(InventoryError, match="host 'server': no host key: labctl refuses"):
        load_inventory(_write(tmp_path, _doc(keys, host_key=None)))
    with pytest.raises(InventoryError, match="not both"):
        load_inventory(_write(tmp_path, _doc(keys, known_hosts="kh")))


@pytest.mark.parametrize("bad, message", [
    ("ssh-ed25519", "not an OpenSSH public key line"),
    ("ssh-dss AAAAB3NzaC1kc3M=", "not an OpenSSH public key line"),
    ("ssh-ed25519 not*base64", "not valid base64"),
    ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIKo=", "does not match its type ssh-rsa"),
])
def test_malformed_host_keys_are_refused(keys, tmp_path, bad, message):
    with pytest.raises(InventoryError, match=message):
        load_inventory(_write(tmp_path, _doc(keys, host_key=bad)))


def test_host_key_comment_is_dropped_and_ecdsa_accepted(keys):
    assert check_host_key(keys["host_keys"][0] + " root@server") == keys["host_keys"][0]
    assert check_host_key(keys["ecdsa"]) == keys["ecdsa"]


def test_known_hosts_plain_hashed_and_nonstandard_port(keys, tmp_path):
    kh = tmp_path / "known_hosts"
    ed, ecdsa = keys["host_keys"][0], keys["ecdsa"]
    hashed = paramiko.HostKeys.hash_host("192.168.20.3")
    kh.write_text(f"192.168.20.2 {ecdsa}\n192.168.20.2 {ed}\n{hashed} {keys['host_keys'][1]}\n"
                  f"[192.168.20.4]:2222 {keys['host_keys'][2]}\n")
    doc = _doc(keys)
    for host, port in zip(doc["hosts"][:3], (22, 22, 2222)):
        del host["host_key"]
        host["known_hosts"] = "known_hosts"  # relative to the inventory file
        host["port"] = port
    inv = load_inventory(_write(tmp_path, doc))
    assert inv.get("server").host_key == ed  # ed25519 preferred over ecdsa
    assert inv.get("client1").host_key == keys["host_keys"][1]
    assert inv.get("client2").host_key == keys["host_keys"][2]
    doc["hosts"][2]["port"] = 22  # the file only knows [192.168.20.4]:2222
    with pytest.raises(InventoryError, match=r"has no key for 192.168.20.4; labctl refuses"):
        load_inventory(_write(tmp_path, doc))
    doc["hosts"][2]["known_hosts"] = "missing"
    with pytest.raises(InventoryError, match=r"known_hosts file .*missing not found"):
        load_inventory(_write(tmp_path, doc))


def test_private_key_must_exist_and_be_private(keys, tmp_path):
    loose = tmp_path / "loose_key"
    loose.write_bytes(keys["client"].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(InventoryError, match=r"readable by others .*chmod 600"):
        load_inventory(_write(tmp_path, _doc(keys, key=str(loose))))
    with pytest.raises(InventoryError, match=r"private key .*nope not found"):
        load_inventory(_write(tmp_path, _doc(keys, key="nope")))
    inv = load_inventory(_write(tmp_path, _doc(keys, key="nope")), check_keys=False)
    assert inv.server.key_file == tmp_path / "nope"


@pytest.mark.parametrize("change, message", [
    ({"role": "router"}, "role 'router': use server or client"),
    ({"role": "client"}, "exactly one host must have role: server .found 0"),
    ({"address": "server.example"}, "is not an IP address"),
    ({"port": 0}, "port 0: use a number"),
    ({"port": "22"}, "port '22': use a number"),
    ({"user": "root; rm -rf /"}, "not a valid user name"),
    ({"name": "-x"}, "name '-x'"),
    ({"name": "client1"}, "'client1' appears twice"),
    ({"address": "192.168.20.3"}, "same address and port 192.168.20.3:22"),
    ({"colour": "blue"}, "unknown keys \\['colour'\\]"),
    ({"key": None}, "missing key"),
    ({"interface": "a bridge with spaces"}, "is not an interface name"),
])
def test_invalid_hosts_say_what_is_wrong(keys, tmp_path, change, message):
    with pytest.raises(InventoryError, match=message):
        load_inventory(_write(tmp_path, _doc(keys, **change)))


def test_invalid_documents(keys, tmp_path):
    for text, message in [("- a\n- b\n", "expected a mapping"), ("hosts: []\n", "non-empty list"),
                          ("hosts: [1]\n", "expected a mapping with name"), ("hosts: [\n", "not valid YAML"),
                          ("hosts: [{}]\nextra: 1\n", "unknown keys \\['extra'\\]")]:
        with pytest.raises(InventoryError, match=message):
            load_inventory(_write(tmp_path, text))
    doc = _doc(keys)
    doc["hosts"] = doc["hosts"][:1]
    with pytest.raises(InventoryError, match="at least one host must have role: client"):
        parse_inventory(doc, base_dir=tmp_path)
    with pytest.raises(InventoryError, match=r"not found .*labctl inventory --format yaml"):
        load_inventory(tmp_path / "absent.yml")


def test_cli_reexports_an_inventory_and_errors_are_one_line(keys, tmp_path, capsys):
    path = _write(tmp_path, _doc(keys))
    assert main(["--backend", "ssh", "--inventory", str(path), "inventory", "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [h["host_key"] for h in exported["hosts"]] == keys["host_keys"]
    out = tmp_path / "again.yml"
    assert main(["--backend", "ssh", "--inventory", str(path), "inventory", "-o", str(out)]) == 0
    assert load_inventory(out).hosts == load_inventory(path).hosts
    capsys.readouterr()
    assert main(["--backend", "ssh", "inventory"]) == 1
    assert "--backend ssh needs --inventory FILE" in capsys.readouterr().err
    bad = _write(tmp_path, _doc(keys, host_key=None))
    assert main(["--backend", "ssh", "--inventory", str(bad), "inventory"]) == 1
    err = capsys.readouterr().err
    assert "no host key" in err and "Traceback" not in err


def test_ssh_backend_needs_an_inventory():
    from labctl.backends import make_backend

    with pytest.raises(BackendError, match="needs --inventory FILE"):
        make_backend("ssh", load_lab(), Path("/nonexistent"))


def test_the_ssh_backend_serves_an_exported_inventory_as_its_own(keys, tmp_path):
    from labctl.backends import make_backend

    doc = _doc(keys)
    doc["backend"] = "netns"
    inv = make_backend("ssh", load_lab(), tmp_path, inventory_file=_write(tmp_path, doc)).inventory()
    assert inv.backend == "ssh" and inv.lab == load_lab() and len(inv) == 4


def test_host_address_is_this_machines_lab_address(keys, tmp_path):
    inv = load_inventory(_write(tmp_path, _doc(keys, host_address="192.168.20.1")))
    assert inv.server.host_address == "192.168.20.1" and inv.get("client1").host_address is None
    with pytest.raises(InventoryError, match="host_address 'lab-host' is not an IP address"):
        load_inventory(_write(tmp_path, _doc(keys, host_address="lab-host")))
