"""The ssh backend against a real OpenSSH sshd on loopback (no lab, no lock needed)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from loopback_sshd import keygen, loopback_sshd

from labctl.backends import make_backend
from labctl.backends.base import BackendError
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
    inventory = backend.up(messages.append)
    assert [h.name for h in inventory] == ["server", "client1"] and "checking 2 SSH hosts" in messages[0]
    statuses = backend.status()
    assert [s.up for s in statuses] == [True, True]
    assert socket.gethostname() in statuses[0].detail
    backend.down(messages.append)
    assert "nothing to stop" in messages[-1]
    assert backend.status()[0].up  # down leaves machines it did not make alone


def test_changed_host_key_is_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other")
    backend = make_backend("ssh", load_lab(), tmp_path,
                           inventory_file=_inventory(tmp_path, sshd, host_key=other))
    statuses = backend.status()
    assert not statuses[0].up and "does not match the pinned key" in statuses[0].detail
    assert statuses[1].up  # one bad host does not hide the others
    with pytest.raises(BackendError, match=r"1 of 2 hosts are not reachable: server: .*refusing"):
        backend.up()


def test_route_outside_the_named_bridge_is_refused(sshd, tmp_path):
    backend = make_backend("ssh", load_lab(), tmp_path,
                           inventory_file=_inventory(tmp_path, sshd, interface="labctlnone0"))
    statuses = backend.status()
    assert not statuses[0].up and "refuses to send traffic outside the lab" in statuses[0].detail
