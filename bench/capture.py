"""Benchmark: what capturing on every node costs beside capturing on the server alone.

Brings up its own namespace lab (``benchcap``, 192.168.127.0/24, server + 3 clients) holding the lab
lock, deploys, then in the same run and alternating, N times each:

  before, 1 node   the capture as it was before streaming (labctl.capture up to this change): tcpdump
                   -w FILE started detached, its log polled for "listening on", stopped by PID, its log
                   read, the pcap fetched by SFTP, the remote files removed (reproduced here step by step)
  now, 1 node      labctl.capture.capture on the server: one exec streams the pcap home
  now, 4 nodes     labctl.capture.capture on server and the 3 clients at once, merged into one pcapng

Each is timed as "arm" (until every tcpdump listens) and "whole" (arm + stop + home + checks), with
nothing captured in between (during returns at once): the overhead a capture adds to what it
captures. Then the whole CLI: ``run tcp``, ``capture --run tcp`` and ``capture --nodes all --run tcp``
(median wall time). Targets (issue 13): arming 4 nodes adds no more than a capture on one node did
before; ``capture --run tcp`` with 4 capture points <= 2 s.

    .venv/bin/python bench/capture.py [--runs 10]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl.capture import capture  # noqa: E402
from labctl.deploy import ensure, ports_of  # noqa: E402
from labctl.remote import Connection, Group  # noqa: E402

LOCK_FILE = "/run/labctl-test.lock"
STATE_ROOT = Path("/run/labctl")
LAB = ("name: benchcap\nsubnet: 192.168.127.0/24\nhost_address: 192.168.127.1\n"
       "server_address: 192.168.127.2\nclients: 3\n")


def cli(lab: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(REPO / "labctl.py"), "--lab", str(lab), "--state-dir", str(STATE_ROOT), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, cwd=REPO, timeout=300)


def before_one_node(conn: Connection, out: Path) -> tuple[float, float]:
    """The capture before streaming, step by step: start -w FILE, poll the log, stop, log, get, rm."""
    stamp = f"{time.time():.6f}".replace(".", "-")
    remote, log = f"/tmp/labctl-bench-{stamp}.pcap", f"/tmp/labctl-bench-{stamp}.log"
    argv = ["timeout", "--signal=INT", "--kill-after=5", "3600", "tcpdump", "-i", conn.host.lab_interface,
            "-n", "--immediate-mode", "-U", "-s", "0", "-B", "32768", "-w", remote, "port 8080"]
    t0 = time.perf_counter()
    pid = conn.start(argv, log=log, ready="listening on", timeout=15, sudo=True)
    armed = time.perf_counter() - t0
    conn.stop(pid, sig="INT", timeout=10, sudo=True)
    conn.run(["cat", log], check=False, sudo=True, timeout=30)
    conn.get(remote, out)
    conn.run(["rm", "-f", remote, log], check=False, sudo=True, timeout=30)
    return armed, time.perf_counter() - t0


def now(conns: list[Connection], out: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    result = capture(conns if len(conns) > 1 else conns[0], [8080], output=out, during=lambda: None,
                     settle=0)
    return result.arm_seconds, time.perf_counter() - t0


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/capture.py: run as root (it builds a namespace lab)")
    ways = ("before, 1 node", "now, 1 node", "now, 4 nodes")
    arm: dict[str, list[float]] = {w: [] for w in ways}
    whole: dict[str, list[float]] = {w: [] for w in ways}
    cli_times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp, open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = Path(tmp)
        lab = work / "benchcap.yml"
        lab.write_text(LAB)
        try:
            cli(lab, "up")
            from labctl.backends.netns import NetnsBackend
            from labctl.lab import load_lab

            inventory = NetnsBackend(load_lab(lab), STATE_ROOT / "benchcap").inventory()
            with Group(inventory.hosts) as group:
                if not ensure(group, ports_of(inventory)).ok:
                    raise SystemExit("deploy failed")
                conns = list(group)
                server = group[inventory.server.name]
                for w in ways:  # warm up: connections open, caches warm
                    (before_one_node(server, work / "w.pcap") if w.startswith("before")
                     else now(conns if "4" in w else [server], work / "w.pcapng"))
                for _ in range(args.runs):
                    for w in ways:
                        if w.startswith("before"):
                            a, t = before_one_node(server, work / "b.pcap")
                        else:
                            a, t = now(conns if "4" in w else [server], work / "n.pcapng")
                        arm[w].append(a)
                        whole[w].append(t)
            commands = {"run tcp": ("run", "tcp", "--json"),
                        "capture --run tcp (server)": ("capture", "--run", "tcp", "--json", "-o",
                                                       str(work / "c.pcap")),
                        "capture --nodes all --run tcp": ("capture", "--nodes", "all", "--run", "tcp",
                                                          "--json", "-o", str(work / "c.pcapng"))}
            for _ in range(args.runs):
                for name, argv in commands.items():
                    t0 = time.perf_counter()
                    proc = cli(lab, *argv, check=False)
                    cli_times.setdefault(name, []).append(time.perf_counter() - t0)
                    if proc.returncode != 0:
                        print(f"`{name}` exited {proc.returncode}: {proc.stderr.strip()[-200:]}",
                              file=sys.stderr)
        finally:
            cli(lab, "down", check=False)
    ref = med(whole["before, 1 node"])
    print(f"\ncapture overhead, nothing captured, median of {args.runs} (ratio: / before, 1 node whole)")
    print(f"{'':>16} {'arm ms':>8} {'whole ms':>9} {'ratio':>6}")
    for w in ways:
        print(f"{w:>16} {med(arm[w]) * 1000:>8.1f} {med(whole[w]) * 1000:>9.1f} {med(whole[w]) / ref:>6.2f}")
    added = med(arm["now, 4 nodes"]) - med(arm["now, 1 node"])
    print(f"arming 3 more nodes adds {added * 1000:.1f} ms; a whole one-node capture before took "
          f"{ref * 1000:.1f} ms (target: added <= that)")
    print(f"\nwhole CLI, wall time, median of {args.runs}")
    for name, times in cli_times.items():
        print(f"  {name:<32} {med(times):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
