"""Link impairment on the real embedded lab: loss, rate, delay, clear, and nothing left after down.

Everything goes through the CLI a user types (``labctl impair``, ``capture --run``, ``run``), except
the transfers of the rate check, which are this test's own programs (a sender and a receiver that
move some kilobytes between two lab namespaces). Retransmission counts are cross-checked with tshark.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from labctl.analyse import analyse_file
from labctl.backends import remote_links
from labctl.links import Impairment
from tests.requires import require_tool
from tests.test_analyse_support import tshark_count

pytestmark = pytest.mark.lab

TRANSFER_BYTES = 150_000
INITIAL_WINDOW = 10 * 1448  # bytes: Linux's initial congestion window of MSS-sized segments
PORT = 9700
SENDER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); conn.sendall(b"x" * int(sys.argv[2])); conn.close()
"""
RECEIVER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
start = time.perf_counter(); got = 0
while (chunk := s.recv(65536)):
    got += len(chunk)
print(got, time.perf_counter() - start)
"""


def nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout


def transfer_seconds(lab_plan, sender: str, receiver: str, size: int = TRANSFER_BYTES) -> float:
    """Seconds for ``size`` bytes to go from node ``sender`` to node ``receiver`` over TCP."""
    src, dst = lab_plan.node(sender), lab_plan.node(receiver)
    proc = subprocess.Popen(["ip", "netns", "exec", src.netns, "python3", "-c", SENDER, str(PORT), str(size)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        argv = ["ip", "netns", "exec", dst.netns, "python3", "-c", RECEIVER, src.address, str(PORT)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.split()
        assert int(out[0]) == size
        return float(out[1])
    finally:
        proc.kill()
        proc.wait()


def connect_ms(lab_plan, client: str, server: str, count: int = 10) -> list[float]:
    """TCP handshake times (connect() to the server's sshd) from ``client``, in ms."""
    code = (f"import socket, sys, time\nfor _ in range({count}):\n    t = time.perf_counter()\n"
            "    s = socket.create_connection((sys.argv[1], 22), timeout=5)\n"
            "    print((time.perf_counter() - t) * 1000); s.close(); time.sleep(0.02)\n")
    netns, address = lab_plan.node(client).netns, lab_plan.node(server).address
    argv = ["ip", "netns", "exec", netns, "python3", "-c", code, address]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return [float(x) for x in out.stdout.split()]


def answered(result: dict) -> bool:
    """The client got its reply (one that woke late for its start instant is ok, with a warning)."""
    return result["ok"]


def cli_json(lab, *args: str, ok_codes=(0,)) -> dict:
    proc = lab.cli(*args, "--json", timeout=180)
    assert proc.returncode in ok_codes, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1] if args[0] == "run" else proc.stdout)


def test_loss_tcp_retransmits_udp_loses_and_clear_and_down_leave_nothing(make_lab, tmp_path):
    require_tool("tshark", "apt-get install tshark")
    lab = make_lab(clients=3)
    lab.up()
    assert lab.cli("deploy").returncode == 0
    links = cli_json(lab, "impair", "--node", "server", "--loss", "30%")["links"]
    assert links[0]["applied"] == ["loss 30% out (nft numgen, 0 dropped)"]

    retransmitted = 0
    for i in range(3):  # repeated capture --run tcp (a client may give up at its 3 s timeout: exit 1)
        out = cli_json(lab, "capture", "--run", "tcp", "-o", str(tmp_path / f"loss{i}.pcap"), ok_codes=(0, 1))
        pcap = Path(out["path"])
        ours = sum(c.retransmissions for c in analyse_file(pcap).tcp())
        assert ours == tshark_count(pcap, "tcp.analysis.retransmission")
        retransmitted += ours
    assert retransmitted > 0, "30 % loss on the server's link must show TCP retransmissions"

    out = lab.cli("run", "tcp", "--timeout", "30", "--repeat", "3", "--json", timeout=300).stdout
    tcp_runs = [json.loads(line) for line in out.splitlines()]
    assert len(tcp_runs) == 3
    for result in (r for run in tcp_runs for r in run["results"]):
        assert answered(result), f"TCP retransmits until every client has its time: {result}"
    udp_runs = [json.loads(line) for line in
                lab.cli("run", "udp", "--retries", "0", "--timeout", "0.5", "--repeat", "10", "--json",
                        timeout=180).stdout.splitlines()]
    unanswered = sum(not r["ok"] for run in udp_runs for r in run["results"])
    assert len(udp_runs) == 10 and unanswered > 0, "UDP clients simply lose answers"

    status = cli_json(lab, "status", ok_codes=(0, 1))
    server = next(link for link in status["links"] if link["node"] == "server")
    dropped = int(server["applied"][0].split(", ")[1].split()[0])
    assert dropped > 0

    cleared = cli_json(lab, "impair", "--clear")["links"]
    assert all(not link["applied"] for link in cleared)
    assert f"table bridge labctl-{lab.name}" not in nft_tables()
    out = cli_json(lab, "capture", "--run", "tcp", "-o", str(tmp_path / "clear.pcap"))
    assert tshark_count(Path(out["path"]), "tcp.analysis.retransmission") == 0
    assert all(answered(r) for r in out["run"]["results"])

    assert lab.cli("impair", "--node", "client2", "--loss", "5%", "--delay", "10ms").returncode == 0
    assert lab.cli("down").returncode == 0
    tables = nft_tables()
    assert f"labctl-{lab.name}" not in tables
    assert not lab.leftovers()  # namespaces, links, the delay process (its command line names the state)


