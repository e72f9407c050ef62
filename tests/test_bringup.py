"""The check that ends `up` and the SSH half of `status`, above the backends, against a real OpenSSH
sshd on loopback through the ssh backend (no lab, no lock needed)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from loopback_sshd import keygen, loopback_sshd

from labctl import bringup
from labctl.backends import make_backend
from labctl.lab import load_lab


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """One real sshd listening on 127.0.0.1 and 127.0.0.2 (two "hosts"); stopped by PID."""
    with loopback_sshd(tmp_path_factory.mktemp("sshd"), addresses=("127.0.0.1", "127.0.0.2")) as d:
        yield {"dir": d.dir, "port": d.port, "host_key": d.host_key, "key": d.key_file}


def _inventory(tmp_path: Path, sshd: dict, **server_changes) -> Path:
    hosts = [{"name": "server", "role": "server", "address": "127.0.0.1"},
             {"name": "client1", "role": "client", "address": "127.0.0.2"}]
    for h in hosts:
        h.update(port=sshd["port"], user="root", key=str(sshd["key"]), host_key=sshd["host_key"],
                 interface="lo")
    hosts[0].update(server_changes)
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"hosts": hosts}))
    return path


def test_up_and_status_against_real_sshd(sshd, tmp_path):
    backend = make_backend("ssh", load_lab(), tmp_path, inventory_file=_inventory(tmp_path, sshd))
    messages: list[str] = []
    inventory = bringup.up(backend, messages.append)
    assert [h.name for h in inventory] == ["server", "client1"]
    assert "2 SSH hosts from" in messages[0] and messages[-1] == "checking SSH on 2 nodes"
    statuses = bringup.status(backend)
    assert [s.up for s in statuses] == [True, True]
    assert socket.gethostname() in statuses[0].detail
    assert "nothing to stop" in backend.down(messages.append)  # said once, by the CLI
    assert bringup.status(backend)[0].up  # down leaves machines it did not make alone


def test_changed_host_key_is_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other")
    backend = make_backend("ssh", load_lab(), tmp_path,
                           inventory_file=_inventory(tmp_path, sshd, host_key=other))
    statuses = bringup.status(backend)
    assert not statuses[0].up and "does not match the pinned key" in statuses[0].detail
    assert statuses[1].up  # one bad host does not hide the others
    with pytest.raises(bringup.NodesUnreachable, match=r"1 of 2 nodes do not accept SSH: server: .*refusing"):
        bringup.up(backend)
    backend.node_log = lambda name: f"the end of {name}'s sshd log"  # a backend that keeps logs names them
    with pytest.raises(bringup.NodesUnreachable, match=r"refusing .*\(sshd log: the end of server's sshd"):
        bringup.up(backend)


def test_route_outside_the_named_bridge_is_refused(sshd, tmp_path):
    backend = make_backend("ssh", load_lab(), tmp_path,
                           inventory_file=_inventory(tmp_path, sshd, interface="labctlnone0"))
    statuses = bringup.status(backend)
    assert not statuses[0].up and "refuses to send traffic outside the lab" in statuses[0].detail
    assert statuses[1].up
    with pytest.raises(bringup.NodesUnreachable, match=r"1 of 2 nodes .* server: lab is not up: .*via lo"):
        bringup.up(backend)
