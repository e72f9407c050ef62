"""What link impairment costs and how precise its delay is, on the embedded lab (this kernel: no netem).

1. Throughput of one TCP transfer server -> client1 (this bench's own sender and receiver, --mbytes MB),
   with the links perfect (the reference, measured in the same run) and then with, on the server's
   link: an nft loss rule that is evaluated for every packet but drops none (the cost of the rule
   itself), ``--loss 0.01%``, ``--rate 10gbit`` (labctl's htb tree, never the bottleneck), and
   ``--delay 0.001ms`` (every packet through the NFQUEUE delayer: its per-packet cost).
2. Delay precision: ``--delay D`` on client1's link for D = 20, 50, 100 ms; the TCP handshake RTT in a
   capture on the server (SYN-ACK to the client's ACK, tshark's ``tcp.analysis.ack_rtt``) for --conns
   connections, idle and while a bulk transfer client2 -> server loads the machine; the reference is
   the same measurement with no delay. Target: median within 10 % + 1 ms of D.

    sudo .venv/bin/python bench/impair.py [--mbytes 200] [--conns 30] [--lab FILE] [--json]

Holds /run/labctl-test.lock; uses its own lab (``benchimp``, 192.168.126.0/24) unless --lab names one.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK_FILE = "/run/labctl-test.lock"
LAB = """name: benchimp
subnet: 192.168.126.0/24
host_address: 192.168.126.1
server_address: 192.168.126.2
clients: 2
"""
PORT, CONNECT_PORT = 9701, 9702
SENDER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); buf = memoryview(b"x" * (1 << 20))
for _ in range(int(sys.argv[2])):
    conn.sendall(buf)
conn.close()
"""
RECEIVER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
buf = bytearray(1 << 20); got = 0; start = time.perf_counter()
while (n := s.recv_into(buf)):
    got += n
print(got, time.perf_counter() - start)
"""
LISTENER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(128); print("ready", flush=True)
while True:
    srv.accept()[0].close()
"""
CONNECTOR = """
import socket, sys, time
for _ in range(int(sys.argv[3])):
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close(); time.sleep(0.03)
"""


