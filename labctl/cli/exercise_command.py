"""``labctl exercise``: the whole exercise in one command. Parsing and printing only (labctl/exercise.py)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from labctl.backends import DEFAULT_BACKEND

DEFAULT_NODES = "server"  # (labctl.exercise.DEFAULT_NODES; not imported here: --help stays fast)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "exercise", help="the whole exercise: up, deploy, TCP/UDP/line-protocol hours captured, report",
        description="Bring the lab up if it is not, deploy the time server and client, then for each hour "
                    "(TCP time, UDP time, the line protocol, then each --program) trigger every client at "
                    "one instant while tcpdump captures the hour's port (on the server, or with --nodes "
                    "on several nodes at once). Writes one folder with the pcaps, run.json and a "
                    "self-contained report.html (timelines, ladders, the textbook picture beside the "
                    "measured one, comparison, reflection). Takes the lab down again unless --keep or "
                    "it was already up. Exit status 1 if any hour failed (the others are kept); "
                    "Ctrl-C stops cleanly, keeping what was done.",
        epilog="Examples: labctl exercise; labctl exercise -o /tmp/ex --keep; labctl exercise --program "
               "go-tcp --nodes all; then open DIR/report.html")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="folder for pcaps, run.json and report.html (default captures/exercise-<UTC time>/)")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    p.add_argument("--loss", type=_loss, metavar="PCT",
                   help="then a lossy round: TCP and UDP again with PCT %% loss on every link (labctl "
                        "impair all --loss PCT; the links are put back afterwards). Clients that give up "
                        "under loss are reported, not counted as a failure of the run")
    p.add_argument("--program", action="append", default=[], metavar="NAME",
                   help="then an hour for program NAME of the lab file's programs: (repeatable), deployed, "
                        "triggered at one instant and captured like the others; its report says whose "
                        "program it is and draws the textbook exchange of its protocol (TCP or UDP)")
    p.add_argument("--nodes", type=_nodes, default=DEFAULT_NODES, metavar="all|server|LIST",
                   help="where to capture: on the server only, on every node (one pcapng, one interface "
                        "per node), or on these nodes (server,client2; the server among them: the "
                        f"report counts every packet at the server's capture point). Default {DEFAULT_NODES}")
    p.add_argument("--json", action="store_true", help="print run.json's document at the end")
    p.set_defaults(handler=cmd_exercise)


def _nodes(text: str) -> str:
    text = text.strip()
    if not text or not all(n.strip() for n in text.split(",")):
        raise argparse.ArgumentTypeError("give all, server, or node names separated by commas "
                                         "(server,client2)")
    return text


def _loss(text: str) -> float:
    from labctl.links import LinkError, parse_loss

    try:
        value = parse_loss(text, "--loss")
    except LinkError as exc:  # one clear line, from argparse
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 (percent)")
    return value


def _reproduce(args: argparse.Namespace) -> list[str]:
    glob = []
    if args.lab_file:
        glob += ["--lab", str(args.lab_file)]
    if args.backend and args.backend != DEFAULT_BACKEND:  # (None: chosen as it will be again)
        glob += ["--backend", args.backend]
    extra = ["-o", str(args.output)] if args.output else []
    extra += ["--loss", f"{args.loss:g}"] if args.loss else []
    extra += [w for name in dict.fromkeys(args.program) for w in ("--program", name)]
    extra += ["--nodes", args.nodes] if args.nodes != DEFAULT_NODES else []
    line = shlex.join(["labctl", *glob, "exercise", *extra])
    where = [] if args.nodes == "server" else ["--nodes", args.nodes]
    steps = [["up"], ["deploy"], *(["capture", *where, "--run", p] for p in ("tcp", "udp", "proto")),
             ["down"]]
    if args.loss:
        steps[-1:-1] = [["impair", "all", "--loss", f"{args.loss:g}"], ["capture", *where, "--run", "tcp"],
                        ["capture", *where, "--run", "udp"], ["impair", "all", "--clear"]]
    steps[-1:-1] = [["capture", *where, "--run", name] for name in dict.fromkeys(args.program)]
    return [line, "# or step by step:", *(shlex.join(["labctl", *glob, *s]) for s in steps)]


def cmd_exercise(args: argparse.Namespace, ctx) -> int:
    import json
    import time

    from rich.console import Console

    from labctl.exercise import default_directory, run_exercise

    console = Console(stderr=True, highlight=False)
    out = Console(highlight=False)
    for c in (console, out):
        if not c.is_terminal:  # piped or logged: do not wrap lines at 80 columns
            c.width = max(c.width, 140)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:6.2f} s[/dim]  {msg}")

    def hour_done(hour) -> None:
        summ = (hour.capture or {}).get("summary") or {}
        results = (hour.run or {}).get("results", [])
        answered = sum(1 for r in results if r["ok"])
        spread = summ.get("spread_ms")
        head = "[green]worked[/green]" if hour.ok else "[red]FAILED[/red]"
        at = (f" at {summ['counted_at']} ({summ['all_points']} at all {len(summ.get('points', {}))} capture "
              "points)") if summ.get("counted_at") else ""
        out.print(f"[bold]{hour.name}[/bold] {head}: {answered} of {len(results)} clients answered, "
                  f"{summ.get('packets', 0)} packets{at}, spread on the wire "
                  f"{'-' if spread is None else f'{spread:.2f}'} ms, {hour.seconds:.2f} s"
                  + (f" → {hour.pcap}" if hour.pcap else ""))
        for f in hour.failures():
            out.print(f"    [red]{f}[/red]")

    directory = args.output or default_directory()
    ex = run_exercise(ctx.backend(), directory, keep=args.keep, progress=say, on_hour=hour_done,
                      commands=_reproduce(args), loss=args.loss or 0.0, programs=args.program,
                      nodes=args.nodes)
    if args.json:
        print(json.dumps(ex.to_json()))
    total = time.perf_counter() - t0
    verdict = f"[green]all {len(ex.hours)} hours worked[/green]" if ex.ok else "[red]FAILED[/red]"
    if ex.interrupted:
        verdict = f"[yellow]interrupted after {len(ex.hours)} hour(s), what was done is kept[/yellow]"
    out.print(f"{verdict} in {total:.2f} s; report: [bold]{ex.report or '(none)'}[/bold]")
    sys.stdout.flush()
    if ex.interrupted:
        return 130
    return 0 if ex.ok else 1
