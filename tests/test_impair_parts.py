"""The pieces of link impairment that need no kernel: tc/nft/iptables lines, the delayer's parser, the CLI.

For real (namespaces, nft, htb, the NFQUEUE delayer): tests/e2e/test_impair_e2e.py.
"""
from __future__ import annotations

import argparse
import struct

import pytest

from labctl import impairment
from labctl.backends import remote_links, shaping
from labctl.backends.base import Backend, BackendError, LinkCapabilities
from labctl.backends.netns import delay as netns_delay
from labctl.backends.netns import delayer as netns_delayer
from labctl.backends.netns import links as netns_links
from labctl.backends.netns.state import LabPlan, NodePlan
from labctl.cli.impair_command import change_from_args
from labctl.inventory import Host, Inventory
from labctl.lab import Lab
from labctl.links import Impairment, LinkError, LinkSettings

PLAN = LabPlan("lab", "192.168.20.0/24", "192.168.20.1", 24, "lab-br",
               (NodePlan("server", "server", "192.168.20.2", "lab-server", "lab-srv"),
                NodePlan("client1", "client", "192.168.20.3", "lab-client1", "lab-c1")), complete=True)


def test_htb_tree_exempts_the_host_and_shapes_the_rest():
    lines = shaping.tree("eth0", Impairment(rate=10**6), exempt="192.168.20.1", exempt_field="dst",
                         netem=False, netem_loss=False)
    assert lines[0] == "qdisc add dev eth0 root handle 4c: htb default 20"
    assert "classid 4c:20 htb rate 1000000bit ceil 1000000bit" in lines[2]
    assert lines[3].endswith("u32 match ip dst 192.168.20.1/32 flowid 4c:10")
    assert lines[4] == "qdisc add dev eth0 parent 4c:20 handle 4d: pfifo limit 10"  # ~100 ms at 1 Mbit/s
    assert shaping.queue_packets(100 * 10**6) == 825


def test_netem_leaf_carries_delay_jitter_and_loss():
    imp = Impairment(loss=30, delay=50, jitter=5, rate=10**6)
    lines = shaping.tree("lcifb0", imp, exempt="10.0.0.1", exempt_field="src", netem=True, netem_loss=True)
    assert lines[-1] == "qdisc add dev lcifb0 parent 4c:20 handle 4d: netem delay 50ms 5ms loss 30% " \
                        "limit 1000"
    assert "match ip src 10.0.0.1/32" in lines[3]
    no_loss = shaping.tree("eth0", Impairment(delay=20), exempt="h", exempt_field="dst", netem=True,
                           netem_loss=False)
    assert no_loss[-1].endswith("netem delay 20ms") and "rate 100gbit" in no_loss[2]
    assert not shaping.needs_tree(Impairment(loss=5), netem=True, netem_loss=False)
    assert shaping.needs_tree(Impairment(loss=5), netem=True, netem_loss=True)
    assert not shaping.needs_tree(Impairment(delay=5), netem=False, netem_loss=False)


def test_only_labctls_root_is_recognised():
    assert shaping.is_ours([{"kind": "htb", "handle": "4c:", "root": True}])
    assert not shaping.is_ours([{"kind": "htb", "handle": "1:", "root": True}])
    assert not shaping.is_ours([{"kind": "noqueue", "handle": "0:", "root": True}])


def test_loss_rules_per_node_and_direction_in_hundredths():
    script = netns_links.loss_ruleset(PLAN, {"client1": Impairment(loss=12.34, direction="both")})
    assert script.startswith("table bridge labctl-lab\ndelete table bridge labctl-lab\n")  # atomic replace
    assert 'iifname "lab-c1" meta protocol { ip, ip6 } numgen random mod 10000 < 1234 counter drop ' \
           'comment "client1 out loss 12.34%"' in script
    assert 'oifname "lab-c1"' in script and "lab-srv" not in script
    assert netns_links.loss_ruleset(PLAN, {}) == "table bridge labctl-lab\ndelete table bridge labctl-lab\n"


def test_capabilities_say_what_mechanism_or_why_not():
    here = netns_links.capabilities({"nft_loss": True, "htb": True, "netem": False, "nfqueue": True})
    assert "NFQUEUE" in here.mechanisms["delay"] and not here.missing
    bare = netns_links.capabilities({"nft_loss": True, "htb": True, "netem": False, "nfqueue": False})
    assert "sch_netem" in bare.missing["delay"] and "--backend vagrant" in bare.missing["jitter"]
    with pytest.raises(BackendError, match=r"^client2: delay needs sch_netem"):
        bare.refuse_unsupported({"client2": Impairment(delay=5)})
    bare.refuse_unsupported({"client2": Impairment(loss=5, rate=10**6)})  # those it has
    assert "netem" in netns_links.capabilities({"htb": True, "netem": True}).mechanisms["delay"]


