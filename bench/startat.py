#!/usr/bin/env python3
"""Benchmark: how close together do clients started by scripts/startat.py hit the wire?

In a namespace lab of your own (brought up here with `labctl up` if it is not up, and taken down again
then), runs our time server on the server node and, for each way of starting the clients, all clients
at one instant with `ip netns exec` (no SSH in the way: this measures the launcher, not the fan-out):

  ref:timeclient  the built-in path: `timeclient.py udp SERVER --start-at T` (its socket made ahead)
  go-udp          startat.py -- seed-udpclient SERVER:PORT   (the seed's Go UDP client)
  py-udp          startat.py -- python3 timeclient.py udp SERVER   (our client as "any program")
  go-udp/sleep    startat.py --spin 0 -- seed-udpclient ...  (held; the launcher sleeps, no spin)
  go-udp/no-hold  startat.py --no-hold -- seed-udpclient ...  (sleep, then exec at the instant)
  py-udp/no-hold  startat.py --no-hold -- python3 timeclient.py udp ...

spread = first to last client's first packet in the server's capture (tcpdump --immediate-mode on the
server's lab interface), median over --runs runs, the methods alternating within each run. Also
printed: exec cost (execve to the first network call, from the hold's timings: a runtime's start-up)
and the launchers' own view (spread of `exec`, worst late_ms).

    .venv/bin/python bench/startat.py --lab /tmp/hnode.yml [--clients 3 31] [--runs 10]

Targets (issue 11): the seed's Go client, 3 clients within 1 ms on the wire, 31 within 20 ms.
The seed's Go TCP client dials a fixed 192.168.20.2:8080, so it cannot take part in a lab on another
subnet; the UDP client takes the address. The machine is shared: compare the methods of one run.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
BENCH = Path(os.environ.get("LABCTL_BENCH_DIR") or REPO.parent / "shared" / "bench")
PORT = 9080  # not the lab's ports: a deployed server may hold those
# the system's python3, not a wrapper found first on PATH (a pyenv shim costs ~300 ms a start)
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
TARGETS = {3: 1.0, 31: 20.0}  # ms, for go-udp


def lab_nodes(lab_file: Path) -> tuple[str, str, list[tuple[str, str]]]:
    """(lab name, server address, [(client netns, client address)]) from the lab file."""
    lab = yaml.safe_load(lab_file.read_text())
    server = ipaddress.ip_address(lab["server_address"])
    clients = [(f"{lab['name']}-client{i}", str(server + i)) for i in range(1, int(lab["clients"]) + 1)]
    return lab["name"], str(server), clients


def labctl(lab_file: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "labctl.py"), "--lab", str(lab_file), *args], check=True,
                   cwd=REPO, timeout=600, stdout=subprocess.DEVNULL)


def netns_exists(name: str) -> bool:
    return name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def node_of(netns: str) -> str:
    return netns.rsplit("-", 1)[-1]


def client_argv(method: str, server: str, at: float, node: str) -> list[str]:
    py_client = [PYTHON, str(SCRIPTS / "timeclient.py"), "udp", server, "--port", str(PORT)]
    if method == "ref:timeclient":
        return [*py_client, "--start-at", repr(at), "--json"]
    program = [str(BENCH / "seed-udpclient"), f"{server}:{PORT}"] if method.startswith("go") else py_client
    extra = {"/no-hold": ["--no-hold"], "/sleep": ["--spin", "0"]}.get(method[method.find("/"):], [])
    return [PYTHON, str(SCRIPTS / "startat.py"), "--at", repr(at), "--timeout", "5", "--node", node,
            *extra, "--", *program]


class Capture:
    """tcpdump on the server node's lab interface, stopped by PID."""

    def __init__(self, server_ns: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(["ip", "netns", "exec", server_ns, "tcpdump", "-i", "eth0", "-n", "-U",
                                      "--immediate-mode", "-w", str(path), f"udp dst port {PORT}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"tcpdump did not start: {line!r}")

    def stop(self) -> dict[str, float]:
        """Stop it; the first packet's time per source address."""
        time.sleep(0.1)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        out = subprocess.run(["tcpdump", "-r", str(self.path), "-nn", "-tt"], capture_output=True, text=True)
        first: dict[str, float] = {}
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[1] == "IP":
                first.setdefault(fields[2].rsplit(".", 1)[0], float(fields[0]))
        self.path.unlink(missing_ok=True)
        return first


def one_round(method: str, server_ns: str, server: str, clients: list[tuple[str, str]], work: Path,
              lead: float) -> dict:
    """All clients of `method` at one instant, `lead` s from now; the wire spread and the timings."""
    cap = Capture(server_ns, work / "round.pcap")
    procs: list[subprocess.Popen] = []
    try:
        at = time.time() + lead
        for ns, _ in clients:
            argv = ["ip", "netns", "exec", ns, *client_argv(method, server, at, node_of(ns))]
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [(p, *p.communicate(timeout=30)) for p in procs]
    finally:
        first = cap.stop()
        for p in procs:  # (only when interrupted: each launcher stops its own client)
            if p.poll() is None:
                p.terminate()
                p.wait()
    failed = [f"{ns}: exit {p.returncode}: {err.strip()[-200:]}"
              for (ns, _), (p, _, err) in zip(clients, results) if p.returncode != 0]
    timings = []
    for _p, out, err in results:
        lines = err.strip().splitlines()
        if method == "ref:timeclient":
            obj = json.loads(out) if out.strip() else {}
            timings.append({"exec": (obj.get("timings") or {}).get("start"), "late_ms": obj.get("late_ms"),
                            "ready": obj.get("ready")})
        elif lines and lines[-1].startswith("startat-timings: "):
            timings.append(json.loads(lines[-1].split(": ", 1)[1]))
    wire = [first[addr] for _, addr in clients if addr in first]
    execs = [t["exec"] for t in timings if t.get("exec")]
    cost = [(t["ready"] - t["execve"]) * 1000 for t in timings
            if t.get("mode") == "hold" and t.get("ready") and t.get("execve")]
    return {"spread_ms": (max(wire) - min(wire)) * 1000 if len(wire) == len(clients) else None,
            "first_after_at_ms": (min(wire) - at) * 1000 if wire else None,
            "exec_spread_ms": (max(execs) - min(execs)) * 1000 if len(execs) == len(clients) else None,
            "late_ms": max((t.get("late_ms") or 0.0) for t in timings) if timings else None,
            "exec_cost_ms": statistics.median(cost) if cost else None, "failed": failed,
            "not_ready": sum(1 for t in timings if not t.get("ready") or t["ready"] > at)}


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, width: int = 9) -> str:
    return f"{v:{width}.2f}" if v is not None else f"{'-':>{width}}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", type=Path, required=True, help="a lab file of your own (netns backend)")
    ap.add_argument("--clients", type=int, nargs="+", default=[3, 31])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--methods", default="ref:timeclient,go-udp,go-udp/sleep,py-udp,go-udp/no-hold,"
                                         "py-udp/no-hold")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/startat.py needs root (ip netns exec, tcpdump)", file=sys.stderr)
        return 2
    name, server, all_clients = lab_nodes(a.lab)
    if max(a.clients) > len(all_clients):
        print(f"{a.lab} has {len(all_clients)} clients; --clients asks for {max(a.clients)}", file=sys.stderr)
        return 2
    methods = a.methods.split(",")
    global SCRIPTS
    snapshot = Path(tempfile.mkdtemp(prefix="bench-startat-scripts-"))
    SCRIPTS = Path(shutil.copytree(SCRIPTS, snapshot / "scripts"))  # edits during the run do not mix in
    brought_up = not netns_exists(f"{name}-server")
    if brought_up:
        labctl(a.lab, "up")
    server_proc = None
    try:
        server_ns = f"{name}-server"
        server_proc = subprocess.Popen(["ip", "netns", "exec", server_ns, PYTHON,
                                        str(SCRIPTS / "timeserver.py"), "--bind", server, "--port", str(PORT),
                                        "--proto-port", str(PORT + 1),
                                        "--quiet", "--no-rate-limit"], stdout=subprocess.PIPE, text=True)
        if "listening" not in server_proc.stdout.readline():
            raise RuntimeError("the time server did not start")
        with tempfile.TemporaryDirectory(prefix="bench-startat-") as tmp:
            for n in a.clients:
                clients = all_clients[:n]
                rounds: dict[str, list[dict]] = {m: [] for m in methods}
                lead = 1.0 + 0.1 * n  # room for every launcher to start; grows when that was too little
                retried = 0
                for r in range(a.runs):
                    for m in methods if r % 2 == 0 else list(reversed(methods)):
                        for _attempt in range(4):  # a launcher not ready by the instant: again, more lead
                            res = one_round(m, server_ns, server, clients, Path(tmp), lead)
                            if not res["not_ready"]:
                                break
                            retried += 1
                            lead *= 1.5
                        rounds[m].append(res)
                        print(f"# {n:2d} clients run {r + 1:2d} {m:15} wire spread {fmt(res['spread_ms'])} "
                              f"ms  exec spread {fmt(res['exec_spread_ms'])} ms  worst late "
                              f"{fmt(res['late_ms'])} ms  exec cost {fmt(res['exec_cost_ms'])} ms  "
                              f"lead {lead:.1f} s"
                              + (f" NOT READY {res['not_ready']}" if res["not_ready"] else "")
                              + (f"  FAILED {res['failed'][:2]}" if res["failed"] else ""), flush=True)
                report(n, methods, rounds)
                print(f"(rounds run again because a launcher was not ready by the instant: {retried}; "
                      f"final lead {lead:.1f} s)")
    finally:
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(timeout=10)
        if brought_up:
            labctl(a.lab, "down")
        shutil.rmtree(snapshot, ignore_errors=True)
    return 0


