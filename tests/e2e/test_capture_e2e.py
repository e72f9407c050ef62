"""capture on every node at once, streamed, live, bounded, on the real lab (namespaces, sshd, tcpdump).

Every file is checked with tshark, independently of labctl.analyse: one named interface per node,
per-interface counts equal to each tcpdump's own, every client's SYN seen twice.
"""
from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO
from tests.procs import live_processes
from tests.requires import require_tool

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def patient_lead(monkeypatch):
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")   # function, not speed (see test_exercise_e2e)


def fields(pcap: Path, *names: str, display_filter: str = "") -> list[list[str]]:
    argv = [require_tool("tshark"), "-r", str(pcap), "-T", "fields"]
    for n in names:
        argv += ["-e", n]
    if display_filter:
        argv += ["-Y", display_filter]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]


def all_tcpdumps(lab) -> list[int]:
    """labctl's tcpdumps in any node of ``lab``."""
    found = []
    for pid, cmd, _entry in live_processes():
        if b"tcpdump" in cmd and b"--time-stamp-precision=nano" in cmd:
            ns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout
            if ns.startswith(f"{lab.name}-"):
                found.append(pid)
    return found


def no_tcpdump_left(lab, within: float = 5.0) -> None:
    """No tcpdump of labctl's in ``lab``: stopped by PID, nothing left (an init that reaps lazily may
    take a moment to clear a zombie, which does not count)."""
    deadline = time.monotonic() + within
    while all_tcpdumps(lab) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = all_tcpdumps(lab)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]


def remote_copies(lab) -> list[Path]:
    return list(lab.state_dir.rglob("labctl-capture-*"))


def test_every_node_at_once_one_pcapng_one_interface_per_node(netns_lab, tmp_path):
    hosts = {h.name: h.address for h in netns_lab.inventory.hosts}
    out = tmp_path / "all.pcapng"
    proc = netns_lab.cli("capture", "--nodes", "all", "--run", "tcp", "-o", str(out), "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert [n["node"] for n in result["nodes"]] == list(hosts)
    rows = fields(out, "frame.interface_name", "frame.interface_description", "frame.time_epoch")
    per_iface: dict[str, int] = {}
    for name, description, _ in rows:
        per_iface[name] = per_iface.get(name, 0) + 1
        node = name.split("/")[0]
        assert description == f"{node} {hosts[node]}"
    for n in result["nodes"]:  # per-interface counts equal to each tcpdump's own
        assert n["stats"]["captured"] == n["stats"]["received"] and n["stats"]["dropped"] == 0
        assert per_iface[f"{n['node']}/eth0"] == n["stats"]["captured"] == n["packets"] > 0
        assert n["clock"]["kind"] == "same"
    stamps = [float(t) for _, _, t in rows]
    assert stamps == sorted(stamps)                      # merged in time order
    syns = fields(out, "ip.src", "frame.interface_name",
                  display_filter="tcp.flags.syn==1 && tcp.flags.ack==0")
    for client in ("client1", "client2", "client3"):     # every client's SYN seen twice: client and server
        seen = sorted(iface for src, iface in syns if src == hosts[client])
        assert seen == sorted([f"{client}/eth0", "server/eth0"]), syns
    no_tcpdump_left(netns_lab)
    assert not remote_copies(netns_lab)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 60, stream=None) -> str:
    """Read proc's stderr until a line contains ``text``."""
    deadline = time.monotonic() + timeout
    seen = ""
    stream = stream or proc.stderr
    while time.monotonic() < deadline:
        line = stream.readline()
        seen += line
        if text in line:
            return seen
        if not line and proc.poll() is not None:
            break
    pytest.fail(f"never saw {text!r}: {seen}")


