"""Lab commands: ``up``, ``down``, ``status``, ``ssh NODE [CMD...]``, ``clean``.

Printing only; the work is the backend's. Human output is a rich table, ``--json`` is for scripts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from labctl.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="bring the lab up (idempotent)",
                       description="Create the lab (server + clients, each with its own sshd) and wait "
                                   "until every node accepts SSH. Running it again repairs a lab (restarts "
                                   "a dead sshd) or rebuilds it when the lab file changed.")
    p.add_argument("--clients", type=int, metavar="N", help="number of clients (default: the lab file's)")
    p.add_argument("--json", action="store_true",
                   help="print the inventory as JSON (the file 'labctl inventory --format json' writes)")
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("down", help="remove the lab (namespaces, links, processes, state)")
    p.set_defaults(handler=cmd_down)

    p = sub.add_parser("status", help="show each node and whether it is up",
                       description="A node is up when its sshd runs (pid file, in the node's namespace) and "
                                   "its SSH port accepts a TCP connection. Exit status 0 when every node is "
                                   "up, 1 otherwise.")
    p.add_argument("--json", action="store_true",
                   help='print {"backend": ..., "nodes": [{"name", "role", "address", "up"}, ...]}')
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("ssh", help="a shell on a node, or run a command there",
                       description="Without CMD: an interactive shell on NODE. With CMD: run it there and "
                                   "exit with its status. As with ssh, a single CMD argument is a shell "
                                   "command line ('ip -br a; ss -tn'); several are quoted one by one. Uses "
                                   "the system ssh client with the inventory's key and pinned host key "
                                   "(StrictHostKeyChecking=yes, on every backend), after checking that the "
                                   "node's address routes via the lab's bridge.")
    p.add_argument("node", metavar="NODE", help="server, client1, ...")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD",
                   help="a shell command line as one argument, or a command and its arguments")
    p.set_defaults(handler=cmd_ssh)

    p = sub.add_parser("clean", help="remove the leftovers of a crashed or killed run",
                       description="Remove every namespace, link, process and state file that the lab's "
                                   "manifest names and that still exists (e.g. after kill -9 during up). "
                                   "Never touches anything the manifest does not name.")
    p.set_defaults(handler=cmd_clean)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_up(args: argparse.Namespace, ctx) -> int:
    from labctl import bringup

    if args.clients is not None and args.clients < 1:
        raise CliError("--clients must be at least 1")
    backend = ctx.backend()
    start = time.perf_counter()
    progress = None if args.json else (lambda msg: _err(f"labctl: {msg}"))
    if not args.json:
        bringup.prewarm("rich.console", "rich.table")  # while the nodes come up
    inventory = bringup.up(backend, progress)
    elapsed = time.perf_counter() - start
    if args.json:  # the inventory file's JSON, the same document as `labctl inventory --format json`
        from labctl.inventory import dump_inventory

        print(dump_inventory(inventory, "json"), end="")
        return 0
    from rich.console import Console
    from rich.table import Table

    title = f"lab {backend.lab.name} up ({backend.name}, {len(inventory)} nodes, {elapsed:.2f} s)"
    table = Table(title=title)
    for column in ("node", "role", "address", "ssh"):
        table.add_column(column)
    for host in inventory:
        table.add_row(host.name, host.role, host.address, f"{host.user}@{host.address}:{host.port}")
    Console().print(table)
    print("Next: labctl ssh server  |  labctl status  |  labctl down")
    return 0


def cmd_down(args: argparse.Namespace, ctx) -> int:
    from labctl import impairment
    from labctl.backends.base import NOT_UP  # here, not at start-up: no backend module for --help

    backend = ctx.backend()
    start = time.perf_counter()
    impairment.before_down(backend, lambda msg: _err(f"labctl: {msg}"))  # hosts that stay: their tc shaping
    nothing = backend.down(lambda msg: _err(f"labctl: {msg}"))
    if nothing:  # one thing: why there was nothing to do, not that too and then "down"
        print(f"lab {backend.lab.name}{' ' if nothing == NOT_UP else ': '}{nothing}")
    else:
        print(f"lab {backend.lab.name} down ({time.perf_counter() - start:.2f} s)")
    return 0


def cmd_status(args: argparse.Namespace, ctx) -> int:
    from labctl import bringup, impairment
    from labctl.backends.base import NODE_NOT_UP
    from labctl.cli.impair_command import links_json, print_links

    backend = ctx.backend()
    nodes = bringup.status(backend)
    links = impairment.reports(backend)
    guard = backend.guard_status()
    if args.json:
        print(json.dumps({"backend": backend.name,
                          "nodes": [{"name": n.name, "role": n.role, "address": n.address, "up": n.up,
                                     "detail": n.detail} for n in nodes],
                          "links": links_json(links), "forward_guard": guard}, indent=1))
    elif nodes and all(not n.up and n.detail == NODE_NOT_UP for n in nodes) and not links:
        print(f"lab {backend.lab.name} ({backend.name}) is not up: labctl up brings it up")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"lab {backend.lab.name} ({backend.name})")
        for column in ("node", "role", "address", "up", "detail"):
            table.add_column(column)
        for n in nodes:
            table.add_row(n.name, n.role, n.address, "[green]up[/]" if n.up else "[red]down[/]", n.detail)
        Console().print(table)
        if guard:
            print(f"forwarding guard: {guard}")
        print_links(links, title="links (labctl impair)")
    return 0 if nodes and all(n.up for n in nodes) else 1


def cmd_ssh(args: argparse.Namespace, ctx) -> int:
    from labctl.shell import open_shell

    return open_shell(ctx.backend().inventory().get(args.node), args.command)


def cmd_clean(args: argparse.Namespace, ctx) -> int:
    backend = ctx.backend()
    removed = backend.clean(lambda msg: _err(f"labctl: {msg}"))
    if removed:
        print(f"lab {backend.lab.name}: removed " + ", ".join(removed))
    else:
        print(f"lab {backend.lab.name}: nothing to clean")
    return 0

