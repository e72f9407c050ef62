"""The exercise's commands: ``deploy``, ``run``, ``capture``. Parsing and printing only.

Imports of the working modules (paramiko, rich) happen inside the handlers, so ``labctl --help`` and
the other commands stay fast.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from labctl.cli.types import path_arg

PROTOCOLS = ("tcp", "udp", "proto", "time")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deploy", help="copy the time server and client to the nodes, (re)start the server",
        description="Copy scripts/timeserver.py to the server node and scripts/timeclient.py to every "
                    "client node over SFTP (only files that changed), and (re)start the server as a managed "
                    "process (TCP/UDP time, the line protocol, RFC 868 TIME). Reports per node what it did.")
    p.add_argument("--force", action="store_true", help="copy everything and restart the server anyway")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_deploy)

    p = subparsers.add_parser(
        "run", help="start the client on every client node at the same instant",
        description="Deploy if needed, then start the time client on every client node at one instant "
                    "(each gets a start time and sleeps until it, socket ready), gather replies and timings. "
                    "Exit status 1 if any node failed; the others' results are still printed.",
        epilog="tcp: the time over TCP (port 8080); udp: over UDP (8080); proto: the line protocol "
               "(8081, GET TIME and SAY HI); time: RFC 868 (37). With --json and --repeat N, one JSON "
               "object per run, one per line.")
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("--repeat", type=_positive_int, default=1, metavar="N", help="trigger N runs (default 1)")
    p.add_argument("--json", action="store_true",
                   help='print {"protocol", "results": [{"node", "address", "ok", "reply", "error", '
                        '"timings"}], "spread_ms"}')
    p.add_argument("--send", action="append", metavar="LINE",
                   help="proto only: a request line to send (repeatable; default GET TIME, SAY HI)")
    p.add_argument("--timeout", type=_positive_float, metavar="S", help="client's reply timeout")
    p.add_argument("--retries", type=_non_negative_int, metavar="N", help="client's UDP retries")
    p.add_argument("--no-deploy", action="store_true",
                   help="do not check or deploy the programs first (e.g. to see a stopped server refuse)")
    p.set_defaults(handler=cmd_run)

    p = subparsers.add_parser(
        "capture", help="tcpdump on the server node, the pcap brought home and summarised",
        description="Run tcpdump (--immediate-mode -U) on a node's lab interface over SSH; with --run, "
                    "trigger a run meanwhile and stop once its conversations have closed; otherwise "
                    "capture until Ctrl-C or --duration. Fails loudly if tcpdump lost packets. The pcap "
                    "comes home (default captures/<UTC time>-port8080.pcap) and is read back and summarised.")
    p.add_argument("--port", type=int, action="append", metavar="N",
                   help="port to capture (repeatable; default: the --run protocol's port, else 8080)")
    p.add_argument("--run", dest="run_protocol", choices=PROTOCOLS, metavar="PROTO",
                   help=f"trigger a run of PROTO ({', '.join(PROTOCOLS)}) while capturing")
    p.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    p.add_argument("-o", "--output", type=path_arg, metavar="FILE",
                   help="where the pcap goes; - writes it to standard output once the capture ends "
                        "(labctl capture -o - | labctl analyse -), the report then going to stderr")
    p.add_argument("--node", default=None, help="node to capture on (default: the server)")
    p.add_argument("--no-ladder", action="store_true", help="do not print the ladder diagrams")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=cmd_capture)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _say(message: str) -> None:
    print(f"labctl: {message}", file=sys.stderr, flush=True)


def _console(file=None):
    from rich.console import Console

    console = Console(highlight=False, file=file)
    if not console.is_terminal:  # piped or logged: do not cut replies to 80 columns
        console = Console(highlight=False, width=max(console.width, 120), file=file)
    return console


@contextlib.contextmanager
def _capture_file(output: Path | None):
    """The path the capture is brought home to: ``output``, or for ``-`` a private temporary file
    (removed afterwards) that is then copied to standard output."""
    if output is None or str(output) != "-":
        yield output
        return
    with tempfile.TemporaryDirectory(prefix="labctl-capture-") as tmp:
        yield Path(tmp) / "capture.pcap"


# --- deploy -------------------------------------------------------------------------------------------

def cmd_deploy(args: argparse.Namespace, ctx) -> int:
    from labctl.deploy import ensure, ports_of
    from labctl.remote import Group

    inventory = ctx.backend().inventory()
    with Group(inventory.hosts) as group:
        report = ensure(group, ports_of(inventory), force=args.force)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        from rich.table import Table

        table = Table(title=f"deploy ({report.seconds:.2f} s)")
        for col in ("node", "role", "address", "what it did"):
            table.add_column(col)
        for n in report.nodes:
            table.add_row(n.node, n.role, n.address,
                          n.summary() if n.ok else f"[red]FAILED: {n.error}[/red]")
        _console().print(table)
    return 0 if report.ok else 1


# --- run ----------------------------------------------------------------------------------------------

def run_table(result, title: str | None = None):
    from rich.table import Table

    spread = result.spread_ms
    title = title or (f"run {result.protocol} → {result.server}:{result.port}   spread "
                      f"{'-' if spread is None else f'{spread:.2f}'} ms (client clocks), "
                      f"lead {result.lead * 1000:.0f} ms")
    table = Table(title=title)
    for col, justify in (("node", "left"), ("address", "left"), ("reply", "left"), ("connect ms", "right"),
                         ("first byte ms", "right"), ("total ms", "right")):
        table.add_column(col, justify=justify)
    for r in result.results:
        cells = [_ms(r.ms("connected")), _ms(r.ms("first_byte")), _ms(r.ms("done"))]
        reply = (r.reply or "").replace("\n", " | ") if r.ok else f"[red]FAILED: {r.error}[/red]"
        if r.ok and r.late_ms is not None and r.late_ms >= 1.0:
            reply += f" [yellow](woke {r.late_ms:.1f} ms late)[/yellow]"
        table.add_row(r.node, r.address, reply, *cells)
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def cmd_run(args: argparse.Namespace, ctx) -> int:
    from labctl.run import Runner, median_spread

    if args.send and args.protocol != "proto":
        from labctl.cli import CliError

        raise CliError("--send is for the line protocol only: labctl run proto --send 'GET TIME'")
    inventory = ctx.backend().inventory()
    console = None if args.json else _console()
    runs = []
    with Runner(inventory, deploy=not args.no_deploy, progress=_say) as runner:
        for _ in range(args.repeat):
            result = runner.trigger(args.protocol, send=args.send, timeout=args.timeout, retries=args.retries)
            runs.append(result)
            if args.json:
                print(json.dumps(result.to_json()), flush=True)
            else:
                console.print(run_table(result))
    if console is not None and len(runs) > 1:
        med = median_spread(runs)
        failed = sum(1 for r in runs if not r.ok)
        console.print(f"{len(runs)} runs, median spread {'-' if med is None else f'{med:.2f}'} ms, "
                      f"{failed} with failures")
    return 0 if all(r.ok for r in runs) else 1


# --- capture ------------------------------------------------------------------------------------------

def cmd_capture(args: argparse.Namespace, ctx) -> int:
    from labctl.capture import capture
    from labctl.cli import CliError
    from labctl.deploy import ports_of
    from labctl.run import Runner, port_for

    if args.run_protocol and args.duration:
        raise CliError("--run stops by itself once the run's conversations closed; drop --duration")
    inventory = ctx.backend().inventory()
    ports_cfg = ports_of(inventory)
    ports = args.port or [port_for(args.run_protocol, ports_cfg) if args.run_protocol else ports_cfg.tcp]
    bad = [p for p in ports if not 1 <= p <= 65535]
    if bad:
        raise CliError(f"--port {bad[0]}: a port is 1..65535")
    node = inventory.get(args.node) if args.node else inventory.server
    console = None if args.json else _console()
    with Runner(inventory, deploy=True, progress=_say) as runner:
        during = None
        if args.run_protocol:
            runner.prepare()  # connections, deploy and the lead first: tcpdump waits for nothing
            during = lambda: runner.trigger(args.run_protocol)  # noqa: E731
        conn = runner.connection(node.name)
        what = " or ".join(f"port {p}" for p in ports)
        until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
        until = f"while every client runs {args.run_protocol}" if args.run_protocol else until

        def listening(dump) -> None:
            _say(f"tcpdump listening on {node.name} {dump.interface} ({what}), pid {dump.pid}, {until}")

        to_stdout = args.output is not None and str(args.output) == "-"
        with _capture_file(args.output) as output:
            result = capture(conn, ports, output=output, duration=args.duration, during=during,
                             analyse=_analyse, on_listening=listening)
            if to_stdout:      # the pcap on stdout, everything said about it on stderr
                sys.stdout.flush()
                with open(output, "rb") as f:
                    shutil.copyfileobj(f, sys.stdout.buffer)
                sys.stdout.buffer.flush()
                result.path = Path("-")
    if args.json:
        print(json.dumps(result.to_json()), file=sys.stderr if to_stdout else sys.stdout)
    else:
        if to_stdout:
            console = _console(sys.stderr)
        _print_capture(console, result, inventory, ladder=not args.no_ladder and not to_stdout)
    if result.run is not None and not result.run.ok:
        return 1
    return 130 if result.interrupted and args.run_protocol else 0


def _analyse(path: Path):
    from labctl.analyse.readback import read_back

    return read_back(path)


def _print_capture(console, result, inventory, *, ladder: bool) -> None:
    if result.run is not None:
        console.print(run_table(result.run))
    s = result.summary
    console.print(f"[bold]{result.path}[/bold]: tcpdump on {result.node} ({result.interface}): "
                  f"{result.stats}; {result.seconds:.2f} s"
                  + (" (stopped by Ctrl-C)" if result.interrupted else ""))
    if not s:
        return
    names = {h.address: h.name for h in inventory.hosts}
    per_proto = ", ".join(f"{k.upper()} {v}" for k, v in s["protocols"].items()) or "none"
    console.print(f"packets per protocol: {per_proto}")
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
        from labctl.analyse import render_terminal

        sys.stdout.flush()
        render_terminal(result.analysis)
