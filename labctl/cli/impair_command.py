"""``impair``: loss, delay, jitter and rate on a running lab's links. Parsing and printing only.

The values are parsed by :mod:`labctl.links`, merged with what is in force there, and the backend
makes the links so (``Backend.impair``) and reads back what the kernel really has.
"""
from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  labctl impair --node client2 --loss 30%        30 % of what client2 sends is dropped
  labctl impair --delay 50ms --direction both     every node: 50 ms each way (100 ms more per round trip)
  labctl impair --node server --rate 1mbit        the server sends at most 1 Mbit/s
  labctl impair --node client2 --loss 0           back to no loss (the other settings stay)
  labctl impair --clear                           every link perfect again
  labctl impair                                   show what is in force

Settings shape what a node sends (--direction out, the default, as netem on its own interface does),
what it receives (in), or both. Traffic between a node and this host's lab address (labctl's SSH) is
never impaired. `labctl status` shows the same table; `up` applies the lab file's links: section.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("impair", help="loss, delay, jitter and rate on the lab's links",
                       description="Change the loss, delay, jitter or rate limit on one node's link or on "
                                   "all of them, on a running lab; without options, show what is in force. "
                                   "Each value given replaces that setting (0 turns it off); the others "
                                   "stay.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", default="all", metavar="NAME|all", help="whose link (default: all)")
    p.add_argument("--loss", metavar="PCT", help="packets dropped, 0-100%% (e.g. 30%%, 0.5%%)")
    p.add_argument("--delay", metavar="MS", help="time added, e.g. 50ms, 0.2s (a number means ms)")
    p.add_argument("--jitter", metavar="MS", help="+- this much around the delay (uniform; reorders)")
    p.add_argument("--rate", metavar="RATE", help="rate limit with a unit: 500kbit, 1mbit, 1gbit; 0 = none")
    p.add_argument("--direction", choices=("out", "in", "both"),
                   help="what the settings shape: out = what the node sends (default), in, or both")
    p.add_argument("--clear", action="store_true", help="remove every setting from the link(s) first")
    p.add_argument("--json", action="store_true", help="print the links as JSON")
    p.set_defaults(handler=cmd_impair)


def change_from_args(args: argparse.Namespace):
    """The :class:`~labctl.links.LinkSettings` the options ask for (one clear error for a bad value)."""
    from labctl.links import LinkSettings, parse_loss, parse_ms, parse_rate

    return LinkSettings(
        loss=parse_loss(args.loss, "--loss") if args.loss is not None else None,
        delay=parse_ms(args.delay, "--delay") if args.delay is not None else None,
        jitter=parse_ms(args.jitter, "--jitter") if args.jitter is not None else None,
        rate=parse_rate(args.rate, "--rate") if args.rate is not None else None,
        direction=args.direction)


def cmd_impair(args: argparse.Namespace, ctx) -> int:
    from labctl import impairment

    change = change_from_args(args)
    backend = ctx.backend()
    if change.empty and not args.clear:
        backend.inventory()  # a lab that is not up says so
        reports = impairment.reports(backend)
    else:
        reports = impairment.change(backend, args.node, change, clear=args.clear)
    if args.json:
        print(json.dumps({"backend": backend.name, "links": links_json(reports)}, indent=1))
    else:
        print_links(reports, title=f"links of lab {backend.lab.name} ({backend.name})", always=True)
    return 1 if any(r.problems for r in reports) else 0


def links_json(reports) -> list[dict]:
    return [{"node": r.node, "wanted": r.wanted.to_dict(), "applied": list(r.applied),
             "problems": list(r.problems)} for r in reports]


def print_links(reports, *, title: str, always: bool = False) -> None:
    """A table of the links: asked for, in force (with mechanism), problems. Nothing if all are perfect."""
    if not always and not any(r.wanted.active or r.applied or r.problems for r in reports):
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("node", "asked for", "in force (mechanism)", "problems"):
        table.add_column(column)
    for r in reports:
        table.add_row(r.node, r.wanted.describe(), "\n".join(r.applied) or "-",
                      "[red]" + "\n".join(r.problems) + "[/]" if r.problems else "")
    Console().print(table)