def test_stdout_stream_into_tshark_counts_every_packet_while_the_capture_runs(netns_lab, tmp_path):
    netns_lab.cli("deploy", check=True)
    home = tmp_path / "home.pcapng"
    cap = subprocess.Popen(netns_lab.cli_argv("capture", "--nodes", "server,client2", "-o", "-"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False, cwd=REPO)
    tshark = subprocess.Popen([require_tool("tshark"), "-l", "-r", "-", "-T", "fields",
                               "-e", "frame.interface_name"], stdin=cap.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    cap.stdout.close()
    err_text = io.TextIOWrapper(cap.stderr)
    try:
        _wait_for(cap, "tcpdump listening on server eth0, client2 eth0", stream=err_text)
        assert netns_lab.cli("run", "udp").returncode == 0
        got = b""
        deadline = time.monotonic() + 60
        while got.count(b"\n") < 8 and time.monotonic() < deadline:  # 6 datagrams at the server, 2 at client2
            ready, _, _ = select.select([tshark.stdout], [], [], 1)
            if ready:
                got += os.read(tshark.stdout.fileno(), 65536)
        lines = got.decode().split()
        assert cap.poll() is None, "the capture ended on its own"
        assert sorted(lines) == ["client2/eth0"] * 2 + ["server/eth0"] * 6, lines
        cap.send_signal(signal.SIGINT)                  # Ctrl-C: a complete file stays, no tcpdump
        err = err_text.read()
        cap.wait(timeout=60)
        tshark.wait(timeout=60)
    finally:
        for p in (cap, tshark):
            if p.poll() is None:
                p.kill()
    assert cap.returncode == 0, err
    homes = [w for w in err.split() if w.startswith("captures/") and w.endswith(".pcapng:")]
    assert homes, err
    path = Path(REPO) / homes[0].rstrip(":")
    try:
        assert len(fields(path, "frame.number")) == 8
        os.replace(path, home)
    finally:
        path.unlink(missing_ok=True)
    time.sleep(0.1)
    no_tcpdump_left(netns_lab)
    assert not remote_copies(netns_lab)


def test_a_closed_pipe_stops_the_capture_cleanly(netns_lab, tmp_path):
    argv = " ".join(f"'{a}'" for a in netns_lab.cli_argv("capture", "-o", "-"))
    proc = subprocess.run(["bash", "-c", f"{argv} | head -c 10 > /dev/null; echo rc=${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "rc=0" in proc.stdout, proc.stderr
    assert "the reader of stdout went away" in proc.stderr and "Traceback" not in proc.stderr
    homes = {w.rstrip(";:") for w in proc.stderr.split() if w.startswith("captures/")}
    assert homes, proc.stderr
    for home in homes:                                 # the complete file at home, then tidied away
        assert (Path(REPO) / home).exists(), home
        (Path(REPO) / home).unlink(missing_ok=True)
    no_tcpdump_left(netns_lab)
    assert not remote_copies(netns_lab)


def test_live_under_a_terminal_shows_packets_before_the_capture_ends(netns_lab, tmp_path):
    netns_lab.cli("deploy", check=True)
    out = tmp_path / "live.pcapng"
    master, slave = pty.openpty()
    cap = subprocess.Popen(netns_lab.cli_argv("capture", "--nodes", "all", "--live", "-o", str(out)),
                           stdin=slave, stdout=slave, stderr=subprocess.PIPE, text=True,
                           cwd=REPO, env={**os.environ, "COLUMNS": "200", "LINES": "60"})
    os.close(slave)
    screen = b""
    try:
        _wait_for(cap, "tcpdump listening on")
        assert netns_lab.cli("run", "tcp").returncode == 0
        deadline = time.monotonic() + 60
        while b"FIN" not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                screen += os.read(master, 65536)
        assert cap.poll() is None, "the capture ended on its own"
        assert b"SYN seq=0" in screen and b"@client1" in screen, screen[-2000:]
        cap.send_signal(signal.SIGINT)
        while cap.poll() is None:               # keep the pty drained so the final picture can be drawn
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
        cap.wait(timeout=60)
    finally:
        if cap.poll() is None:
            cap.kill()
        os.close(master)
    assert cap.returncode == 0, cap.stderr.read()
    names = {row[0] for row in fields(out, "frame.interface_name")}
    assert names == {"server/eth0", "client1/eth0", "client2/eth0", "client3/eth0"}
    assert len(fields(out, "frame.number", display_filter="tcp.flags.syn==1 && tcp.flags.ack==0")) == 6
    no_tcpdump_left(netns_lab)
    assert not remote_copies(netns_lab)


def test_live_without_a_terminal_prints_one_line_per_packet(netns_lab, tmp_path):
    out = tmp_path / "lines.pcap"
    proc = netns_lab.cli("capture", "--run", "udp", "--live", "-o", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if " ms  server/eth0 " in ln]
    assert len(lines) == len(fields(out, "frame.number")) == 6, proc.stdout
    assert sum("UDP len=" in ln for ln in lines) == 6
