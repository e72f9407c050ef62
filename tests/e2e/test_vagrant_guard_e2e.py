"""The vagrant backend's forwarding guard for real, without a VM: libvirt's own isolated networks.

The test defines the two networks ``vagrant up --provider=libvirt`` makes for a lab (``labctl-LAB``,
and Vagrant's management network ``labctl-LAB-mgmt``; isolated: no ``<forward>``, no DHCP, no DNS),
so libvirt puts their bridges (virbrN) on this machine as it does for the VMs. A namespace plugged
into each bridge stands in for a VM's NIC, and the test's own "outside" namespace sits behind the host
(tests/e2e/test_forward_guard_e2e.py). Then the backend's own code, the calls ``up``/``status``/``down``
make: :meth:`guard_forwarding` finds the bridges through ``virsh net-info`` and installs the guard;
a "VM" given ``default via`` the host reaches neither the outside nor the other network, the guard's
counters say it dropped them; ``guard_status`` names both bridges; ``down`` removes the table.
Only ``vagrant destroy`` is replaced (there is no VM to destroy; the VM test runs the real one).

libvirt's daemon: the running one, or the VM test's ``libvirt`` fixture starts one and stops it by PID
after, with libvirt's firewall chains removed (``libvirt_daemon``). No libvirt domain is made or touched.
"""
from __future__ import annotations

import ipaddress
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from labctl.backends import forward_guard
from labctl.backends.probes import subnet_users
from labctl.backends.vagrant.backend import VagrantBackend
from labctl.lab import load_lab
from tests.e2e import test_vagrant_e2e as vagrant_e2e
from tests.e2e.conftest import TEST_SUBNET_BASE, write_lab_file
from tests.e2e.test_forward_guard_e2e import (
    OUTSIDE_END,
    PROBES,
    arrived,
    count_arrivals,
    ip_forward_on,
    outside,
    send_udp,
    sh,
)
from tests.requires import missing, require_root, require_tool

pytestmark = pytest.mark.lab
libvirt = vagrant_e2e.libvirt  # the VM test's libvirtd fixture (module scope), shared, not copied
virsh = vagrant_e2e._virsh


@pytest.fixture(scope="module")
def libvirt_daemon(request) -> Iterator[None]:
    """A libvirtd to define networks in. One that already runs is somebody's (a VM test of another
    session may be using it): this test then touches only its own networks, which libvirt tears down
    with their firewall rules. Otherwise the VM test's ``libvirt`` fixture starts one and, after,
    stops it and removes whatever libvirt added."""
    if require_tool("virsh", "apt-get install libvirt-clients") and virsh("version").returncode == 0:
        yield
    else:
        request.getfixturevalue("libvirt")
        yield
MGMT_OCTET = TEST_SUBNET_BASE - 1   # the lab on 192.168.120.0/24 (the test lock's), its management on .119


def network_xml(name: str, host_address: str) -> str:
    """An isolated libvirt network as vagrant-libvirt makes it for the lab (no forward, no DHCP)."""
    return (f"<network><name>{name}</name><bridge stp='on' delay='0'/><dns enable='no'/>"
            f"<ip address='{host_address}' netmask='255.255.255.0'/></network>")


@contextmanager
def libvirt_network(name: str, host_address: str, tmp_path) -> Iterator[str]:
    """Define and start the network; yields its bridge. Destroyed and undefined whatever happens."""
    xml = tmp_path / f"{name}.xml"
    xml.write_text(network_xml(name, host_address))
    try:
        virsh("net-define", str(xml), check=True)
        virsh("net-start", name, check=True)
        info = virsh("net-info", name, check=True).stdout
        bridge = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Bridge:")]
        assert bridge and bridge[0], info
        yield bridge[0]
    finally:
        virsh("net-destroy", name)
        virsh("net-undefine", name)


