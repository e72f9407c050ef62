#!/usr/bin/env python3
"""Benchmark: the remote layer's process control against a real OpenSSH sshd on loopback (no lab).

``Connection.stop(pid)`` must return as soon as the process has ended: a detached process is an orphan
of PID 1, and an init that reaps lazily (this Firecracker VM's takes ~1.5 s) leaves it a zombie for a
while, which stop counts as gone. tests/test_remote.py checks that behaviour (``stop`` says the
process ended from its signal); this prints how long it takes, beside a reference measured in the
same run on the same connection: one ``run("true")`` round trip.

    sudo .venv/bin/python bench/remote.py [--rounds 10] [--json]

Target: stop of a detached process <= 1 s (the figure the test used to assert), i.e. a few round trips.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from labctl.inventory import Host  # noqa: E402
from labctl.remote import Connection  # noqa: E402

TARGET_STOP_S = 1.0


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def measure(conn: Connection, rounds: int, log: str) -> dict[str, list[float]]:
    """Per round: a round trip, a start that waits for its ready line, and a stop."""
    figures: dict[str, list[float]] = {"run true": [], "start (ready line)": [], "stop (detached)": []}
    for _ in range(rounds):
        figures["run true"].append(timed(lambda: conn.run(["true"]))[0])
        seconds, pid = timed(lambda: conn.start(["sh", "-c", "echo ready; exec sleep 60"], log=log,
                                                ready="ready"))
        figures["start (ready line)"].append(seconds)
        seconds, stopped = timed(lambda: conn.stop(pid))  # noqa: B023 (called at once)
        if stopped is not True:
            raise SystemExit(f"bench: stop({pid}) did not see the process end from its signal")
        figures["stop (detached)"].append(seconds)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 1000:
        parser.error("--rounds: 1..1000")
    if os.geteuid() != 0 or not shutil.which("sshd", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        raise SystemExit("bench: needs root and OpenSSH's sshd (apt-get install openssh-server)")
    from loopback_sshd import loopback_sshd

    with tempfile.TemporaryDirectory(prefix="labctl-bench-remote-") as tmp:
        (Path(tmp) / "sshd").mkdir()
        with loopback_sshd(Path(tmp) / "sshd") as d:
            host = Host(name="loop", role="server", address="127.0.0.1", port=d.port, user="root",
                        key_file=d.key_file, host_key=d.host_key, interface="lo")
            with Connection(host) as conn:
                figures = measure(conn, args.rounds, str(Path(tmp) / "proc.log"))
    medians = {what: statistics.median(values) * 1000 for what, values in figures.items()}
    reference = medians["run true"]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "median_ms": medians, "reference": "run true",
                          "target_stop_ms": TARGET_STOP_S * 1000}))
    else:
        print(f"remote layer on loopback sshd, median of {args.rounds} rounds "
              f"(reference: run('true') round trip, same connection)")
        for what, ms in medians.items():
            print(f"  {what:<20} {ms:8.1f} ms   {ms / reference:5.1f}x the round trip")
        verdict = "meets" if medians["stop (detached)"] <= TARGET_STOP_S * 1000 else "MISSES"
        print(f"  stop {verdict} its target of <= {TARGET_STOP_S * 1000:.0f} ms")
    return 0 if medians["stop (detached)"] <= TARGET_STOP_S * 1000 else 1


if __name__ == "__main__":
    raise SystemExit(main())