class Bench:
    def __init__(self, lab_file: Path) -> None:
        sys.path.insert(0, str(REPO))
        from labctl.backends.netns import NetnsBackend
        from labctl.lab import load_lab

        self.lab_file = lab_file
        self.lab = load_lab(lab_file)
        self.backend = NetnsBackend(self.lab, Path("/run/labctl") / self.lab.name)

    def cli(self, *args: str) -> None:
        proc = subprocess.run([sys.executable, str(REPO / "labctl.py"), "--lab", str(self.lab_file), *args],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"bench: labctl {' '.join(args)} failed: {(proc.stderr + proc.stdout).strip()}")

    def node(self, name: str):
        return self.backend.state.read_plan().node(name)

    def started(self, node: str, code: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.node(node).netns, "python3", "-c", code, *args],
                                stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"bench: a helper on {node} did not start")
        return proc

    def throughput(self, mbytes: int, sender: str = "server", receiver: str = "client1") -> float:
        """Gbit/s of one TCP transfer of ``mbytes`` MiB from ``sender`` to ``receiver``."""
        proc = self.started(sender, SENDER, str(PORT), str(mbytes))
        try:
            out = subprocess.run(["ip", "netns", "exec", self.node(receiver).netns, "python3", "-c", RECEIVER,
                                  self.node(sender).address, str(PORT)], capture_output=True, text=True,
                                 check=True, timeout=600).stdout.split()
        finally:
            proc.kill()
            proc.wait()
        return int(out[0]) * 8 / float(out[1]) / 1e9

    def handshakes(self, conns: int, tmp: Path) -> list[float]:
        """Handshake RTTs (ms) seen by tcpdump on the server: SYN-ACK to the client1's ACK."""
        pcap = tmp / "handshakes.pcap"
        server = self.node("server")
        listener = self.started("server", LISTENER, str(CONNECT_PORT))
        dump = subprocess.Popen(["ip", "netns", "exec", server.netns, "tcpdump", "-i", "eth0", "-w",
                                 str(pcap), "--immediate-mode", "-U", "-s", "128",
                                 f"tcp port {CONNECT_PORT}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            subprocess.run(["ip", "netns", "exec", self.node("client1").netns, "python3", "-c", CONNECTOR,
                            server.address, str(CONNECT_PORT), str(conns)], check=True, timeout=120)
            time.sleep(0.3)
        finally:
            dump.terminate()
            dump.wait()
            listener.kill()
            listener.wait()
        out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tcp.analysis.ack_rtt and tcp.seq == 1 and "
                              "tcp.ack == 1 and tcp.flags.syn == 0 and tcp.len == 0 and tcp.dstport == "
                              f"{CONNECT_PORT}", "-T", "fields", "-e", "tcp.analysis.ack_rtt"],
                             capture_output=True, text=True, check=True).stdout.split()
        return [float(x) * 1000 for x in out]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "median": statistics.median(ordered), "p90": ordered[int(len(ordered) * 0.9)],
            "min": ordered[0], "max": ordered[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbytes", type=int, default=200, help="MiB per throughput transfer")
    parser.add_argument("--conns", type=int, default=30, help="handshakes per delay setting")
    parser.add_argument("--repeat", type=int, default=3, help="transfers per throughput figure (median)")
    parser.add_argument("--lab", type=Path, help="lab file (default: the bench's own lab)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (it builds a namespace lab)")
    results: dict = {"throughput_gbit": {}, "delay_ms": {}}
    with tempfile.TemporaryDirectory() as tmp, open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab_file = args.lab or Path(tmp) / "benchimp.yml"
        if args.lab is None:
            lab_file.write_text(LAB)
        bench = Bench(lab_file)
        bench.cli("up")
        try:
            tput = results["throughput_gbit"]

            def measure(label: str) -> None:
                tput[label] = statistics.median(bench.throughput(args.mbytes) for _ in range(args.repeat))

            measure("reference (perfect links)")
            table = f"bridge labctl-{bench.lab.name}"
            veth = bench.node("server").veth
            subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
                f"table {table} {{\n chain forward {{\n"
                "  type filter hook forward priority -200; policy accept;\n"
                f'  iifname "{veth}" meta protocol {{ ip, ip6 }} numgen random mod 10000 < 0 counter drop\n'
                " }\n}\n"))
            measure("nft loss rule, evaluated, drops nothing")
            subprocess.run(["nft", "delete", "table", *table.split()], check=True)
            for label, option in (("--loss 0.01%", ("--loss", "0.01%")),
                                  ("--rate 10gbit (htb)", ("--rate", "10gbit")),
                                  ("--delay 0.001ms (NFQUEUE delayer)", ("--delay", "0.001ms"))):
                bench.cli("impair", "--node", "server", *option)
                measure(label)
                bench.cli("impair", "--clear")
            measure("reference again")

            delays = results["delay_ms"]
            delays["0 ms (reference), idle"] = summary(bench.handshakes(args.conns, Path(tmp)))
            for load in ("idle", "loaded"):
                for delay in (20, 50, 100):
                    bench.cli("impair", "--node", "client1", "--delay", f"{delay}ms")
                    loader = None
                    if load == "loaded":  # a bulk transfer client2 -> server meanwhile
                        loader = subprocess.Popen([sys.executable, __file__, "--_load", str(lab_file)],
                                                  start_new_session=True)
                        time.sleep(1.0)
                    try:
                        delays[f"{delay} ms, {load}"] = summary(bench.handshakes(args.conns, Path(tmp)))
                    finally:
                        if loader:  # it and its transfers, by process group
                            os.killpg(loader.pid, signal.SIGKILL)
                            loader.wait()
                    bench.cli("impair", "--clear")
        finally:
            bench.cli("down")
    report(results, args.json)
    return 0


def report(results: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=1))
        return
    ref = results["throughput_gbit"]["reference (perfect links)"]
    print("throughput server -> client1, one TCP stream (median of --repeat transfers):")
    for label, gbit in results["throughput_gbit"].items():
        print(f"  {label:42s} {gbit:7.2f} Gbit/s  {gbit / ref:5.2f}x of the reference")
    base = results["delay_ms"]["0 ms (reference), idle"]["median"]
    print("handshake RTT in a capture on the server (SYN-ACK -> ACK), ms:")
    for label, s in results["delay_ms"].items():
        setting = float(label.split()[0])
        verdict = ""
        if setting:
            error = s["median"] - setting
            verdict = f"  error {error:+6.2f} ms ({'ok' if abs(error) <= 0.1 * setting + 1 else 'OUTSIDE'} " \
                      f"10 % + 1 ms)"
        print(f"  {label:24s} median {s['median']:7.2f}  p90 {s['p90']:7.2f}  min {s['min']:7.2f}  "
              f"max {s['max']:7.2f}  (n={s['n']}){verdict}")
    print(f"  (the reference's {base:.2f} ms is the lab's own round trip, included in every figure)")


def load(lab_file: Path) -> None:
    """Helper process: bulk transfers client2 -> server until killed."""
    bench = Bench(lab_file)
    while True:
        bench.throughput(2000, sender="client2", receiver="server")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_load":
        load(Path(sys.argv[2]))
    else:
        sys.exit(main())
