"""The docker backend beside the embedded lab, in the same run: `up`, `down`, `run tcp`, trigger spread.

Starts its own dockerd (``--iptables=false --bridge=none``, own data root, stopped by PID at the end)
unless ``--docker-host`` names one, makes sure the node image is there (built or imported from the
cache: timed, not part of `up`), then for ``--runs`` rounds, alternating the two backends so a load
spike on a shared machine hits both:

  up / down   whole CLI processes, 4 nodes (server + 3 clients), until every sshd took an SSH session
  run tcp     whole CLI process, both labs up and deployed
  spread      first to last client SYN in the server's pcap for labctl's start-at trigger

Medians beside the netns lab's, with the ratios the targets are written in:
docker `up` ≤ 3 s, `run tcp` ≤ 1.2× the netns lab's, spread ≤ 1 ms.

    sudo .venv/bin/python bench/docker.py [--runs 5] [--docker-host unix:///PATH]

Holds /run/labctl-test.lock; its labs are ``bnet`` (192.168.126.0/24) and ``bdock`` (192.168.127.0/24).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# This file is docker.py: its own directory must not shadow the Docker SDK's package `docker`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from labctl.backends.docker import DockerBackend  # noqa: E402
from labctl.backends.docker.daemon import PrivateDaemon, connect  # noqa: E402
from labctl.backends.docker.image import ensure_image  # noqa: E402
from labctl.backends.netns import NetnsBackend  # noqa: E402
from labctl.lab import load_lab  # noqa: E402

LOCK_FILE = "/run/labctl-test.lock"
STATE_ROOT = Path("/run/labctl")
LABS = {"netns": ("bnet", 126), "docker": ("bdock", 127)}
TARGETS = {"up_s": 3.0, "run_ratio": 1.2, "spread_ms": 1.0}


def lab_file(directory: Path, backend: str) -> Path:
    name, octet = LABS[backend]
    path = directory / f"{name}.yml"
    path.write_text(f"name: {name}\nsubnet: 192.168.{octet}.0/24\nhost_address: 192.168.{octet}.1\n"
                    f"server_address: 192.168.{octet}.2\nclients: 3\n")
    return path


def cli(backend: str, lab: Path, *args: str, check: bool = True) -> float:
    """Run ``labctl --backend BACKEND --lab LAB ARGS``; its wall time in seconds."""
    argv = [sys.executable, str(REPO / "labctl.py"), "--backend", backend, "--lab", str(lab),
            "--state-dir", str(STATE_ROOT), *args]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        why = (f"labctl --backend {backend} {' '.join(args)} failed ({proc.returncode}): "
               f"{proc.stderr.strip()[-300:] or proc.stdout[-300:]}")
        if check:
            raise SystemExit(f"bench: {why}")
        print(f"bench: {why} (timed all the same)", file=sys.stderr)
    return elapsed


def backend_of(name: str, lab: Path):
    cls = DockerBackend if name == "docker" else NetnsBackend
    return cls(load_lab(lab), STATE_ROOT / LABS[name][0])


def spread_ms(backend, runs: int, workdir: Path) -> list[float]:
    """Start-at spreads (first to last client SYN in the server's pcap), one per run."""
    from bench.run import spread_of
    from labctl.deploy import ports_of
    from labctl.run import Runner

    inventory = backend.inventory()
    spreads = []
    with Runner(inventory) as runner:
        runner.prepare()
        server = runner.connection(inventory.server.name)
        for i in range(runs):
            value = spread_of(server, ports_of(inventory).tcp, lambda: runner.trigger("tcp"),
                              workdir / f"{backend.name}-{i}.pcap")
            if value is not None:
                spreads.append(value)
    return spreads


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--docker-host", help="use this daemon instead of starting a private one")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/docker.py: run as root (it builds namespace labs and starts dockerd)")
    times: dict[str, dict[str, list[float]]] = {b: {"up": [], "down": [], "run": []} for b in LABS}
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp, open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workdir = Path(tmp)
        labs = {b: lab_file(workdir, b) for b in LABS}
        daemon = None
        if args.docker_host:
            os.environ["DOCKER_HOST"] = args.docker_host
        else:
            daemon = PrivateDaemon(Path(f"/run/labctl-dockerd-{secrets.token_hex(3)}"))
            t0 = time.perf_counter()
            daemon.start()
            os.environ["DOCKER_HOST"] = daemon.host
            print(f"private dockerd pid {daemon.pid}: answering after {time.perf_counter() - t0:.2f} s")
        try:
            t0 = time.perf_counter()
            tag = ensure_image(connect(), lambda msg: print(f"  {msg}"))
            print(f"node image {tag} ready in the daemon after {time.perf_counter() - t0:.1f} s")
            for b, lab in labs.items():
                cli(b, lab, "clean", check=False)
            for _ in range(args.runs):  # up and down, alternating backends
                for b, lab in labs.items():
                    times[b]["up"].append(cli(b, lab, "up"))
                    times[b]["down"].append(cli(b, lab, "down"))
            for b, lab in labs.items():
                cli(b, lab, "up")
                cli(b, lab, "deploy")
            for _ in range(args.runs):
                for b, lab in labs.items():
                    times[b]["run"].append(cli(b, lab, "run", "tcp", "--json", check=False))
            spreads = {b: spread_ms(backend_of(b, lab), args.runs, workdir) for b, lab in labs.items()}
        finally:
            for b, lab in labs.items():
                cli(b, lab, "down", check=False)
            if daemon is not None:
                daemon.remove()
                left = daemon.leftovers()
                if left:
                    print(f"bench: the private dockerd left {left}", file=sys.stderr)

    medians = {b: {k: med(v) for k, v in t.items()} for b, t in times.items()}
    d, n = medians["docker"], medians["netns"]
    print(f"\n4 nodes, whole CLI processes, median of {args.runs} (alternating docker / netns)")
    print(f"{'':16} {'docker':>9} {'netns':>9} {'ratio':>7}   target")
    rows = [("up", "s", d["up"], n["up"], f"docker ≤ {TARGETS['up_s']} s"),
            ("down", "s", d["down"], n["down"], ""),
            ("run tcp", "s", d["run"], n["run"], f"ratio ≤ {TARGETS['run_ratio']}"),
            ("trigger spread", "ms", med(spreads["docker"]), med(spreads["netns"]),
             f"docker ≤ {TARGETS['spread_ms']} ms")]
    for what, unit, dv, nv, target in rows:
        print(f"{what + ' ' + unit:16} {dv:>9.3f} {nv:>9.3f} {dv / nv:>7.2f}   {target}")
    missed = []
    if not d["up"] <= TARGETS["up_s"]:
        missed.append(f"docker up {d['up']:.2f} s > {TARGETS['up_s']} s")
    if not d["run"] / n["run"] <= TARGETS["run_ratio"]:
        missed.append(f"run tcp {d['run'] / n['run']:.2f}x the netns lab's > {TARGETS['run_ratio']}x")
    if not med(spreads["docker"]) <= TARGETS["spread_ms"]:
        missed.append(f"docker spread {med(spreads['docker']):.2f} ms > {TARGETS['spread_ms']} ms")
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
