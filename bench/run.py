"""Benchmark: how close together do the clients start? And how long do `run` and `capture --run` take?

Brings up its own namespace labs (3 and 31 clients, unique names and subnets, holding the lab lock),
deploys, and then, in the same run and alternating, for each way of starting the clients:

  start-at  labctl's way: connections open, every client gets one start instant (--start-at) and
            sleeps until it with its socket ready (labctl.run.Runner.trigger)
  barrier   connections open, one thread per client released at once by a threading.Barrier,
            each then execs the client (the best a fan-out can do)
  fabric    Fabric ThreadingGroup's pattern: a fresh SSH connection per host in a thread, then exec

spread = first to last client's SYN in the server's pcap (tcpdump --immediate-mode -U on the server
node), median over --runs runs. Then `run tcp` and `capture --run tcp` as whole CLI processes
(median wall time). Prints a table with ratios against start-at. Figures go in the exercise note.

    .venv/bin/python bench/run.py [--clients 3 31] [--runs 10]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl.capture import capture, summarise  # noqa: E402
from labctl.deploy import CLIENT_PROGRAM, REMOTE_DIR, ensure, ports_of  # noqa: E402
from labctl.remote import Connection, Group  # noqa: E402
from labctl.run import Runner  # noqa: E402

LOCK_FILE = "/run/labctl-test.lock"
STATE_ROOT = Path("/run/labctl")
SUBNETS = {3: 78, 31: 79}


def lab_file(directory: Path, clients: int) -> Path:
    octet = SUBNETS.get(clients, 80)
    name = f"bench{clients}"
    path = directory / f"{name}.yml"
    path.write_text(f"name: {name}\nsubnet: 192.168.{octet}.0/24\nhost_address: 192.168.{octet}.1\n"
                    f"server_address: 192.168.{octet}.2\nclients: {clients}\n")
    return path


def cli(lab: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(REPO / "labctl.py"), "--lab", str(lab), "--state-dir", str(STATE_ROOT), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, cwd=REPO, timeout=300)


def plain_client_argv(server: str, port: int) -> list[str]:
    return ["python3", f"{REMOTE_DIR}/{CLIENT_PROGRAM}", "tcp", server, "--port", str(port), "--json"]


def spread_of(server_conn: Connection, port: int, start, out: Path) -> float | None:
    """Capture while ``start()`` starts all clients; the pcap's first-to-last client SYN in ms."""
    result = capture(server_conn, [port], output=out, during=start, settle=0.05, analyse=summarise)
    out.unlink(missing_ok=True)
    return result.summary.get("spread_ms")


def bench_spreads(inventory, runs: int, workdir: Path) -> dict[str, list[float]]:
    server = inventory.server
    port = ports_of(inventory).tcp
    spreads: dict[str, list[float]] = {"start-at": [], "barrier": [], "fabric": []}
    lates: list[float] = []
    failed: list[str] = []
    with Runner(inventory) as runner:
        runner.prepare()
        server_conn = runner.connection(server.name)
        clients = [runner.connection(n) for n in runner.client_names]
        argv = plain_client_argv(server.address, port)

        def start_at():
            result = runner.trigger("tcp")
            late = [r.late_ms for r in result.results if r.late_ms is not None]
            lates.append(max(late) if late else 0.0)
            failed.extend(f"{r.node}: {r.error}" for r in result.results if not r.ok)

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

        methods = {"start-at": start_at, "barrier": barrier, "fabric": fabric}
        for i in range(runs):
            for name, fn in methods.items():  # alternating: the machine's drift hits all alike
                spread = spread_of(server_conn, port, fn, workdir / f"{name}-{i}.pcap")
                if spread is not None:
                    spreads[name].append(spread)
    if failed:
        print(f"start-at: {len(failed)} client failures: {failed[:5]}", file=sys.stderr)
    spreads["late"] = lates
    return spreads


def bench_cli(lab: Path, runs: int, *args: str) -> list[float]:
    """Wall time of whole CLI processes; a failed one is reported (and still timed)."""
    times = []
    for _ in range(runs):
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
        for n in args.clients:
            lab = lab_file(workdir, n)
            try:
                cli(lab, "up")
                from labctl.backends.netns import NetnsBackend
                from labctl.lab import load_lab

                inventory = NetnsBackend(load_lab(lab), STATE_ROOT / f"bench{n}").inventory()
                with Group(inventory.hosts) as g:
                    report = ensure(g, ports_of(inventory))
                    if not report.ok:
                        raise SystemExit(f"deploy failed: {report.to_json()}")
                spreads = bench_spreads(inventory, args.runs, workdir)
                row = {"clients": n, **{k: med(v) for k, v in spreads.items()},
                       "worst late": max(spreads["late"], default=0.0)}
                if not args.no_cli:
                    row["run tcp"] = med(bench_cli(lab, args.runs, "run", "tcp", "--json"))
                    if n <= 3:
                        out = str(workdir / "c.pcap")
                        row["capture --run tcp"] = med(bench_cli(
                            lab, args.runs, "capture", "--run", "tcp", "--json", "-o", out))
                rows.append(row)
            finally:
                cli(lab, "down", check=False)
    print(f"\ntrigger spread: first to last client SYN in the server's pcap, median of {args.runs} "
          "(lower is better; ratio = method / start-at)")
    print(f"{'clients':>7}  {'start-at ms':>11}  {'barrier ms':>10} {'ratio':>6}  "
          f"{'fabric ms':>9} {'ratio':>6}  {'wake delay ms (median / worst)':>30}")
    for r in rows:
        base = r["start-at"] or float("nan")
        print(f"{r['clients']:>7}  {r['start-at']:>11.2f}  {r['barrier']:>10.2f} {r['barrier'] / base:>6.1f}"
              f"  {r['fabric']:>9.2f} {r['fabric'] / base:>6.1f}  "
              f"{r['late']:>19.2f} / {r['worst late']:.2f}")
    if not args.no_cli:
        print(f"\nwhole CLI process, wall time, median of {args.runs}")
        for r in rows:
            line = f"{r['clients']:>3} clients: run tcp {r['run tcp']:.3f} s"
            if "capture --run tcp" in r:
                line += f", capture --run tcp {r['capture --run tcp']:.3f} s"
            print(line)
    targets = {3: (1.0, 0.5, 2.0), 31: (20.0, 2.0, None)}
    failed = []
    for r in rows:
        spread_t, run_t, cap_t = targets.get(r["clients"], (None, None, None))
        if spread_t is not None and not r["start-at"] <= spread_t:
            failed.append(f"spread {r['start-at']:.2f} ms > {spread_t} ms for {r['clients']} clients")
        if run_t is not None and "run tcp" in r and not r["run tcp"] <= run_t:
            failed.append(f"run tcp {r['run tcp']:.3f} s > {run_t} s for {r['clients']} clients")
        if cap_t is not None and "capture --run tcp" in r and not r["capture --run tcp"] <= cap_t:
            failed.append(f"capture --run tcp {r['capture --run tcp']:.3f} s > {cap_t} s")
    print("\ntargets: " + ("all met" if not failed else "MISSED: " + "; ".join(failed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
