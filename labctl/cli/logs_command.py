"""``labctl logs [NODE]``: the log of each server labctl started on a node. Parsing and printing only."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "logs", help="the output of the server program(s) on the server node",
        description="Show the tail of the log of every server labctl started on NODE (default: the server): "
                    "the built-in time server's, or your program's stdout and stderr, whether it is running "
                    "or has ended (the log is kept until the next deploy of that program; at most 8 MiB). "
                    "A client's output comes back with run (run --json: reply and stderr per node).")
    p.add_argument("node", nargs="?", default=None, metavar="NODE", help="the node (default: the server)")
    p.add_argument("--program", metavar="NAME",
                   help="only this program's server (the built-in programs share the server 'timeserver')")
    p.add_argument("-n", "--lines", type=_lines, default=50, metavar="N", help="lines per log (default 50)")
    p.set_defaults(handler=cmd_logs)


def _lines(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100000:
        raise argparse.ArgumentTypeError(f"1..100000 lines, got {text}")
    return value


def cmd_logs(args: argparse.Namespace, ctx) -> int:
    from labctl.cli import CliError
    from labctl.deploy import server_logs
    from labctl.programs import BUILTIN_NAMES
    from labctl.remote import Connection

    inventory = ctx.backend().inventory()
    host = inventory.get(args.node) if args.node else inventory.server
    if host.role != "server":
        raise CliError(f"{host.name} is a client: clients run only during `labctl run`, and their output "
                       "comes back with it (run --json: reply and stderr per node)")
    server_id = None
    if args.program:
        server_id = "timeserver" if args.program in BUILTIN_NAMES else args.program
    with Connection(host) as conn:
        print(server_logs(conn, lines=args.lines, server_id=server_id))
    return 0
