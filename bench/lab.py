"""How fast is the embedded lab? Whole CLI processes, timed from start to exit.

``python labctl.py up`` returns only once every node's sshd has accepted an authenticated SSH
session (paramiko, pinned host key), so the time of the whole process is the figure. Each size is
brought up and down ``--runs`` times; medians are printed beside the targets, with the per-node cost
(the slope between the smallest and the largest size) to show the cost is linear, and a reference
run in the same process (``python labctl.py --version``: interpreter and CLI start-up) so figures from
a noisy machine can be compared as ratios.

    sudo .venv/bin/python bench/lab.py [--runs 5] [--sizes 4,32] [--json]

Holds /run/labctl-test.lock while it runs; uses its own lab (``bench``, 192.168.125.0/24).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_timing import LOCK_FILE, REPO, load, timed  # (bench/ is on sys.path: run as a script)

TARGETS = {("up", 4): 0.5, ("up", 32): 1.5, ("down", 4): 0.3}
LAB = """name: bench
subnet: 192.168.125.0/24
host_address: 192.168.125.1
server_address: 192.168.125.2
clients: 3
"""




def verify_sessions(lab_file: Path, nodes: int) -> None:
    """Outside the timing: every node really takes an SSH session with the pinned key."""
    sys.path.insert(0, str(REPO))
    from labctl.backends.netns import NetnsBackend
    from labctl.lab import load_lab
    from labctl.remote import Group

    lab = load_lab(lab_file, clients=nodes - 1)
    inventory = NetnsBackend(lab, Path("/run/labctl") / lab.name).inventory()
    with Group(inventory.hosts) as group:
        result = group.run(["hostname"])
    if not result.ok or any(result[h.name].stdout.strip() != h.name for h in inventory):
        raise SystemExit(f"bench: sessions failed after up: {result.failures}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="4,32", help="node counts (server + clients), comma separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (it builds namespace labs)")

    with tempfile.TemporaryDirectory() as tmp, open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_before = load()
        lab_file = Path(tmp) / "bench.yml"
        lab_file.write_text(LAB)
        cli = [sys.executable, str(REPO / "labctl.py"), "--lab", str(lab_file)]
        subprocess.run([*cli, "clean"], capture_output=True, cwd=REPO)
        reference: list[float] = []
        times: dict[tuple[str, int], list[float]] = {}
        try:
            for run in range(args.runs):  # sizes interleaved: a load spike on a shared machine hits all
                reference.append(timed([sys.executable, str(REPO / "labctl.py"), "--version"]))
                for n in sizes:
                    times.setdefault(("up", n), []).append(timed([*cli, "up", "--clients", str(n - 1)]))
                    if run == 0:
                        verify_sessions(lab_file, n)
                    times.setdefault(("down", n), []).append(timed([*cli, "down"]))
        finally:
            subprocess.run([*cli, "clean"], capture_output=True, cwd=REPO)

    ref = statistics.median(reference)
    medians = {key: statistics.median(values) for key, values in times.items()}
    lo, hi = sizes[0], sizes[-1]
    slope = {what: (medians[(what, hi)] - medians[(what, lo)]) / (hi - lo) if hi > lo else float("nan")
             for what in ("up", "down")}
    rows = []
    for (what, n), value in sorted(medians.items(), key=lambda kv: (kv[0][1], kv[0][0] != "up")):
        target = TARGETS.get((what, n))
        rows.append({"command": what, "nodes": n, "median_s": round(value, 3),
                     "min_s": round(min(times[(what, n)]), 3), "max_s": round(max(times[(what, n)]), 3),
                     "target_s": target, "ok": None if target is None else value <= target,
                     "x_reference": round(value / ref, 1)})
    if args.json:
        print(json.dumps({"runs": args.runs, "reference_s": round(ref, 3), "rows": rows,
                          "load_before": load_before, "load_after": load(),
                          "per_node_s": {k: round(v, 4) for k, v in slope.items()}}, indent=1))
        return 0 if all(r["ok"] is not False for r in rows) else 1
    print(f"embedded lab, whole CLI process, median of {args.runs} runs "
          f"(reference: `labctl.py --version` {ref * 1000:.0f} ms; load average {load_before} before, "
          f"{load()} after)")
    header = ("command", "nodes", "median", "min", "max", "target", "x ref")
    print("{:8} {:>5} {:>8} {:>7} {:>7} {:>7} {:>6}  verdict".format(*header))
    for r in rows:
        target = f"{r['target_s']:.2f}" if r["target_s"] else "-"
        verdict = "-" if r["ok"] is None else ("ok" if r["ok"] else "SLOW")
        print(f"{r['command']:8} {r['nodes']:>5} {r['median_s']:>8.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
              f"{target:>7} {r['x_reference']:>6.1f}  {verdict}")
    for what in ("up", "down"):
        fixed = medians[(what, lo)] - slope[what] * lo
        print(f"{what}: {slope[what] * 1000:.1f} ms per node + {fixed * 1000:.0f} ms fixed "
              f"(slope between {lo} and {hi} nodes)")
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