def test_delay_rules_script_removes_then_adds_exactly_its_chains():
    script = netns_delay.rules_script("192.168.20.1", ("out", "in"))
    assert script.index("-D OUTPUT -j labctl-delay-out") < script.index("-N labctl-delay-out")
    assert "-A labctl-delay-out ! -d 192.168.20.1/32 -j NFQUEUE --queue-num 0 --queue-bypass" in script
    assert "-A labctl-delay-in ! -s 192.168.20.1/32 -j NFQUEUE --queue-num 1 --queue-bypass" in script
    assert "-A PREROUTING -j labctl-delay-in" in script and "echo created-mangle" in script
    assert "nft delete table ip mangle" in "\n".join(netns_delay.remove_lines(drop_table=True))
    assert "nft delete table" not in "\n".join(netns_delay.remove_lines(drop_table=False))


def _packet_message(queue: int, packet_id: int) -> bytes:
    hdr = struct.pack("!IHB", packet_id, 0x0800, 3) + b"\0"
    attrs = netns_delayer.attr(netns_delayer.NFQA_PACKET_HDR, hdr) + netns_delayer.attr(9, b"xxxxxx")
    return netns_delayer.message(netns_delayer.NFQNL_MSG_PACKET, queue, attrs)


def test_delayer_reads_packet_ids_of_every_message_in_a_datagram():
    data = _packet_message(0, 7) + _packet_message(1, 8) + b"\x01\x00"  # a truncated tail is ignored
    assert netns_delayer.packets(data) == [(0, 7), (1, 8)]
    v = netns_delayer.verdict(1, 8)
    assert struct.unpack_from("!II", v, 24) == (netns_delayer.NF_ACCEPT, 8)
    assert struct.unpack_from("!H", v, 18)[0] == 1  # the queue number, big-endian in nfgenmsg


def test_delayer_releases_in_time_order():
    delayer = netns_delayer.Delayer()
    delayer.delays = {("ns", 0): (50_000_000, 0)}
    sent: list[tuple[str, list[bytes]]] = []
    delayer._send = lambda netns, verdicts: sent.append((netns, verdicts))
    delayer.held = [(1, 1, "ns", 0, 11), (3, 2, "ns", 0, 13)]
    delayer.release_due()
    assert [struct.unpack_from("!I", v, 28)[0] for _, vs in sent for v in vs] == [11, 13]
    assert delayer.timeout() is None


def test_remote_node_script_builds_out_on_the_interface_and_in_on_an_ifb():
    script = remote_links.node_script("eth1", Impairment(loss=30, delay=50, jitter=5, direction="both"),
                                      "192.168.20.1")
    assert script.startswith("set -e\nif tc qdisc show dev eth1 | grep -q '^qdisc htb 4c: root'")
    assert "tc qdisc add dev eth1 parent 4c:20 handle 4d: netem delay 50ms 5ms loss 30%" in script
    assert "ip link add lcifb0 type ifb" in script
    assert "action mirred egress redirect dev lcifb0" in script
    assert "tc filter add dev lcifb0 parent 4c: protocol ip prio 1 u32 match ip src 192.168.20.1/32" in script
    cleared = remote_links.node_script("eth1", Impairment(), "192.168.20.1")
    assert "qdisc add" not in cleared and "ip link del lcifb0" in cleared
    with pytest.raises(BackendError):
        remote_links.node_script("eth1; reboot", Impairment(loss=1), "192.168.20.1")


def test_remote_read_back_from_tc_output():
    output = ("## out\nqdisc htb 4c: root refcnt 2 r2q 10 default 0x20 direct_packets_stat 0\n"
              "qdisc netem 4d: parent 4c:20 limit 1000 delay 50ms  5ms loss 30%\n"
              "class htb 4c:10 root prio 0 rate 10Gbit ceil 10Gbit burst 1Mb cburst 1Mb\n"
              "class htb 4c:20 root leaf 4d: prio 0 rate 1Mbit ceil 1Mbit burst 1600b cburst 1600b\n"
              "## in\n")
    found = remote_links.parse_read(output)
    assert found == {"out": ["rate 1mbit (htb)", "delay 50ms jitter 5ms loss 30% (netem)"], "in": []}
    host = remote_links.Host("server", "server", "192.168.20.2", lab_interface="eth1")
    report = remote_links.report(host, Impairment(loss=30, delay=50, jitter=5, rate=10**6, direction="both"),
                                 output)
    assert report.applied == ("rate 1mbit out (htb)", "delay 50ms jitter 5ms loss 30% out (netem)")
    assert any("in is not in force" in p for p in report.problems)


