"""``labctl capture``: tcpdump on the server (or on every node at once), to a file, to stdout, live.

Parsing and printing only; :mod:`labctl.capture` does the work. Imports happen inside the handler so
``labctl --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from labctl.cli.exercise_commands import PROGRAM_HELP, _positive_float, _say, run_table
from labctl.cli.types import path_arg

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.I)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "capture", help="tcpdump on the server (or every node), the capture brought home and summarised",
        description="Run tcpdump (--immediate-mode -U) on a node's lab interface over SSH, its packets "
                    "streamed home as they are captured; with --nodes, on several nodes at once (each "
                    "armed before any client is triggered), merged into one pcapng with one interface per "
                    "node. With --run, trigger a run meanwhile and stop once its conversations have "
                    "closed; otherwise capture until Ctrl-C or --duration. Fails loudly if a tcpdump lost "
                    "packets or vanished. The capture comes home (default captures/<UTC time>-port8080"
                    ".pcap, .pcapng for several nodes) and is read back and summarised.",
        epilog="Examples: labctl capture --run tcp; labctl capture --nodes all --run udp; "
               "labctl capture --live; labctl capture -o - | wireshark -k -i -; "
               "labctl capture --nodes server,client2 -o - | tshark -r -. A capture stops by itself "
               "at --max-size per node (and below 90%% of the node's free space) and says so.")
    p.add_argument("--port", type=int, action="append", metavar="N",
                   help="port to capture (repeatable; default: the --run protocol's port, else 8080)")
    p.add_argument("--run", dest="run_protocol", metavar="NAME",
                   help=f"trigger a run of program NAME while capturing ({PROGRAM_HELP})")
    p.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    p.add_argument("-o", "--output", type=_output, metavar="FILE",
                   help="where the capture goes; '-' streams it to stdout as it arrives (pcap for one "
                        "node, pcapng for several; the summary goes to stderr and a copy to captures/)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--nodes", metavar="all|N1,N2",
                       help="capture on these nodes at once ('all', or names: server,client2)")
    where.add_argument("--node", default=None, help="one node to capture on (default: the server)")
    p.add_argument("--live", action="store_true",
                   help="draw the ladders as packets arrive (one line per packet when stdout is not a "
                        "terminal)")
    p.add_argument("--max-size", type=_size, default=None, metavar="SIZE",
                   help="stop when a node's capture reaches SIZE (e.g. 20M, 1G; default 100M)")
    p.add_argument("--no-ladder", action="store_true", help="do not print the ladder diagrams")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=cmd_capture)


def _output(text: str) -> str:
    """``-`` for stdout, else a path (an empty one or one with a NUL byte is refused)."""
    return text if text == "-" else str(path_arg(text))


def _size(text: str) -> int:
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size like 500K, 20M or 1G")
    value = float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    if not (1 << 20) <= value <= (64 << 30):
        raise argparse.ArgumentTypeError(f"{text}: a capture's size bound is 1M..64G")
    return int(value)


def _nodes(args, inventory) -> list:
    from labctl.cli import CliError

    if args.nodes is None:
        return [inventory.get(args.node) if args.node else inventory.server]
    if args.nodes.strip() == "all":
        return list(inventory.hosts)
    names = [n.strip() for n in args.nodes.split(",") if n.strip()]
    if not names:
        raise CliError("--nodes: give 'all' or node names separated by commas (server,client2)")
    if len(set(names)) != len(names):
        raise CliError(f"--nodes {args.nodes}: a node is named twice")
    return [inventory.get(n) for n in names]


def cmd_capture(args: argparse.Namespace, ctx) -> int:
    from labctl.capture import MAX_BYTES, capture
    from labctl.cli import CliError
    from labctl.deploy import ports_of, program_for
    from labctl.run import Runner

    if args.run_protocol and args.duration:
        raise CliError("--run stops by itself once the run's conversations closed; drop --duration")
    to_stdout = args.output == "-"
    if to_stdout and (args.live or args.json):
        raise CliError("-o - puts the capture on stdout; --live and --json print there too: choose one")
    if args.live and args.json:
        raise CliError("--live draws on stdout and --json prints there too: choose one")
    if to_stdout and sys.stdout.isatty():
        raise CliError("-o - writes binary pcap to stdout, which is a terminal here: pipe it "
                       "(labctl capture -o - | wireshark -k -i -, or | tshark -r -)")
    bad = [p for p in args.port or [] if not 1 <= p <= 65535]
    if bad:
        raise CliError(f"--port {bad[0]}: a port is 1..65535")
    inventory = ctx.backend().inventory()
    program = program_for(inventory, args.run_protocol) if args.run_protocol else None
    ports = args.port or [program.port if program is not None else ports_of(inventory).tcp]
    hosts = _nodes(args, inventory)
    output = None if to_stdout or args.output is None else Path(args.output)
    say = _say
    console = None if args.json else _console(stderr=to_stdout)
    live = None
    if args.live:
        from labctl.analyse.live import LiveView

        live = LiveView(sys.stdout, [f"{h.name}/{h.lab_interface}" for h in hosts],
                        {h.address: h.name for h in inventory.hosts})
    stream = sys.stdout.buffer if to_stdout else None
    with Runner(inventory, deploy=True, progress=say) as runner:
        during = None
        if program is not None:
            # deploy and the lead first, not while tcpdump is armed: their SSH traffic would reach
            # tcpdump's socket before its filter is attached and count as "received by filter"
            runner.prepare(program)
            during = lambda: runner.trigger(program)  # noqa: E731
        conns = [runner.connection(h.name) for h in hosts]
        what = " or ".join(f"port {p}" for p in ports)
        until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
        until = f"while every client runs {args.run_protocol}" if args.run_protocol else until

        def listening(dumps) -> None:
            where = ", ".join(f"{d.host.name} {d.interface}" for d in dumps)
            pids = ", ".join(str(d.pid) for d in dumps)
            say(f"tcpdump listening on {where} ({what}), pid{'s' if len(dumps) > 1 else ''} {pids}, {until}")

        try:
            result = capture(conns, ports, output=output, duration=args.duration, during=during,
                             analyse=_analyse, on_listening=listening, max_bytes=args.max_size or MAX_BYTES,
                             stream_to=stream, consumers=[live] if live else [])
        finally:
            if to_stdout:
                _quiet_stdout()
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        _print_capture(console, result, inventory, ladder=not (args.no_ladder or live or to_stdout))
    if result.stopped_by in ("size", "reader"):
        from labctl.capture import STOPPED

        say(f"capture stopped early: {STOPPED[result.stopped_by]}"
            + (f" ({_mib(args.max_size or MAX_BYTES)} per node, --max-size)" if result.stopped_by == "size"
               else "") + f"; {result.path} is complete up to that moment")
    if result.run is not None and result.run.interrupted:
        return 130  # Ctrl-C while the clients ran: each was stopped, the table shows what came back
    if result.run is not None and not result.run.ok:
        return 1
    if result.stopped_by == "size" and result.run is not None:
        return 1
    return 130 if result.interrupted and args.run_protocol else 0


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(highlight=False, stderr=stderr)
    if not console.is_terminal:  # piped or logged: do not cut replies to 80 columns
        console = Console(highlight=False, stderr=stderr, width=max(console.width, 120))
    return console


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so Python's exit does not complain."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _analyse(path: Path):
    from labctl.analyse.readback import read_back

    return read_back(path)


def _print_capture(console, result, inventory, *, ladder: bool) -> None:
    from labctl.capture import STOPPED

    if result.run is not None:
        console.print(run_table(result.run))
    s = result.summary
    how = "" if result.stopped_by in ("run", "duration") else f" ({STOPPED[result.stopped_by]})"
    if len(result.nodes) == 1:
        n = result.nodes[0]
        console.print(f"[bold]{result.path}[/bold]: tcpdump on {n.node} ({n.interface}): "
                      f"{n.stats}; {result.seconds:.2f} s{how}")
    else:
        console.print(f"[bold]{result.path}[/bold]: {len(result.nodes)} capture points, "
                      f"{result.seconds:.2f} s (armed in {result.arm_seconds:.2f} s){how}")
        for n in result.nodes:
            console.print(f"  {n.node}/{n.interface} ({n.address}): {n.stats}")
    clocks = {}
    for n in result.nodes:
        clocks.setdefault(n.clock.text, []).append(n.node)
    for text, names in clocks.items():
        if len(result.nodes) > 1 or result.nodes[0].clock.kind == "corrected":
            console.print(f"clock{'s' if len(names) > 1 else ''} of {', '.join(names)}: {text}")
    for note in result.notes:
        console.print(f"[yellow]note: {note}[/]")
    if not s:
        return
    names = {h.address: h.name for h in inventory.hosts}
    per_proto = ", ".join(f"{k.upper()} {v}" for k, v in s["protocols"].items()) or "none"
    every = " (a packet counts once at every capture point that saw it)" if len(result.nodes) > 1 else ""
    console.print(f"packets per protocol: {per_proto}{every}")
    order = {h.address: i for i, h in enumerate(inventory.hosts)}
    for ip, convs in sorted(s["clients"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        what = ", ".join(f"{n} {proto.upper()} conversation{'s' if n != 1 else ''}"
                         for proto, n in convs.items())
        console.print(f"  {names.get(ip, ip)} ({ip}): {what}")
    if s.get("spread_ms") is not None:
        console.print(f"spread on the wire (first to last client's first packet): {s['spread_ms']:.2f} ms")
    if s.get("open"):
        console.print(f"[yellow]{s['open']} TCP conversation(s) had not closed when the capture stopped[/]")
    for warning in s.get("warnings", []):
        console.print(f"[yellow]warning: {warning}[/]")
    if ladder and result.analysis is not None and result.analysis.packets:
        from labctl.analyse import summarise, terminal

        sys.stdout.flush()
        run = result.run.to_json() if result.run is not None else None  # (each UDP client's own view)
        terminal.render(summarise(result.analysis, run=run, captured={n.node for n in result.nodes}))
