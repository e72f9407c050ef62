"""Benchmark: `labctl analyse FILE --json` (whole process) against tshark's conversation tables.

    .venv/bin/python bench/analyse.py [--sizes 250000 500000 1000000] [--runs 3] [--dir DIR]
                                      [--before /work/main] [--multinode]

Builds captures of short exchanges written directly with struct (size/10 TCP conversations of 8
packets + size/10 UDP request/reply pairs), then for each size runs, alternately, `python labctl.py
analyse FILE --json > /dev/null` and `tshark -q -z conv,tcp -z conv,udp -r FILE > /dev/null`, and
prints medians: wall seconds, CPU seconds (user+sys of the process and its workers), packets/s, peak
RSS (largest process of the run, and the sum over labctl's worker processes), the ratios tshark/labctl
(wall and CPU), and CPU time per packet for the linearity check. labctl runs its default way (one
process) and, with --parallel, also --jobs N (N forked workers, N = CPU count up to 4). The machine is
shared: read the ratios of one run, not absolute times; when the machine is loaded, wall time also
measures the wait for a core, so the CPU ratio is the steadier figure. ``--before TREE`` times another
checkout's labctl on the same files in the same run (before/after a change); ``--multinode`` also
times a two-point pcapng (every packet seen at both ends: matched, each counted once).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))     # the synthetic pcap writer lives with the tests

from pcapwrite import write_bench_capture  # noqa: E402


def timed(argv: list[str]) -> tuple[float, float, float, float]:
    """(wall seconds, peak RSS MB of the largest process, sum of the processes' peak RSS MB,
    CPU seconds of the process and its children)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {err}")
    peak = usage.ru_maxrss / 1024
    cpu = usage.ru_utime + usage.ru_stime
    total = peak
    for line in err.splitlines():   # labctl's workers report theirs (LABCTL_BENCH_RSS)
        if line.startswith("labctl-rss "):
            total = sum(float(x) for x in line.split()[1:])
            peak = max(peak, *(float(x) for x in line.split()[1:]))
    return wall, peak, total, cpu


def two_points(pcap: Path, out: Path) -> Path:
    """The first half of ``pcap``'s packets as a capture of two points, every packet seen by its sender
    and, 20 µs later, by its receiver (the server 10.0.0.1 and the clients' side), as a pcapng."""
    import struct

    sys.path.insert(0, str(ROOT))
    from labctl.analyse.pcap_stream import PcapStream
    from labctl.analyse.pcapng_write import Interface, file_header, packet_block

    if out.exists():
        return out
    stream = PcapStream()
    packets = stream.feed(pcap.read_bytes())
    packets = packets[:len(packets) // 2]
    server = bytes([10, 0, 0, 1])
    with out.open("wb", buffering=1 << 20) as f:
        f.write(file_header([Interface("server", "eth0", "10.0.0.1"), Interface("clients", "eth0", "")]))
        pending: list[tuple[int, int, bytes]] = []
        for p in packets:
            from_server = p.frame[26:30] == server
            pending.append((p.ts_ns, 0 if from_server else 1, p.frame))
            pending.append((p.ts_ns + 20_000, 1 if from_server else 0, p.frame))
        pending.sort(key=lambda x: x[0])
        for ts, iface, frame in pending:
            f.write(packet_block(iface, ts, frame))
    assert struct.unpack("<I", out.read_bytes()[:4])[0] == 0x0A0D0D0A
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the captures (default: tmp)")
    ap.add_argument("--parallel", action="store_true", help="also time --jobs N (forked workers)")
    ap.add_argument("--before", type=Path, default=None, metavar="TREE",
                    help="also time another labctl tree (e.g. /work/main: the code before a change) on the "
                         "same files, alternately with this one")
    ap.add_argument("--multinode", action="store_true",
                    help="also time a capture of two points (a pcapng in which every packet is seen at "
                         "client and server, SIZE sightings): each packet matched, counted once")
    ap.add_argument("--cached-bytecode", action="store_true",
                    help="let Python cache compiled bytecode (in a temporary PYTHONPYCACHEPREFIX), as an "
                         "installed labctl does; without it the environment decides "
                         "(PYTHONDONTWRITEBYTECODE=1 makes every run compile the sources first, ~0.02 s)")
    args = ap.parse_args()
    if not shutil.which("tshark"):
        print("tshark is not installed: apt install tshark", file=sys.stderr)
        return 2
    tmp = args.dir or Path(tempfile.mkdtemp(prefix="labctl-bench-analyse-"))
    tmp.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, LABCTL_BENCH_RSS="1")
    if args.cached_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    os.environ.clear()
    os.environ.update(env)
    print("bytecode: " + ("cached" if not os.environ.get("PYTHONDONTWRITEBYTECODE") else
                          "compiled on every run (PYTHONDONTWRITEBYTECODE is set)"))
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f} (shared machine: ratios "
          "matter, not absolutes)")
    header = (f"{'packets':>9} {'tool':<16} {'wall s':>7} {'pkt/s':>10} {'peak MB':>8} "
              f"{'sum MB':>7} {'tshark/x':>9} {'CPU s':>6} {'CPU tshark/x':>13} {'CPU us/pkt':>11}")
    print(header)
    print("-" * len(header))
    cases = [(size, "pcap") for size in args.sizes]
    cases += [(size, "pcapng") for size in args.sizes if args.multinode]
    for size, kind in cases:
        path = tmp / f"bench-{size}.pcap"
        if not path.exists():
            n = write_bench_capture(path, size // 10, size // 10)
            assert n == size, (n, size)
        if kind == "pcapng":
            path = two_points(path, tmp / f"bench-{size}-2points.pcapng")
            print(f"{size:>9} sightings at two points ({size // 2} packets), {path.name}:")
        base = [py, str(ROOT / "labctl.py"), "analyse", str(path), "--json"]
        tools = {"labctl": base}
        if args.before:
            tools[f"labctl {args.before.name}"] = [py, str(args.before / "labctl.py"), *base[2:]]
        cpus = os.cpu_count() or 1
        if args.parallel and cpus > 1 and kind == "pcap":
            tools[f"labctl --jobs {min(cpus, 4)}"] = [*base, "--jobs", str(min(cpus, 4))]
        tools["tshark"] = ["tshark", "-q", "-z", "conv,tcp", "-z", "conv,udp", "-r", str(path)]
        res: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in tools}
        timed(base)                         # warm the page cache (and the bytecode cache, if any)
        for _ in range(args.runs):          # alternate the tools so load changes hit all of them
            for name, argv in tools.items():
                res[name].append(timed(argv))
        t_shark = statistics.median(r[0] for r in res["tshark"])
        c_shark = statistics.median(r[3] for r in res["tshark"])
        for name in tools:
            wall = statistics.median(r[0] for r in res[name])
            peak = max(r[1] for r in res[name])
            total = max(r[2] for r in res[name])
            cpu = statistics.median(r[3] for r in res[name])
            print(f"{size:>9} {name:<16} {wall:>7.2f} {size / wall:>10,.0f} {peak:>8.0f} {total:>7.0f} "
                  f"{t_shark / wall:>8.2f}x {cpu:>6.2f} {c_shark / cpu:>12.2f}x {cpu / size * 1e6:>11.2f}",
                  flush=True)
    if not args.dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