def _args(**kw) -> argparse.Namespace:
    base = dict(loss=None, delay=None, jitter=None, rate=None, direction=None)
    return argparse.Namespace(**{**base, **kw})


def test_cli_values_are_parsed_with_the_option_in_the_message():
    change = change_from_args(_args(loss="30%", delay="0.05s", rate="0", direction="in"))
    assert (change.loss, change.delay, change.rate, change.direction) == (30, 50, 0, "in")
    assert change.jitter is None
    with pytest.raises(LinkError, match=r"^--jitter '-1ms'"):
        change_from_args(_args(jitter="-1ms"))


def test_base_backend_offers_nothing():
    from labctl.backends.base import Backend

    assert isinstance(Backend.link_capabilities.__doc__, str)
    caps = LinkCapabilities(missing={"rate": "is not offered"})
    with pytest.raises(BackendError, match="client1: rate is not offered"):
        caps.refuse_unsupported({"client1": Impairment(rate=10**6)})


class FakeRemote(remote_links.RemoteLinks, Backend):
    """A backend whose nodes are reached over SSH, with a scripted ``run`` instead of SSH."""

    name = "fake"

    def up(self, progress=None, check=None):
        return self.inventory()

    def down(self, progress=None):
        pass

    def status(self):
        return []

    def inventory(self):
        hosts = tuple(Host(n.name, n.role, n.address, lab_interface="eth1") for n in self.lab.nodes)
        return Inventory("fake", hosts, self.lab)


class ScriptedNodes:
    def __init__(self, kernel: str = "netem htb ifb") -> None:
        self.kernel = kernel
        self.scripts: list[dict[str, str]] = []

    def __call__(self, scripts):
        self.scripts.append(dict(scripts))
        first = next(iter(scripts.values()))
        if first.startswith("modprobe"):
            return {name: self.kernel for name in scripts}
        if first.startswith("echo '## out'"):
            shaped = "## out\nqdisc htb 4c: root\nqdisc netem 4d: parent 4c:20 limit 1000 delay 50ms\n## in\n"
            return {name: shaped if name == "server" else "## out\n## in\n" for name in scripts}
        return dict.fromkeys(scripts, "")


def test_remote_backend_probes_once_applies_by_script_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(remote_links, "control_address", lambda address: "192.168.20.1")
    backend = FakeRemote(Lab(name="t", clients=1), tmp_path)
    nodes = ScriptedNodes()
    reports = backend.impair({"server": Impairment(delay=50)}, nodes)
    assert [next(iter(s.values()))[:8] for s in nodes.scripts] == ["modprobe", "set -e\ni", "echo '##"]
    assert "netem delay 50ms" in nodes.scripts[1]["server"] and "netem" not in nodes.scripts[1]["client1"]
    assert reports[0].applied == ("delay 50ms out (netem)",) and not reports[0].problems
    backend.impair({}, nodes)
    assert len([s for s in nodes.scripts if next(iter(s.values())).startswith("modprobe")]) == 1
    with pytest.raises(BackendError, match=r"go through labctl\.impairment"):
        backend.impair({})


def test_remote_backend_without_netem_refuses_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(remote_links, "control_address", lambda address: "192.168.20.1")
    backend = FakeRemote(Lab(name="t", clients=1), tmp_path)
    with pytest.raises(BackendError, match=r"^server: loss needs sch_netem, which server, client1 lack"):
        backend.impair({"server": Impairment(loss=10)}, ScriptedNodes(kernel="htb"))


def test_impairment_change_merges_over_what_is_in_force(tmp_path, monkeypatch):
    monkeypatch.setattr(remote_links, "control_address", lambda address: "192.168.20.1")
    backend = FakeRemote(Lab(name="t", clients=1), tmp_path)
    nodes = ScriptedNodes()
    monkeypatch.setattr(impairment, "node_scripts", lambda b: nodes)
    impairment.change(backend, "all", LinkSettings(delay=20.0))
    impairment.change(backend, "client1", LinkSettings(loss=5.0))
    assert backend.link_settings() == {"server": Impairment(delay=20.0),
                                       "client1": Impairment(loss=5, delay=20)}
    impairment.change(backend, "all", LinkSettings(), clear=True)
    assert not any(imp.active for imp in backend.link_settings().values())
    with pytest.raises(BackendError, match="no node named 'client7'"):
        impairment.change(backend, "client7", LinkSettings(loss=1.0))
