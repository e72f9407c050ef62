"""How long does ``labctl exercise`` take on the embedded lab, from nothing to the report and the lab
down again? Whole CLI processes, timed from start to exit, 3 clients; the per-step seconds come from the
run's own run.json (up, deploy, tcp, udp, proto, report, down), so the profile shows where time goes.

A reference run in the same session (``python labctl.py --version``: interpreter and CLI start-up)
lets figures from a noisy, shared machine be compared as ratios.

    sudo .venv/bin/python bench/exercise.py [--runs 3] [--json] [--nodes server --nodes all]

With several ``--nodes`` settings (where the exercise captures), the runs alternate between them and
each setting gets its own median.

Target: 5 s per exercise. Holds /run/labctl-test.lock; uses its own lab (``bex``, 192.168.126.0/24).
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

TARGET = 5.0
LAB = """name: bex
subnet: 192.168.126.0/24
host_address: 192.168.126.1
server_address: 192.168.126.2
clients: 3
"""




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--nodes", action="append", metavar="all|server|LIST",
                        help="labctl exercise --nodes SETTING (repeatable: alternate; default its own)")
    args = parser.parse_args()
    settings = args.nodes or [None]
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (it builds a namespace lab)")
    with tempfile.TemporaryDirectory() as tmp, open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_before = load()
        lab_file = Path(tmp) / "bex.yml"
        lab_file.write_text(LAB)
        cli = [sys.executable, str(REPO / "labctl.py"), "--lab", str(lab_file)]
        subprocess.run([*cli, "clean"], capture_output=True, cwd=REPO)
        reference: list[float] = []
        totals: dict[str | None, list[float]] = {n: [] for n in settings}
        steps: dict[str | None, dict[str, list[float]]] = {n: {} for n in settings}
        try:
            for i in range(args.runs):
                for nodes in settings:
                    reference.append(timed([*cli, "--version"]))
                    out = Path(tmp) / f"ex{i}-{nodes}"
                    where = ["--nodes", nodes] if nodes else []
                    totals[nodes].append(timed([*cli, "exercise", *where, "-o", str(out)]))
                    for step, sec in json.loads((out / "run.json").read_text())["steps_seconds"].items():
                        steps[nodes].setdefault(step, []).append(sec)
        finally:
            subprocess.run([*cli, "clean"], capture_output=True, cwd=REPO)
    ref = statistics.median(reference)
    results = []
    for nodes in settings:
        med = statistics.median(totals[nodes])
        results.append({"nodes": nodes, "runs": args.runs, "exercise_s_median": round(med, 3),
                        "exercise_s_all": [round(t, 3) for t in totals[nodes]], "target_s": TARGET,
                        "reference_version_s": round(ref, 3), "ratio_to_reference": round(med / ref, 1),
                        "steps_s_median": {k: round(statistics.median(v), 3)
                                           for k, v in steps[nodes].items()},
                        "load_before": load_before, "load_after": load()})
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
        return 0
    print(f"reference labctl --version: {ref:.3f} s (median of {len(reference)}); load average "
          f"{load_before} before, {results[-1]['load_after']} after")
    for r in results:
        med = r["exercise_s_median"]
        print(f"labctl exercise{' --nodes ' + r['nodes'] if r['nodes'] else ''} (3 clients, up to down): "
              f"median {med:.2f} s of {args.runs} runs (target {TARGET:.1f} s) "
              f"{'OK' if med <= TARGET else 'OVER TARGET'}; ratio to the reference {r['ratio_to_reference']}")
        print("  where the time goes (median s): " + ", ".join(f"{k} {v:.2f}"
                                                               for k, v in r["steps_s_median"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
