"""Argument parsing and printing; no logic of its own.

Each group of commands lives in its own module with a ``register(subparsers)`` function:
``lab_commands`` (up, down, status, ssh, clean), ``exercise_commands`` (deploy, run, capture),
``analyse_command`` (analyse) and ``inventory_command`` (inventory). A command handler takes
``(args, ctx)`` and returns an exit status.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from labctl import __version__
from labctl.backends import DEFAULT_BACKEND, backend_names
from labctl.errors import LabctlError

COMMAND_MODULES = ("lab_commands", "exercise_commands", "analyse_command", "inventory_command",
                   "impair_command")
STATE_ROOT = Path(os.environ.get("LABCTL_STATE", "/run/labctl"))


class CliError(Exception):
    """An error to print as one clear line (no traceback), with exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    """What every command gets: the global options, and lazily the lab and the backend."""

    lab_file: Path | None
    clients: int | None
    backend_name: str
    inventory_file: Path | None
    state_root: Path

    def lab(self):
        from labctl.lab import load_lab

        return load_lab(self.lab_file, clients=self.clients)

    def backend(self):
        from labctl.backends import make_backend

        lab = self.lab()
        return make_backend(self.backend_name, lab, self.state_root / lab.name,
                            inventory_file=self.inventory_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labctl",
        description="A network lab to see what TCP and UDP put on the wire. Bring up a server and "
                    "clients (network namespaces by default, or Vagrant VMs, containers, or SSH hosts), "
                    "deploy the time server and clients, trigger every client at once, capture the server's "
                    "traffic with tcpdump and analyse it as ladder diagrams.",
        epilog="Typical session: labctl up; labctl run tcp; labctl capture --port 8080 --run udp; "
               "labctl analyse captures/*.pcap; labctl down. Run 'labctl COMMAND --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"labctl {__version__}")
    parser.add_argument("--lab", dest="lab_file", type=Path, metavar="FILE",
                        help="lab file (default: lab.yml in the project)")
    parser.add_argument("--backend", default=os.environ.get("LABCTL_BACKEND", DEFAULT_BACKEND),
                        choices=backend_names(),
                        help=f"how the lab is realised (default: {DEFAULT_BACKEND}, the embedded lab; "
                             "env LABCTL_BACKEND)")
    parser.add_argument("--inventory", dest="inventory_file", type=Path, metavar="FILE",
                        help="inventory file for --backend ssh (see 'labctl inventory --format yaml')")
    parser.add_argument("--state-dir", dest="state_root", type=Path, default=STATE_ROOT,
                        help=f"where labs keep keys, pids and known_hosts (default: {STATE_ROOT})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"labctl.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"labctl.cli.{module}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    ctx = Context(lab_file=args.lab_file, clients=getattr(args, "clients", None),
                  backend_name=args.backend, inventory_file=args.inventory_file,
                  state_root=args.state_root)
    try:
        return int(args.handler(args, ctx) or 0)
    except KeyboardInterrupt:
        print("labctl: interrupted", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return exc.code
    except LabctlError as exc:  # a known failure of a lower layer: one clear line, no traceback
        if os.environ.get("LABCTL_DEBUG"):
            raise
        print(f"labctl: {exc}", file=sys.stderr)
        return 1
