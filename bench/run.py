"""Benchmark: how close together do the clients start? And how long do `run` and `capture --run` take?

Brings up its own namespace labs (3 and 31 clients, unique names, holding the lab lock), deploys, and
then, in the same run and alternating, for each way of starting the clients:

  start-at  labctl's way with the built-in client: launched by startat.py ahead of one instant, the
            client's own --start-at (socket ready, asleep until it) (labctl.run.Runner.trigger("tcp"))
  go-tcp    labctl's way with the seed's Go TCP client (a program labctl did not write): startat.py
            execs it ahead and holds its connect() until the instant (Runner.trigger of a program)
  go-udp    the same with the seed's Go UDP client (its first datagram)
  barrier   connections open, one thread per client released at once by a threading.Barrier,
            each then execs the built-in client (the best a fan-out can do)
  fabric    Fabric ThreadingGroup's pattern: a fresh SSH connection per host in a thread, then exec

spread = first to last client's first packet (SYN, or datagram) in the server's pcap (tcpdump
--immediate-mode -U on the server node), median over --runs runs. The seed's Go TCP client dials
192.168.20.2:8080 hard-coded, so the labs are on 192.168.20.0/24 when nothing on this machine uses that
subnet; otherwise on subnets of their own, without go-tcp (said so). Then `run tcp` and `capture --run
tcp` as whole CLI processes (median wall time). Prints a table with ratios against start-at.

    .venv/bin/python bench/run.py [--clients 3 31] [--runs 10]
"""
from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cli_timing import CLI_ENV, LOCK_FILE, REPO, load  # (bench/ is on sys.path: run as a script)

sys.path.insert(0, str(REPO))

from labctl.analyse.readback import read_back
from labctl.capture import capture
from labctl.deploy import CLIENT_PROGRAM, REMOTE_DIR, ensure, ports_of
from labctl.remote import Connection, Group
from labctl.run import Runner

STATE_ROOT = Path("/run/labctl")
SUBNETS = {3: 78, 31: 79}
SEED = Path(os.environ.get("LABCTL_BENCH_DIR") or REPO.parent / "shared" / "bench")
GO_SUBNET = ipaddress.IPv4Network("192.168.20.0/24")  # the seed's Go TCP client dials 192.168.20.2:8080
TARGETS = {3: (1.0, 0.5, 2.0), 31: (20.0, 2.0, None)}  # spread ms (the Go client's), run tcp s, capture s
# The reference for `run tcp` as a whole process: the least a CLI that runs one command on a client
# over SSH can do (Python, paramiko, the inventory, one connection with the pinned key, `true`).
SSH_TRUE = """
import sys; sys.path.insert(0, {repo!r})
from pathlib import Path
from labctl.backends.netns import NetnsBackend
from labctl.lab import load_lab
from labctl.remote import Connection
inventory = NetnsBackend(load_lab(Path({lab!r})), Path({state!r})).inventory()
with Connection(inventory.clients[0]) as conn:
    conn.run("true")
"""



def subnet_in_use(net: ipaddress.IPv4Network) -> list[str]:
    """This machine's addresses and routes inside ``net`` (another lab's bridge, a real network)."""
    found = []
    addrs = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for line in addrs.splitlines():
        words = line.split()
        if "inet" in words and ipaddress.IPv4Interface(words[words.index("inet") + 1]).ip in net:
            found.append(f"{words[1]} {words[words.index('inet') + 1]}")
    for line in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.splitlines():
        dest = line.split()[0]
        if dest != "default" and ipaddress.IPv4Network(dest, strict=False).overlaps(net):
            found.append(f"route {line}")
    return found


def lab_file(directory: Path, clients: int, on_go_subnet: bool) -> Path:
    octet = 20 if on_go_subnet else SUBNETS.get(clients, 80)
    name = f"bench{clients}"
    path = directory / f"{name}.yml"
    go = (f"programs:\n  go-tcp:\n    server: builtin\n    client: {SEED}/seed-tcpclient\n"
          f"  go-udp:\n    server: builtin\n    client: {SEED}/seed-udpclient {{server}}:{{port}}\n")
    path.write_text(f"name: {name}\nsubnet: 192.168.{octet}.0/24\nhost_address: 192.168.{octet}.1\n"
                    f"server_address: 192.168.{octet}.2\nclients: {clients}\n{go}")
    return path


def cli(lab: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(REPO / "labctl.py"), "--lab", str(lab), "--state-dir", str(STATE_ROOT), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, cwd=REPO, timeout=300,
                          env=CLI_ENV)


def plain_client_argv(server: str, port: int) -> list[str]:
    return ["python3", f"{REMOTE_DIR}/{CLIENT_PROGRAM}", "tcp", server, "--port", str(port), "--json"]


