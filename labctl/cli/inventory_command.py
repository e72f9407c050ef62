"""``labctl inventory``: export the running lab's inventory, the file ``--backend ssh`` reads."""
from __future__ import annotations

import argparse
import sys

from labctl.cli.types import path_arg
from labctl.inventory import FORMATS, dump_inventory


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inventory", help="print the running lab's inventory (hosts, keys, pinned host keys)",
        description="Print how to reach each node of the running lab over SSH: name, role, address, port, "
                    "user, private key and pinned host key. The output is the inventory file that "
                    "'labctl --backend ssh --inventory FILE' reads, so the exercise can run against "
                    "these nodes (or any other machines written in the same format).",
        epilog="Example: labctl inventory --format yaml > lab-inventory.yml; "
               "labctl --backend ssh --inventory lab-inventory.yml run tcp")
    parser.add_argument("--format", choices=FORMATS, default="yaml", help="output format (default: yaml)")
    parser.add_argument("-o", "--output", type=path_arg, metavar="FILE",
                        help="write to FILE instead of standard output")
    parser.set_defaults(handler=inventory_command)


def inventory_command(args: argparse.Namespace, ctx) -> int:
    text = dump_inventory(ctx.backend().inventory(), args.format)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    tmp = args.output.with_name(args.output.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(args.output)
    except OSError as exc:
        from labctl.cli import CliError

        raise CliError(f"cannot write {args.output}: {exc.strerror}", code=1) from None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
