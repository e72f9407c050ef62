"""The exercise's commands: ``deploy`` and ``run``. Parsing and printing only (``capture`` has its
own module, :mod:`labctl.cli.capture_command`).

Imports of the working modules (paramiko, rich) happen inside the handlers, so ``labctl --help`` and
the other commands stay fast.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys

MAX_TIMEOUT = 3600.0  # (labctl.programs.MAX_TIMEOUT; not imported here: --help stays fast)


PROGRAM_HELP = ("NAME: a program of the lab file's programs: section, or built in: tcp (the time over "
                "TCP, port 8080), udp (over UDP, 8080), proto (the line protocol, 8081), time (RFC 868, 37)")
COMMAND_HELP = ("the first word is a local file (relative to the current folder) copied to the node, or a "
                "command of the node's; placeholders {server} {port} {node} {address}")


def _program_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="CMD", help=f"the server's command instead of NAME's: {COMMAND_HELP}")
    p.add_argument("--client", metavar="CMD", help=f"the client's command instead of NAME's: {COMMAND_HELP}")
    p.add_argument("--port", dest="program_port", type=_port, metavar="N",
                   help="what {port} is and where the server must listen (default: the program's, else 8080)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deploy", help="copy a program's server and client to the nodes, (re)start the server",
        description="Copy the program's server to the server node and its client to every client node over "
                    "SFTP (only files that changed, their mode kept), and (re)start the server as a managed "
                    "process, ready once it listens. A managed server holding the same ports is stopped "
                    "first (and said so). Without NAME: the built-in time server. Reports per node.",
        epilog=PROGRAM_HELP)
    p.add_argument("name", nargs="?", metavar="NAME", help="the program (default: the built-in server)")
    _program_options(p)
    p.add_argument("--force", action="store_true", help="copy everything and restart the server anyway")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_deploy)

    p = subparsers.add_parser(
        "run", help="start a program's client on every client node at the same instant",
        description="Deploy if needed, then start the program's client on every client node at one instant "
                    "(scripts/startat.py on each node starts it ahead and lets it go at the instant), gather "
                    "each client's reply (stdout), stderr, exit status and timings. A client that runs past "
                    "its timeout is killed with its process group; nothing is left running, also on Ctrl-C. "
                    "Exit status 1 if any node failed; the others' results are still printed.",
        epilog=PROGRAM_HELP + ". Ad hoc: run --client 'nc {server} {port}' (against the built-in server), "
               "run --server './server.py {port}' --client './client.py {server} {port}'. With --json "
               "and --repeat N, one JSON object per run, one per line.")
    p.add_argument("name", nargs="?", metavar="NAME", help="the program (tcp, udp, proto, time, or yours)")
    _program_options(p)
    p.add_argument("--repeat", type=_positive_int, default=1, metavar="N", help="trigger N runs (default 1)")
    p.add_argument("--json", action="store_true",
                   help='print {"program", "results": [{"node", "address", "ok", "reply", "stderr", "exit", '
                        '"timings", "error"}], "spread_ms", ...}')
    p.add_argument("--send", action="append", metavar="LINE",
                   help="built-in proto (or udp) only: a request line to send (repeatable; default GET TIME, "
                        "SAY HI)")
    p.add_argument("--timeout", type=_timeout, metavar="S",
                   help=f"a client's timeout: killed when it runs S s past the instant (default 5 s; the "
                        f"built-in clients: their reply timeout, default 3 s; at most {MAX_TIMEOUT:g})")
    p.add_argument("--retries", type=_non_negative_int, metavar="N", help="built-in udp client's retries")
    p.add_argument("--no-deploy", action="store_true",
                   help="do not check or deploy the programs first (e.g. to see a stopped server refuse)")
    p.set_defaults(handler=cmd_run)


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
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number more than 0, got {text}")
    return value


def _timeout(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"at most {MAX_TIMEOUT:g} s (every client is killed at its "
                                         f"timeout), got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {text}")
    return value


def _say(message: str) -> None:
    print(f"labctl: {message}", file=sys.stderr, flush=True)


def _console(file=None):
    from rich.console import Console

    console = Console(highlight=False, file=file)
    if not console.is_terminal:  # piped or logged: do not cut replies to 80 columns
        console = Console(highlight=False, width=max(console.width, 120), file=file)
    return console


# --- deploy -------------------------------------------------------------------------------------------

def _program(args: argparse.Namespace, inventory, *, default: str | None):
    """The program the command line names: NAME (or ``default``), with --server/--client/--port."""
    from labctl.deploy import program_for
    from labctl.programs import ad_hoc, find

    name = args.name or default
    if name is None and args.client is None and args.server is None:
        from labctl.cli import CliError

        raise CliError("run what? name a program (tcp, udp, proto, time or one of the lab file's programs:), "
                       "or give --client CMD (and --server CMD); see labctl run --help")
    lab = inventory.lab
    base = find(lab.programs if lab is not None else {}, name) if name else None
    spec = ad_hoc(base, server=args.server, client=args.client, port=args.program_port)
    return program_for(inventory, spec)


def cmd_deploy(args: argparse.Namespace, ctx) -> int:
    from labctl.deploy import ensure, ports_of
    from labctl.remote import Group

    inventory = ctx.backend().inventory()
    program = _program(args, inventory, default=None if args.client or args.server else "tcp")
    with Group(inventory.hosts) as group:
        report = ensure(group, program, ports=ports_of(inventory), force=args.force)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        from rich.table import Table

        table = Table(title=f"deploy {report.program} ({report.seconds:.2f} s)")
        for col in ("node", "role", "address", "what it did"):
            table.add_column(col)
        for n in report.nodes:
            table.add_row(n.node, n.role, n.address,
                          n.summary() if n.ok else f"[red]FAILED: {_escape(n.error)}[/red]")
        _console().print(table)
    return 0 if report.ok else 1


def _escape(text) -> str:
    from rich.markup import escape

    return escape(str(text))


# --- run ----------------------------------------------------------------------------------------------

def run_table(result, title: str | None = None):
    from rich.table import Table

    spread = result.spread_ms
    title = title or (f"run {result.program} → {result.server}:{result.port}   spread "
                      f"{'-' if spread is None else f'{spread:.2f}'} ms (client starts), "
                      f"lead {result.lead * 1000:.0f} ms" + ("   INTERRUPTED" if result.interrupted else ""))
    table = Table(title=title)
    for col, justify in (("node", "left"), ("address", "left"), ("reply", "left"), ("exit", "right"),
                         ("start ms", "right"), ("connect ms", "right"), ("first byte ms", "right"),
                         ("total ms", "right"), ("tries", "right"), ("timeouts", "right")):
        table.add_column(col, justify=justify)
    for r in result.results:
        cells = [_ms(r.late_ms), _ms(r.ms("connected")), _ms(r.ms("first_byte")), _ms(r.ms("done")),
                 _count(r.attempts), _count(r.timeouts)]
        reply = _escape((r.reply or "").replace("\n", " | "))
        if not r.ok:
            reply = f"[red]FAILED: {_escape(r.error)}[/red]" + (f" [dim]{reply}[/dim]" if reply else "")
        elif r.warning:
            reply += f" [yellow]({_escape(r.warning)})[/yellow]"
        elif r.late_ms is not None and r.late_ms >= 1.0:
            reply += f" [yellow](started {r.late_ms:.1f} ms late)[/yellow]"
        table.add_row(r.node, r.address, reply, "-" if r.exit is None else str(r.exit), *cells)
    return table


def _count(value: int | None) -> str:
    """A client's attempts or timeouts; "unknown" for a program labctl did not write (never a guess)."""
    return "unknown" if value is None else str(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{round(value, 2) + 0.0:.2f}"  # (+ 0.0: no "-0.00")


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP end a run like Ctrl-C: the clients are stopped and what came back printed."""
    def handler(signum, _frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def cmd_run(args: argparse.Namespace, ctx) -> int:
    from labctl.run import Runner, median_spread

    inventory = ctx.backend().inventory()
    program = _program(args, inventory, default=None)
    if args.send and program.spec.builtin not in ("proto", "udp"):
        from labctl.cli import CliError

        raise CliError("--send is for the line protocol (proto) and the built-in udp client only: labctl run "
                       "proto --send 'GET TIME'; give your own client its input in its command or input:")
    _interrupt_on_termination()
    console = None
    if not args.json:
        from labctl.bringup import prewarm

        prewarm("rich.console", "rich.table")  # while the nodes are measured and the clients run
    runs = []
    with Runner(inventory, deploy=not args.no_deploy, progress=_say) as runner:
        for _ in range(args.repeat):
            result = runner.trigger(program, send=args.send, timeout=args.timeout, retries=args.retries)
            runs.append(result)
            if args.json:
                print(json.dumps(result.to_json()), flush=True)
            else:
                console = console or _console()
                console.print(run_table(result))
            if result.interrupted:
                _say("interrupted: every client was stopped; above is what came back")
                return 130
    if console is not None and len(runs) > 1:
        med = median_spread(runs)
        failed = sum(1 for r in runs if not r.ok)
        console.print(f"{len(runs)} runs, median spread {'-' if med is None else f'{med:.2f}'} ms, "
                      f"{failed} with failures")
    return 0 if all(r.ok for r in runs) else 1
