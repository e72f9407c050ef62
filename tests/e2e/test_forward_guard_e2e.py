"""The forwarding guard for real: a lab node with a default route reaches nothing beyond the host.

"The outside" is a namespace of this test's own behind the host: a veth from the host into it,
10.254.0.1/30 on the host end, 10.254.0.2/30 inside, and an nftables counter at its prerouting hook
that counts every packet from the lab's subnet. With ``ip_forward=1`` on the host (set for the test,
restored after) a node given ``default via <host address>`` gets its datagrams forwarded there —
checked first with the guard taken away, so the test shows it can fail — and with the guard in place
nothing arrives, in either direction, while the nodes still talk to each other.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from labctl.backends import forward_guard
from labctl.backends.probes import subnet_users
from tests.requires import missing, require_root, require_tool

pytestmark = pytest.mark.lab

OUTSIDE_NET = "10.254.0.0/30"
HOST_END, OUTSIDE_END = "10.254.0.1", "10.254.0.2"
PROBES = 5


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=check, timeout=30)


@contextmanager
def ip_forward_on() -> Iterator[None]:
    path = Path("/proc/sys/net/ipv4/ip_forward")
    before = path.read_text().strip()
    path.write_text("1\n")
    try:
        yield
    finally:
        path.write_text(before + "\n")


@contextmanager
def outside(lab_subnet: str) -> Iterator[str]:
    """The test's own "outside" namespace behind the host; yields its name. Removed whatever happens."""
    if subnet_users(OUTSIDE_NET):  # skipped here, a failure under CI: the guard must be proven there
        missing(f"a free {OUTSIDE_NET} for the outside namespace", "it is in use on this host")
    tag = secrets.token_hex(3)
    ns, host_if = f"lcfg{tag}", f"lcfg{tag}h"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{HOST_END}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "addr", "add", f"{OUTSIDE_END}/30", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "route", "add", lab_subnet, "via", HOST_END, ns=ns)  # the outside could answer
        count_arrivals(ns, lab_subnet)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)


def count_arrivals(ns: str, source: str) -> None:
    """A counter in namespace ``ns`` of every packet from ``source`` (a subnet), at prerouting."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True, input=(
        "table inet probe {\n"
        "  chain pre { type filter hook prerouting priority -300; policy accept;\n"
        f"    ip saddr {source} counter\n  }}\n"
        "}\n"))


def arrived(ns: str) -> int:
    """Packets counted by :func:`count_arrivals` in ``ns`` so far."""
    out = sh("nft", "list", "table", "inet", "probe", ns=ns).stdout
    return sum(int(m) for m in re.findall(r"counter packets (\d+)", out))


def send_udp(ns: str, target: str, count: int = PROBES) -> None:
    """``count`` UDP datagrams from namespace ``ns`` to ``target`` port 9 (discard)."""
    sh("python3", "-c", "import socket, sys\n"
       "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
       f"[s.sendto(b'probe', ({target!r}, 9)) for _ in range({count})]", ns=ns)


def test_nothing_leaves_the_lab(make_lab):
    require_root()
    require_tool("nft", "apt-get install nftables")
    lab = make_lab(clients=1)
    lab.up()
    backend = lab.backend()
    plan = backend.state.read_plan()
    client, server = plan.node("client1"), plan.node("server")
    assert forward_guard.present(lab.name), "up installs the guard"
    status = json.loads(lab.cli("status", "--json").stdout)["forward_guard"]
    assert status.startswith(f"nft table inet labctl-{lab.name} on {plan.bridge}: dropped "), status
    subnet = str(ipaddress.IPv4Network(plan.subnet))
    with outside(subnet) as out, ip_forward_on():
        sh("ip", "route", "add", "default", "via", plan.host_address, ns=client.netns)  # root in a node can
        sh("ip", "route", "add", "default", "via", plan.host_address, ns=server.netns)

        forward_guard.remove(lab.name)  # without the guard, this host forwards the node's packets out
        send_udp(client.netns, OUTSIDE_END)
        assert arrived(out) >= PROBES, "the test's outside must be reachable without the guard"
        before = arrived(out)

        forward_guard.install(lab.name, plan.bridge)
        forward_guard.install(lab.name, plan.bridge)  # idempotent: still one table, same rules
        send_udp(client.netns, OUTSIDE_END)
        send_udp(server.netns, OUTSIDE_END)
        assert arrived(out) == before, "with the guard nothing from the lab reaches the outside"
        guard = forward_guard.counters(lab.name)
        assert guard["out of the lab"] >= 2 * PROBES

        # into the lab: the outside sends to a node via the host; the guard drops it too
        count_arrivals(client.netns, OUTSIDE_NET)
        send_udp(out, client.address)
        assert arrived(client.netns) == 0, "with the guard nothing from the outside reaches a node"
        assert forward_guard.counters(lab.name)["into the lab"] >= PROBES

        # the lab itself still works: client1 reaches the server across the bridge
        banner = sh("python3", "-c", "import socket\n"
                    f"s = socket.create_connection(({server.address!r}, 22), timeout=3); print(s.recv(64))",
                    ns=client.netns)
        assert "SSH" in banner.stdout
        # bridged frames between lab ports pass the inet forward hook only with br_netfilter on
        nf_call = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        within = forward_guard.counters(lab.name)["within the lab"]
        if nf_call.exists() and nf_call.read_text().strip() == "1":
            assert within > 0, "br_netfilter: bridged frames pass the forward hook"
        else:
            assert within == 0
    backend.down()
    assert not forward_guard.present(lab.name), "down removes the guard's table"
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert f"labctl-{lab.name}" not in listed


def test_clean_removes_the_guard_without_a_manifest(make_lab):
    """A guard whose lab lost its state (crash between up's steps) is still removed by clean."""
    require_root()
    require_tool("nft", "apt-get install nftables")
    lab = make_lab(clients=1)
    backend = lab.backend()
    forward_guard.install(lab.name, f"{lab.name}-br")
    try:
        removed = backend.clean()
        assert any(f"labctl-{lab.name}" in item for item in removed)
        assert not forward_guard.present(lab.name)
    finally:
        forward_guard.remove(lab.name)