def test_up_applies_links_and_rate_slows_a_transfer_by_the_expected_factor(make_lab):
    lab = make_lab(clients=2)
    with open(lab.lab_file, "a") as f:
        f.write("links:\n  server: {rate: 1mbit}\n  client2: {rate: 2mbit, direction: in}\n")
    lab.up()
    plan = lab.backend().state.read_plan()
    links = {link["node"]: link for link in cli_json(lab, "status")["links"]}
    assert links["server"]["applied"] == ["rate 1mbit out (htb on eth0 in the node)"]
    assert links["client2"]["applied"] == [f"rate 2mbit in (htb on host veth {plan.node('client2').veth})"]

    expected = TRANSFER_BYTES * 8 / 1e6                  # seconds at 1 Mbit/s (headers make it ~4 % more)
    # the sender's first flight (its initial window, 10 segments) can leave as one GSO packet that htb
    # lets through at once, before its bucket goes negative: the rest is held to the rate
    at_least = (TRANSFER_BYTES - INITIAL_WINDOW) * 8 / 1e6 * 0.95
    slowed = transfer_seconds(plan, "server", "client1")
    assert at_least <= slowed <= 1.5 * expected, (slowed, at_least, expected)
    into_client2 = transfer_seconds(plan, "client1", "client2")  # only the 2 Mbit/s into client2
    assert at_least / 2 <= into_client2 <= 1.5 * expected / 2, (into_client2, at_least / 2)
    free = transfer_seconds(plan, "client1", "server")   # nobody limits client1's sending or the server's in
    assert free < expected / 10

    assert lab.cli("impair", "--node", "server", "--rate", "0").returncode == 0
    assert transfer_seconds(plan, "server", "client1") < expected / 10
    lab.backend().down()
    assert f"labctl-{lab.name}" not in nft_tables()


def test_delay_without_netem_holds_packets_in_the_delayer(make_lab):
    lab = make_lab(clients=1)
    lab.up()
    plan = lab.backend().state.read_plan()
    before = statistics.median(connect_ms(plan, "client1", "server"))
    out = cli_json(lab, "impair", "--node", "client1", "--delay", "50ms")
    applied = out["links"][1]["applied"]
    assert applied and applied[0].startswith("delay 50ms out (") and not out["links"][1]["problems"]
    delayed = connect_ms(plan, "client1", "server")
    assert min(delayed) >= 50.0, delayed            # every SYN held 50 ms (precision: bench/impair.py)
    assert statistics.median(delayed) < 50.0 + before + 25.0
    assert lab.cli("impair", "--node", "client1", "--delay", "0").returncode == 0
    assert statistics.median(connect_ms(plan, "client1", "server")) < 25.0
    mangle = subprocess.run(["ip", "netns", "exec", plan.node("client1").netns, "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "mangle" not in mangle, "labctl removes the iptables table it created"
    assert lab.backend().link_reports()[1].applied == ()


def test_the_remote_scripts_shape_for_real_both_ways(make_lab):
    """The vagrant/ssh backends' script (htb on the interface, htb on an ifb for what it receives) run
    in a node's namespace: this kernel has no netem, so only the rate, but the tree and the ifb are real."""
    lab = make_lab(clients=2)
    lab.up()
    plan = lab.backend().state.read_plan()
    node = plan.node("client1")

    def on_node(script: str) -> str:
        return subprocess.run(["ip", "netns", "exec", node.netns, "sh", "-c", script], capture_output=True,
                              text=True, check=True).stdout

    on_node(remote_links.node_script("eth0", Impairment(rate=10**6, direction="both"), plan.host_address))
    try:
        found = remote_links.parse_read(on_node(remote_links.read_script("eth0")))
        assert found == {"out": ["rate 1mbit (htb)"], "in": ["rate 1mbit (htb)"]}
        expected = TRANSFER_BYTES * 8 / 1e6
        for sender, receiver in (("client1", "client2"), ("client2", "client1")):
            seconds = transfer_seconds(plan, sender, receiver)
            assert 0.9 * expected <= seconds <= 1.5 * expected, (sender, receiver, seconds)
        start = time.perf_counter()
        assert lab.cli("status").returncode == 0, "labctl's own SSH to the node is exempt"
        assert time.perf_counter() - start < 10
    finally:
        on_node("\n".join(["set -e", *remote_links.remove_lines("eth0")]))
    links = subprocess.run(["ip", "netns", "exec", node.netns, "ip", "-o", "link"], capture_output=True,
                           text=True, check=True).stdout
    assert "lcifb0" not in links
    assert remote_links.parse_read(on_node(remote_links.read_script("eth0"))) == {"out": [], "in": []}
    assert "htb" not in on_node("tc qdisc show dev eth0")