def report(n: int, methods: list[str], rounds: dict[str, list[dict]]) -> None:
    ref = med([r["spread_ms"] for r in rounds.get("ref:timeclient", [])])
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{n} clients: median of {len(next(iter(rounds.values())))} runs (load average now {load})")
    print(f"{'method':16} {'wire ms':>9} {'p90 ms':>9} {'/ref':>6} {'exec ms':>9} {'late ms':>9} "
          f"{'exec cost':>9} {'failed':>6}")
    for m in methods:
        rs = rounds[m]
        spreads = sorted(r["spread_ms"] for r in rs if r["spread_ms"] is not None)
        p90 = spreads[min(len(spreads) - 1, int(0.9 * len(spreads)))] if spreads else None
        wire = med(spreads)
        ratio = f"{wire / ref:6.2f}" if wire is not None and ref else f"{'-':>6}"
        print(f"{m:16} {fmt(wire)} {fmt(p90)} {ratio} {fmt(med([r['exec_spread_ms'] for r in rs]))} "
              f"{fmt(med([r['late_ms'] for r in rs]))} {fmt(med([r['exec_cost_ms'] for r in rs]))} "
              f"{sum(bool(r['failed']) for r in rs):6d}")
    go = med([r["spread_ms"] for r in rounds.get("go-udp", [])])
    if go is not None and n in TARGETS:
        print(f"target: go-udp, {n} clients within {TARGETS[n]:g} ms on the wire: {go:.2f} ms -> "
              f"{'met' if go <= TARGETS[n] else 'NOT met'}")
    print("(wire: first to last client's first datagram at the server; exec: the launchers' own spread\n"
          " of `exec`; late: the worst late_ms of a run; exec cost: execve to the first network call, in\n"
          " hold mode: fork, exec and the runtime's start-up, taken off the critical path by the hold)")


if __name__ == "__main__":
    sys.exit(main())