@contextmanager
def vm_nic(bridge: str, address: str, gateway: str) -> Iterator[str]:
    """A namespace standing for a VM: a veth into ``bridge``, ``address``/24, ``default via gateway``
    (what a VM's root may do). Yields the namespace; removed whatever happens."""
    tag = secrets.token_hex(3)
    ns, host_if = f"lcvg{tag}", f"lcvg{tag}h"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth1", "netns", ns)
        sh("ip", "link", "set", host_if, "master", bridge, "up")
        sh("ip", "addr", "add", f"{address}/24", "dev", "eth1", ns=ns)
        sh("ip", "link", "set", "eth1", "up", ns=ns)
        sh("ip", "route", "add", "default", "via", gateway, ns=ns)
        state = Path(f"/sys/class/net/{host_if}/brport/state")  # libvirt's bridges run STP: a new port
        deadline = time.monotonic() + 30                           # listens and learns before it forwards
        while state.read_text().strip() != "3" and time.monotonic() < deadline:  # 3: BR_STATE_FORWARDING
            time.sleep(0.1)
        assert state.read_text().strip() == "3", f"bridge port {host_if} of {bridge} never forwards"
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)


def test_the_guard_on_libvirts_bridges(libvirt_daemon, lab_lock, tmp_path, monkeypatch):
    require_root()
    require_tool("nft", "apt-get install nftables")
    name = "t" + secrets.token_hex(3)
    lab = load_lab(write_lab_file(tmp_path / f"{name}.yml", name, TEST_SUBNET_BASE, 1))
    mgmt_host = f"192.168.{MGMT_OCTET}.1"
    for subnet in (str(lab.subnet), f"192.168.{MGMT_OCTET}.0/24"):
        if subnet_users(subnet):
            missing(f"a free {subnet} for the test's libvirt networks", "it is in use on this host")
    monkeypatch.setenv("LABCTL_VAGRANT_PROVIDER", "libvirt")
    backend = VagrantBackend(lab, tmp_path / "state" / name)
    destroyed: list[int] = []

    class NoVMs:  # python-vagrant's handle, where there is no VM to destroy
        def destroy(self) -> None:
            destroyed.append(1)

    monkeypatch.setattr(backend, "vagrant", NoVMs)
    said: list[str] = []
    subnet = str(ipaddress.IPv4Network(lab.subnet))
    try:
        with libvirt_network(f"labctl-{name}", lab.host_address, tmp_path) as lab_bridge, \
                libvirt_network(f"labctl-{name}-mgmt", mgmt_host, tmp_path) as mgmt_bridge, \
                vm_nic(lab_bridge, lab.server_address, lab.host_address) as vm, \
                vm_nic(mgmt_bridge, f"192.168.{MGMT_OCTET}.2", mgmt_host) as other, \
                outside(subnet) as out, ip_forward_on():
            assert backend.guard_status() is not None and backend.guard_status().startswith("missing: ")
            backend.guard_forwarding(said.append)  # what up does once vagrant up has made the networks
            assert said == [f"forwarding guard on {lab_bridge}, {mgmt_bridge} "
                            f"(nft table inet labctl-{name})"]
            status = backend.guard_status()
            assert status.startswith(f"nft table inet labctl-{name} on {lab_bridge}, {mgmt_bridge}: "), status

            send_udp(vm, OUTSIDE_END)  # out of the lab, past the host
            assert arrived(out) == 0, "with the guard nothing from a VM reaches the outside"
            count_arrivals(other, subnet)
            send_udp(vm, f"192.168.{MGMT_OCTET}.2")  # from the lab's network into Vagrant's
            assert arrived(other) == 0, "nothing is routed between the lab's two networks"
            counted = forward_guard.counters(name)
            assert counted["out of the lab"] >= 2 * PROBES, counted  # the guard dropped them, not luck
            count_arrivals(vm, "10.254.0.0/30")
            send_udp(out, lab.server_address)  # the outside sends to the VM through the host
            assert arrived(vm) == 0 and forward_guard.counters(name)["into the lab"] >= PROBES

            assert backend.down(said.append) is None
            assert destroyed == [1], "down destroys the VMs first"
            assert not forward_guard.present(name), "down removes the guard"
            assert said[-1] == f"removed the forwarding guard (nft table inet labctl-{name})"
    finally:
        forward_guard.remove(name)
