"""``analyse`` of a real multi-node capture: ``labctl capture --nodes all --run tcp`` on the embedded lab.

Every client's SYN is matched at both ends with a one-way time >= 0, the per-interface counts equal
tshark's (``frame.interface_name``), and with the server's first reply to client2 dropped on the wire
(an nftables rule on the lab's bridge, after the server's capture point and before client2's) the
analysis names the hop where it was lost.
"""
from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from labctl.analyse.multinode import analyse_captures
from tests.requires import require_tool

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def patient_lead(monkeypatch):
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")   # function, not speed (see test_exercise_e2e)


def _capture(lab, out: Path) -> None:
    proc = lab.cli("capture", "--nodes", "all", "--run", "tcp", "-o", str(out), "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def _tshark_per_interface(path: Path) -> dict[str, tuple[int, int]]:
    """tshark's (packets, bytes on the wire) per ``frame.interface_name``."""
    rows = subprocess.run([require_tool("tshark", "apt-get install tshark"), "-r", str(path), "-T", "fields",
                           "-e", "frame.interface_name", "-e", "frame.len"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.splitlines()
    out: dict[str, tuple[int, int]] = {}
    for row in rows:
        name, length = row.split("\t")
        n, b = out.get(name, (0, 0))
        out[name] = (n + 1, b + int(length))
    return out


def _analyse_json(lab, path: Path) -> dict:
    proc = lab.cli("analyse", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_syn_matched_at_both_ends(netns_lab, tmp_path):
    hosts = {h.name: h.address for h in netns_lab.inventory.hosts}
    out = tmp_path / "all.pcapng"
    _capture(netns_lab, out)
    a = analyse_captures([out])
    convs = {c.client.rsplit(":", 1)[0]: c for c in a.tcp()}
    for client in ("client1", "client2", "client3"):
        conv = convs[hosts[client]]
        assert (conv.client_node, conv.server_node) == (client, "server")
        syn = conv.ladder[0]
        assert syn.label == "SYN" and syn.one_way_ms is not None and syn.one_way_ms >= 0, conv.ladder
        assert conv.retransmissions == 0 and conv.dup_acks == 0      # a sighting is not a resend
        assert conv.crossings.to_server.packets >= 3 and conv.crossings.to_server.min_ms >= 0
        assert conv.crossings.to_client.packets >= 3 and conv.crossings.to_client.min_ms >= 0
        assert not conv.crossings.lost
        assert set(conv.crossings.seen_at) == {"server/eth0", f"{client}/eth0"}
    doc = _analyse_json(netns_lab, out)
    points = {p["name"]: (p["packets"], p["bytes"]) for p in doc["summary"]["nodes"]["capture_points"]}
    assert points == _tshark_per_interface(out)
    assert doc["summary"]["nodes"]["lost"] == 0
    assert doc["summary"]["packets"] < sum(n for n, _ in points.values())   # each packet once
    for line in doc["conversations"]:
        assert line["files"] == [str(out)]


@contextmanager
def _drop_on_bridge(name: str, src: str, dst: str):
    """A bridge-family nftables table dropping the first SYN-ACK from ``src`` to ``dst`` as the lab's
    bridge forwards it (the sender's capture saw it leave; the receiver's never sees it)."""
    nft = require_tool("nft", "apt-get install nftables")
    table = f"{name}drop{os.getpid() % 100000}"
    rules = (f"add table bridge {table}\n"
             f"add chain bridge {table} lose {{ type filter hook forward priority -10 ; }}\n"
             f"add rule bridge {table} lose ip saddr {src} ip daddr {dst} "
             "tcp flags & (syn | ack) == (syn | ack) numgen inc mod 1000000 == 0 counter drop\n")
    subprocess.run([nft, "-f", "-"], input=rules, text=True, check=True, capture_output=True)
    try:
        yield table
    finally:
        subprocess.run([nft, "delete", "table", "bridge", table], capture_output=True)
    assert table not in subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout


def test_a_packet_dropped_on_the_wire_is_named_where_it_was_last_seen(make_lab, tmp_path):
    lab = make_lab(clients=2)
    lab.up()
    hosts = {h.name: h.address for h in lab.inventory.hosts}
    out = tmp_path / "lossy.pcapng"
    with _drop_on_bridge(lab.name, hosts["server"], hosts["client2"]) as table:
        _capture(lab, out)
        listed = subprocess.run([require_tool("nft"), "list", "table", "bridge", table], capture_output=True,
                                text=True).stdout
        assert "packets 1 " in listed, listed          # the rule dropped exactly one frame
    doc = _analyse_json(lab, out)
    lost = doc["summary"]["nodes"]["lost_packets"]
    assert [(x["packet"], x["from"], x["to"], x["last_seen"]) for x in lost] == [
        ("SYN-ACK", "server", "client2", "server")], lost
    (conv,) = [c for c in doc["conversations"] if c["client"].startswith(hosts["client2"] + ":")]
    assert conv["lost"][0]["text"].startswith("SYN-ACK left server at ")
    assert conv["lost"][0]["text"].endswith("never reached client2")
    others = [c for c in doc["conversations"] if not c["client"].startswith(hosts["client2"] + ":")]
    assert others and all(not c["lost"] for c in others)
    points = {p["name"]: (p["packets"], p["bytes"]) for p in doc["summary"]["nodes"]["capture_points"]}
    assert points == _tshark_per_interface(out)
    text = lab.cli("analyse", str(out), "--ladders", "3")
    assert text.returncode == 0, text.stderr
    assert "never reached client2" in text.stdout and "✗" in text.stdout
