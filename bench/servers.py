#!/usr/bin/env python3
"""Benchmark: scripts/timeserver.py against the seed's Go servers, side by side, on loopback.

Runs ../shared/bench/loadgen (bounded: -d seconds, -c workers) in alternating rounds against our
server (default settings but --no-rate-limit; its per-exchange log goes to /dev/null, as the seed UDP
server's per-datagram print does) and against seed-tcpserver / seed-udpserver, then prints
requests/s, p50 and p99 (medians over the rounds) and the ratio ours/seed. The seed has no line
server, so tcp-line reports ours alone. Finally: RSS/PSS of our server with 1,000 idle proto
connections open (from 20 loopback addresses: the per-source cap is 64), a fresh client's wait for its
first reply with and without them, and the RSS while a client pipelines requests and never reads.

    .venv/bin/python bench/servers.py [--rounds 5] [--seconds 3] [-c 32] [--workers N]

Targets (issue 2): tcp-connect >= 1.2x seed, udp >= 1.0x seed, p99 <= 1.5x seed's.
The machine is shared: figures drift; compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scripts" / "timeserver.py"
# the course's shared/ folder sits beside the checkout (../shared/bench); LABCTL_BENCH_DIR overrides
BENCH = Path(os.environ.get("LABCTL_BENCH_DIR") or Path(__file__).resolve().parents[2] / "shared" / "bench")
LOADGEN = BENCH / "loadgen"
LINE = re.compile(r"rps=(\S+) p50_us=(\d+) p99_us=(\d+) errors=(\d+) n=(\d+)")


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (racy, good enough on loopback)."""
    for _ in range(50):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


def wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def children_of(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def cpu_ticks(pid: int) -> int:
    """utime+stime of pid and its children that are still running, in clock ticks."""
    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def mem_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB of one process."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


class Procs:
    """Processes this benchmark started; stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def loadgen(mode: str, port: int, seconds: float, conc: int, msg: str | None = None) -> dict:
    argv = [str(LOADGEN), "-mode", mode, "-addr", f"127.0.0.1:{port}", "-c", str(conc),
            "-d", f"{seconds}s"]
    if msg:
        argv += ["-msg", msg]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = LINE.search(out)
    if not m:
        raise RuntimeError(f"loadgen said: {out!r}")
    return {"rps": float(m[1]), "p50": int(m[2]), "p99": int(m[3]), "errors": int(m[4])}


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def first_reply_ms(port: int, proto: bool) -> float:
    """Milliseconds from connect to the first reply line of one fresh client (proto: after GET TIME)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        if proto:
            c.sendall(b"GET TIME\n")
        data = b""
        while b"\n" not in data:
            chunk = c.recv(100)
            if not chunk:
                break
            data += chunk
    return (time.perf_counter() - t0) * 1000


def fresh_client(port: int, proto: int) -> tuple[float, float]:
    """(tcp ms, proto ms): medians over 20 fresh clients."""
    return (statistics.median(first_reply_ms(port, False) for _ in range(20)),
            statistics.median(first_reply_ms(proto, True) for _ in range(20)))


def idle_rss(port: int, proto: int, pid: int, n: int = 1000) -> dict:
    """Open n idle proto connections from 20 loopback addresses (within the per-source cap); the RSS/PSS
    before and with them, how many the server holds, and a fresh client's wait without and with them."""
    conns = []
    try:
        time.sleep(0.5)
        before = [(p, *mem_kb(p)) for p in [pid, *children_of(pid)]]
        quiet = fresh_client(port, proto)
        for i in range(n):
            c = socket.socket()
            c.settimeout(5)
            c.bind((f"127.0.0.{2 + i % 20}", 0))
            c.connect(("127.0.0.1", proto))
            conns.append(c)
        time.sleep(1.0)
        figures = [(p, *mem_kb(p)) for p in [pid, *children_of(pid)]]
        loaded = fresh_client(port, proto)
        for c in conns:  # a server that answered `ERR busy` has closed those
            c.setblocking(False)
        alive = 0
        for c in conns:
            try:
                alive += c.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return {"before": before, "figures": figures, "alive": alive, "quiet": quiet, "loaded": loaded}
    finally:
        for c in conns:
            c.close()


def flood_rss(proto: int, pid: int) -> tuple[int, int, int]:
    """A client that pipelines requests and never reads: (RSS KiB before, RSS KiB during, bytes sent)."""
    before = mem_kb(pid)[0]
    with socket.create_connection(("127.0.0.1", proto), timeout=5) as c:
        c.setblocking(False)
        chunk, sent = b"GET TIME\n" * 1000, 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += c.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
        return before, mem_kb(pid)[0], sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("-c", type=int, default=32, help="loadgen concurrency")
    ap.add_argument("--workers", type=int, default=None, help="our server's --workers (default: its own)")
    ap.add_argument("--modes", default="tcp-connect,udp,tcp-line")
    a = ap.parse_args()
    for exe in (LOADGEN, BENCH / "seed-tcpserver", BENCH / "seed-udpserver"):
        if not os.access(exe, os.X_OK):
            print(f"missing {exe} (set LABCTL_BENCH_DIR)", file=sys.stderr)
            return 2

    procs = Procs()
    try:
        port, proto = free_port(), free_port()
        argv = [sys.executable, str(SERVER), "--bind", "127.0.0.1", "--port", str(port),
                "--proto-port", str(proto), "--no-rate-limit"]
        if a.workers:
            argv += ["--workers", str(a.workers)]
        ours = procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = ours.stdout.readline()
        if "listening" not in ready:
            raise RuntimeError(f"our server did not start: {ready!r}")
        seed_tcp, seed_udp = free_port(), free_port()
        stcp = procs.start([str(BENCH / "seed-tcpserver"), "-port", str(seed_tcp)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sudp = procs.start([str(BENCH / "seed-udpserver"), "-port", str(seed_udp)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(seed_tcp)
        time.sleep(0.3)
        print(f"# {ready.strip()}")
        print(f"# loadgen -c {a.c}, {a.rounds} rounds x {a.seconds:g} s per server and mode, alternating")

        modes = a.modes.split(",")
        targets = {"tcp-connect": [("ours", port), ("seed", seed_tcp)],
                   "udp": [("ours", port), ("seed", seed_udp)],
                   "tcp-line": [("ours", proto)]}
        server_pid = {("ours", port): ours.pid, ("ours", proto): ours.pid, ("seed", seed_tcp): stcp.pid,
                      ("seed", seed_udp): sudp.pid}
        runs: dict[tuple[str, str], list[dict]] = {}
        for r in range(a.rounds):
            for mode in modes:
                order = targets[mode] if r % 2 == 0 else list(reversed(targets[mode]))
                for who, p in order:
                    pid = server_pid[(who, p)]
                    cpu0 = cpu_ticks(pid)
                    res = loadgen(mode, p, a.seconds, a.c, "GET TIME" if mode != "tcp-connect" else None)
                    ticks = cpu_ticks(pid) - cpu0
                    res["cpu"] = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(res["rps"] * a.seconds, 1)
                    runs.setdefault((mode, who), []).append(res)
                    print(f"#   round {r + 1} {mode:11} {who:4} rps={res['rps']:.0f} p50={res['p50']}us "
                          f"p99={res['p99']}us errors={res['errors']} server_cpu={res['cpu']:.1f}us/req",
                          flush=True)

        print()
        print(f"{'mode':12} {'server':6} {'rps':>9} {'p50 us':>7} {'p99 us':>7} {'errors':>7} "
              f"{'cpu us/req':>10} {'rps ours/seed':>14} {'p99 ours/seed':>14}")
        verdicts = []
        for mode in modes:
            for who, _ in targets[mode]:
                rs = runs[(mode, who)]
                row = (f"{mode:12} {who:6} {med(rs, 'rps'):9.0f} {med(rs, 'p50'):7.0f} {med(rs, 'p99'):7.0f} "
                       f"{sum(x['errors'] for x in rs):7d} {med(rs, 'cpu'):10.1f}")
                if who == "ours" and (mode, "seed") in runs:
                    s = runs[(mode, "seed")]
                    # paired: each round's ours against the seed run next to it, then the median
                    rps_ratio = statistics.median(o["rps"] / max(x["rps"], 1) for o, x in zip(rs, s))
                    p99_ratio = statistics.median(o["p99"] / max(x["p99"], 1) for o, x in zip(rs, s))
                    row += f" {rps_ratio:14.2f} {p99_ratio:14.2f}"
                    want = {"tcp-connect": 1.2, "udp": 1.0}.get(mode)
                    if want:
                        ok = rps_ratio >= want and p99_ratio <= 1.5
                        verdicts.append(f"{mode}: rps x{rps_ratio:.2f} (target >= {want}), "
                                        f"p99 x{p99_ratio:.2f} (target <= 1.5) -> "
                                        f"{'met' if ok else 'NOT met'}")
                print(row)
        print("(rps/p50/p99: medians over the rounds; ratios: median of the per-round ours/seed ratios;\n"
              " cpu us/req: the server's own CPU time (user+system, all its processes) per request, which\n"
              " the other load on a shared machine disturbs far less than rps)")
        for v in verdicts:
            print(v)

        idle = idle_rss(port, proto, ours.pid)
        total_rss = sum(f[1] for f in idle["figures"])
        total_pss = sum(f[2] for f in idle["figures"])
        per = ", ".join(f"pid {p}: RSS {r / 1024:.1f} MB" for p, r, _ in idle["figures"])
        print(f"\nidle connections: 1000 opened from 20 addresses, {idle['alive']} held by the server; {per}")
        print(f"total RSS {total_rss / 1024:.1f} MB, total PSS {total_pss / 1024:.1f} MB "
              f"(PSS counts pages shared by the forked workers once; target < 30 MB); "
              f"PSS before the connections: {sum(f[2] for f in idle['before']) / 1024:.1f} MB")
        (qt, qp), (lt, lp) = idle["quiet"], idle["loaded"]
        print(f"a fresh client's first reply (median of 20): tcp {lt:.2f} ms with the 1000 idle connections "
              f"vs {qt:.2f} ms without (x{lt / qt:.2f}); proto {lp:.2f} ms vs {qp:.2f} ms (x{lp / qp:.2f}) "
              f"(target: < 100 ms)")
        before, during, sent = flood_rss(proto, ours.pid)
        print(f"a client pipelining {sent / 1e6:.1f} MB of requests and never reading: RSS "
              f"{during / 1024:.1f} MB vs {before / 1024:.1f} MB before (x{during / before:.2f}; "
              f"target < 40 MB)")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