def spread_of(server_conn: Connection, port: int, start, out: Path) -> float | None:
    """Capture while ``start()`` starts all clients; the pcap's first-to-last client SYN in ms."""
    result = capture(server_conn, [port], output=out, during=start, settle=0.05, analyse=read_back)
    out.unlink(missing_ok=True)
    return result.summary.get("spread_ms")


def bench_spreads(inventory, runs: int, workdir: Path, go_tcp: bool) -> dict[str, list[float]]:
    server = inventory.server
    port = ports_of(inventory).tcp
    programs = ["go-tcp", "go-udp"] if go_tcp else ["go-udp"]
    spreads: dict[str, list[float]] = {m: [] for m in ("start-at", *programs, "barrier", "fabric")}
    lates: list[float] = []
    startups: dict[str, list[float]] = {p: [] for p in programs}
    failed: list[str] = []
    runners = {name: Runner(inventory) for name in ("start-at", *programs)}  # each prepared once
    try:
        runners["start-at"].prepare("tcp")
        for name in programs:
            runners[name].prepare(name)
        base = runners["start-at"]
        server_conn = base.connection(server.name)
        clients = [base.connection(n) for n in base.client_names]
        argv = plain_client_argv(server.address, port)

        def start_at():
            result = base.trigger("tcp")
            late = [r.late_ms for r in result.results if r.late_ms is not None]
            lates.append(max(late) if late else 0.0)
            failed.extend(f"start-at {r.node}: {r.error}" for r in result.results if not r.ok)

        def program(name: str):
            def go():
                result = runners[name].trigger(name)
                failed.extend(f"{name} {r.node}: {r.error}" for r in result.results if not r.ok)
                startups[name].extend(r.to_json()["timings"].get("startup_ms", 0.0) for r in result.results)
            return go

        def barrier():
            gate = threading.Barrier(len(clients))

            def one(conn: Connection) -> None:
                gate.wait()
                conn.run(argv, timeout=30)
            threads = [threading.Thread(target=one, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        def fabric():
            def one(host) -> None:
                with Connection(host, route_checked=True) as conn:  # fresh connection, like ThreadingGroup
                    conn.run(argv, timeout=30)
            threads = [threading.Thread(target=one, args=(c.host,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        methods = {"start-at": start_at, **{p: program(p) for p in programs}, "barrier": barrier,
                   "fabric": fabric}
        for i in range(runs):
            for name, fn in methods.items():  # alternating: the machine's drift hits all alike
                spread = spread_of(server_conn, port, fn, workdir / f"{name}-{i}.pcap")
                if spread is not None:
                    spreads[name].append(spread)
    finally:
        for r in runners.values():
            r.close()
    if failed:
        print(f"{len(failed)} client failures: {failed[:5]}", file=sys.stderr)
    spreads["late"] = lates
    for name, values in startups.items():
        spreads[f"{name} startup"] = values
    return spreads


def bench_cli(lab: Path, runs: int, *args: str, reference: list[float] | None = None) -> list[float]:
    """Wall time of whole CLI processes; a failed one is reported (and still timed). With
    ``reference``, before each: the bare `ssh true` process (SSH_TRUE), timed into it."""
    times = []
    ssh_true = [sys.executable, "-c", SSH_TRUE.format(repo=str(REPO), lab=str(lab),
                                                      state=str(STATE_ROOT / lab.stem))]
    for _ in range(runs):
        if reference is not None:
            t0 = time.perf_counter()
            subprocess.run(ssh_true, check=True, cwd=REPO, timeout=60, env=CLI_ENV)
            reference.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        proc = cli(lab, *args, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            errors = [line for line in proc.stdout.split('"error": ')[1:] if not line.startswith("null")]
            why = errors[0][:120] if errors else (proc.stderr.strip() or proc.stdout[-300:])
            print(f"`labctl {shlex.join(args)}` exited {proc.returncode}: {why}", file=sys.stderr)
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 31])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-cli", action="store_true", help="only the trigger spreads")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/run.py: run as root (it builds namespace labs)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp, open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workdir = Path(tmp)
        busy = subnet_in_use(GO_SUBNET)
        go_tcp = not busy
        if busy:
            print(f"192.168.20.0/24 is in use here ({'; '.join(busy)}): the seed's Go TCP client (it dials "
                  "192.168.20.2) is left out; the Go UDP client takes the address", file=sys.stderr)
        for n in args.clients:
            lab = lab_file(workdir, n, go_tcp)
            try:
                cli(lab, "up")
                from labctl.backends.netns import NetnsBackend
                from labctl.lab import load_lab

                inventory = NetnsBackend(load_lab(lab), STATE_ROOT / f"bench{n}").inventory()
                with Group(inventory.hosts) as g:
                    report = ensure(g, ports_of(inventory))
                    if not report.ok:
                        raise SystemExit(f"deploy failed: {report.to_json()}")
                spreads = bench_spreads(inventory, args.runs, workdir, go_tcp)
                row = {"clients": n, **{k: med(v) for k, v in spreads.items()},
                       "worst late": max(spreads["late"], default=0.0)}
                row["load"] = load()
                if not args.no_cli:
                    ref: list[float] = []
                    row["run tcp"] = med(bench_cli(lab, args.runs, "run", "tcp", "--json", reference=ref))
                    row["ssh true"] = med(ref)
                    row["load cli"] = load()
                    if go_tcp:
                        row["run go-tcp"] = med(bench_cli(lab, args.runs, "run", "go-tcp", "--json"))
                    if n <= 3:
                        out = str(workdir / "c.pcap")
                        row["capture --run tcp"] = med(bench_cli(
                            lab, args.runs, "capture", "--run", "tcp", "--json", "-o", out))
                rows.append(row)
            finally:
                cli(lab, "down", check=False)
    report_rows(rows, args)
    return 0


def report_rows(rows: list[dict], args) -> None:
    def cell(r: dict, key: str, base: float) -> str:
        v = r.get(key)
        return f"{'-':>9} {'':>6}" if v is None else f"{v:>9.2f} {v / base:>6.1f}"

    print(f"\ntrigger spread: first to last client's first packet in the server's pcap, median of "
          f"{args.runs} (lower is better; ratio = method / start-at, the built-in client); load average "
          f"after each size: {'; '.join(str(r['clients']) + ' clients ' + r['load'] for r in rows)}")
    heads = "  ".join(f"{h:>9} {'ratio':>6}" for h in ("go-tcp ms", "go-udp ms", "barrier ms", "fabric ms"))
    print(f"{'clients':>7}  {'start-at ms':>11}  {heads}  {'wake delay ms (med / worst)':>27}")
    for r in rows:
        base = r["start-at"] or float("nan")
        cells = "  ".join(cell(r, k, base) for k in ("go-tcp", "go-udp", "barrier", "fabric"))
        late = f"{r['late']:>16.2f} / {r['worst late']:.2f}"
        print(f"{r['clients']:>7}  {r['start-at']:>11.2f}  {cells}  {late}")
    for r in rows:
        ups = [f"{k.split()[0]} {r[k]:.1f} ms" for k in ("go-tcp startup", "go-udp startup")
               if r.get(k) is not None]
        if ups:
            print(f"{r['clients']:>3} clients: what exec costs (startat: execve to the first network call, "
                  f"median; off the critical path, held): {', '.join(ups)}")
    if not args.no_cli:
        print(f"\nwhole CLI process, wall time, median of {args.runs}")
        for r in rows:
            ratio = r["run tcp"] / r["ssh true"]
            line = (f"{r['clients']:>3} clients: run tcp {r['run tcp']:.3f} s (reference, a bare `ssh true` "
                    f"process through paramiko: {r['ssh true']:.3f} s, ratio {ratio:.1f}; "
                    f"load {r['load cli']})")
            if "run go-tcp" in r:
                line += f", run go-tcp {r['run go-tcp']:.3f} s"
            if "capture --run tcp" in r:
                line += f", capture --run tcp {r['capture --run tcp']:.3f} s"
            print(line)
    failed = []
    for r in rows:
        spread_t, run_t, cap_t = TARGETS.get(r["clients"], (None, None, None))
        go = r.get("go-tcp") if r.get("go-tcp") is not None else r.get("go-udp")
        which = "go-tcp" if r.get("go-tcp") is not None else "go-udp"
        if spread_t is not None and go is not None and not go <= spread_t:
            failed.append(f"{which} spread {go:.2f} ms > {spread_t} ms for {r['clients']} clients")
        if spread_t is not None and not r["start-at"] <= spread_t:
            failed.append(f"start-at spread {r['start-at']:.2f} ms > {spread_t} ms for {r['clients']} "
                          "clients")
        if run_t is not None and "run tcp" in r and not r["run tcp"] <= run_t:
            failed.append(f"run tcp {r['run tcp']:.3f} s > {run_t} s for {r['clients']} clients")
        if cap_t is not None and "capture --run tcp" in r and not r["capture --run tcp"] <= cap_t:
            failed.append(f"capture --run tcp {r['capture --run tcp']:.3f} s > {cap_t} s")
    print("\ntargets: " + ("all met" if not failed else "MISSED: " + "; ".join(failed)))


if __name__ == "__main__":
    raise SystemExit(main())
