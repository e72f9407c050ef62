"""Argument parsing and printing; no logic of its own.

Each group of commands lives in its own module with a ``register(subparsers)`` function:
``lab_commands`` (up, down, status, ssh, clean), ``exercise_commands`` (deploy, run),
``capture_command`` (capture), ``analyse_command`` (analyse) and ``inventory_command`` (inventory).
A command handler takes ``(args, ctx)`` and returns an exit status.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from labctl import __version__
from labctl.backends import DEFAULT_BACKEND, SYSTEM_STATE_ROOT, backend_names, user_state_root
from labctl.cli.types import path_arg
from labctl.errors import LabctlError

COMMAND_MODULES = ("lab_commands", "exercise_commands", "exercise_command", "capture_command",
                   "logs_command", "analyse_command", "inventory_command", "impair_command")


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
    backend_name: str | None  # None: chosen by labctl.choice (what is running, else the default)
    inventory_file: Path | None
    state_root: Path | None   # None: the chosen backend's default (labctl.backends.default_state_root)

    def lab(self):
        from labctl.lab import load_lab

        return load_lab(self.lab_file, clients=self.clients)

    def backend(self):
        """The backend the command drives; says which, and why, in one line on stderr."""
        from labctl.backends import make_backend
        from labctl.choice import choose_backend

        lab = self.lab()
        choice = choose_backend(lab, flag=self.backend_name, inventory_file=self.inventory_file,
                                state_root=self.state_root)
        print(f"labctl: {choice.line()}", file=sys.stderr)
        return make_backend(choice.name, lab, choice.state_root / lab.name,
                            inventory_file=self.inventory_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labctl",
        description="A network lab to see what TCP and UDP put on the wire. Bring up a server and "
                    "clients (network namespaces by default, or Vagrant VMs, containers, or SSH hosts), "
                    "deploy the time server and clients (or programs of your own, any language), "
                    "trigger every client at once, capture the server's "
                    "traffic with tcpdump and analyse it as ladder diagrams.",
        epilog="Typical session: labctl up; labctl run tcp; labctl capture --port 8080 --run udp; "
               "labctl analyse captures/*.pcap; labctl down. Run 'labctl COMMAND --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"labctl {__version__}")
    parser.add_argument("--lab", dest="lab_file", type=path_arg, metavar="FILE",
                        default=Path(os.environ["LABCTL_LAB"]) if os.environ.get("LABCTL_LAB") else None,
                        help="lab file (default: env LABCTL_LAB, which the Vagrantfile reads too, else "
                             "lab.yml in the project)")
    parser.add_argument("--backend", default=None, choices=backend_names(),
                        help="how the lab is realised. Default: env LABCTL_BACKEND, else the lab file's "
                             "'backend:', else ssh with --inventory, else the lab that is running (the "
                             "project's Vagrant machines after 'vagrant up', the embedded lab, the "
                             f"containers), else {DEFAULT_BACKEND} (the embedded lab). Every command says "
                             "which it uses on stderr")
    parser.add_argument("--inventory", dest="inventory_file", type=path_arg, metavar="FILE",
                        help="inventory file for --backend ssh (see 'labctl inventory --format yaml')")
    parser.add_argument("--state-dir", dest="state_root", type=path_arg,
                        default=Path(os.environ["LABCTL_STATE"]) if os.environ.get("LABCTL_STATE") else None,
                        help=f"where labs keep keys, pids and known_hosts (default: env LABCTL_STATE, else "
                             f"{SYSTEM_STATE_ROOT} for the embedded lab, which needs root, and "
                             f"{user_state_root()} for the others)")
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


def main(argv: list[str] | None = None, *, restore_sigint: bool = False) -> int:
    """Parse ``argv`` and run the command; ``restore_sigint``: Ctrl-C raises KeyboardInterrupt from here
    on (labctl.py and the console script exit at once on a Ctrl-C while the modules load)."""
    try:
        if restore_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        ctx = Context(lab_file=args.lab_file, clients=getattr(args, "clients", None),
                      backend_name=args.backend, inventory_file=args.inventory_file,
                      state_root=args.state_root)
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
