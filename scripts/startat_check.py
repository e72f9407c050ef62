"""startat_check.py: startat.py's checks before the instant (stdlib only): its own arguments; then find
the program, make sure this node can run it, and decide the argv that exec will use. (Only what a
launcher's start needs is imported: that start is on the critical path of every run.)

A program is looked up on PATH (or taken as a path when it holds a slash) and checked: it exists, an
ELF binary is for this node's machine, a script's interpreter is there; a non-executable script runs
with the interpreter its #! line or its `.py` names. Whatever cannot run is one LaunchError, whose
`code` is startat's exit status (126 cannot execute, 127 not found) and whose message names the file
and the node (`exec format error: seed-tcpserver is x86-64, client2 is aarch64`). serverctl.py uses the
same checks for servers (through startat.py).
"""
from __future__ import annotations

import os
import struct
import sys
import time

EXIT_USAGE, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND = 125, 126, 127
MAX_AHEAD = 86400.0  # --at at most this far ahead

# ELF e_machine -> the name the messages use, and the `uname -m` values that can run it
ELF_MACHINES = {3: ("x86", ("i386", "i486", "i586", "i686", "x86_64")), 62: ("x86-64", ("x86_64",)),
                40: ("arm", ("armv6l", "armv7l", "armv8l", "aarch64")),
                183: ("aarch64", ("aarch64", "arm64")), 243: ("riscv", ("riscv64", "riscv32")),
                21: ("ppc64", ("ppc64", "ppc64le")),
                20: ("ppc", ("ppc",)), 22: ("s390", ("s390x",)), 8: ("mips", ("mips", "mips64")),
                258: ("loongarch", ("loongarch64",))}
UNAME_NAMES = {"x86_64": "x86-64", "aarch64": "aarch64", "arm64": "aarch64", "i686": "x86", "armv7l": "arm",
               "riscv64": "riscv", "ppc64le": "ppc64", "s390x": "s390", "loongarch64": "loongarch"}


class LaunchError(Exception):
    """The program cannot be started; `code` is startat's exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def find_program(name: str, node: str) -> str:
    """The path exec will use: `name` itself when it holds a slash, else the first match on PATH."""
    if "/" in name:
        if not os.path.lexists(name):
            raise LaunchError(EXIT_NOT_FOUND, f"{name}: no such file on {node}")
        return name
    for d in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path):
            return path
    raise LaunchError(EXIT_NOT_FOUND, f"{name}: command not found on {node} (not on PATH)")


def elf_machine(header: bytes) -> int | None:
    """The e_machine of an ELF header, or None when `header` is not ELF."""
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] not in (1, 2):
        return None
    return struct.unpack("<H" if header[5] == 1 else ">H", header[18:20])[0]


def check_machine(path: str, machine: int, node: str) -> None:
    """Refuse an ELF binary this node's CPU cannot run (one line naming the file and the node)."""
    here = os.uname().machine
    known = ELF_MACHINES.get(machine)
    if known is None or here not in {m for _, ms in ELF_MACHINES.values() for m in ms}:
        return  # a machine we do not know: let the kernel decide
    if here not in known[1]:
        raise LaunchError(EXIT_CANNOT_EXEC, f"exec format error: {os.path.basename(path)} is {known[0]}, "
                                            f"{node} is {UNAME_NAMES.get(here, here)}")


def read_header(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(256)
    except IsADirectoryError:
        raise LaunchError(EXIT_CANNOT_EXEC, f"{path}: is a directory") from None
    except PermissionError:
        return b""  # executable but not readable (--x): only exec can tell
    except OSError as e:
        code = EXIT_NOT_FOUND if e.errno == 2 else EXIT_CANNOT_EXEC
        raise LaunchError(code, f"{path}: {e.strerror}") from None


def prepare(program: str, args: list[str], node: str) -> tuple[list[str], int | None]:
    """(argv for execv, the ELF machine of what will really run or None); LaunchError when it can't run."""
    path = find_program(program, node)
    header = read_header(path)
    executable = os.access(path, os.X_OK)
    machine = elf_machine(header)
    if machine is not None:
        if not executable:
            raise LaunchError(EXIT_CANNOT_EXEC, f"permission denied: {path} is not executable on {node} "
                                                f"(chmod +x)")
        check_machine(path, machine, node)
        return [path, *args], machine
    if header.startswith(b"#!"):
        words = header[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split(None, 1)
        if not words:
            raise LaunchError(EXIT_CANNOT_EXEC, f"{path}: empty #! line")
        interp = words[0]
        real = interp
        if os.path.basename(interp) == "env" and len(words) > 1:  # `#!/usr/bin/env python3`
            real = find_program(words[1].split()[0], node) if "/" not in words[1] else words[1].split()[0]
        if not os.path.exists(interp) or not os.path.exists(real):
            missing = interp if not os.path.exists(interp) else real
            raise LaunchError(EXIT_NOT_FOUND, f"{path}: interpreter {missing} not found on {node}")
        m = elf_machine(read_header(os.path.realpath(real)))
        if m is not None:
            check_machine(real, m, node)
        argv = [path, *args] if executable else [interp, *words[1:], path, *args]
        return argv, m
    if not executable and path.endswith(".py"):
        return [sys.executable or "python3", path, *args], elf_machine(read_header(sys.executable))
    if not executable:
        raise LaunchError(EXIT_CANNOT_EXEC, f"permission denied: {path} is not executable on {node} "
                                            f"(chmod +x, or give it a #! line)")
    if header:
        raise LaunchError(EXIT_CANNOT_EXEC, f"exec format error: {path} is neither an ELF binary nor a "
                                            f"script with a #! line")
    return [path, *args], None


USAGE = ("usage: startat.py --at EPOCH_SECONDS [--timeout SECONDS] [--node NAME] [--no-hold] [--spin S] "
         "-- PROGRAM [ARGS...]")
HELP = USAGE + """

Start PROGRAM at the wall-clock instant --at (see the top of startat.py for how, the exit codes and
the startat-timings line).

  --at EPOCH_SECONDS  the instant (Unix time)
  --timeout SECONDS   kill the program's group this long after the instant (exit 124; default: none)
  --node NAME         this node's name, for the messages (default: its host name)
  --no-hold           do not exec early and hold the first network call: sleep, then exec
  --spin SECONDS      held: spin, not sleep, this long before the instant (default 0.003; 0: sleep)
"""


class Args:
    """startat's command line, parsed."""

    def __init__(self) -> None:
        self.at: float = float("nan")
        self.timeout: float | None = None
        self.node = os.uname().nodename
        self.no_hold = False
        self.spin: float | None = None
        self.program = ""
        self.args: list[str] = []


def usage_error(message: str) -> None:
    """Exit 125 (not 2: 2 belongs to the program) with the usage and one `startat:` line."""
    sys.stderr.write(f"{USAGE}\nstartat: {message}\n")
    sys.exit(EXIT_USAGE)


def parse_args(argv: list[str] | None) -> Args:
    """The options, then PROGRAM and its ARGS (after `--`, or from the first word that is not an option).

    Written by hand, not with argparse: the launcher's start is on the critical path of every run
    (labctl measures it and leads by it), and argparse with the `re` it imports was a third of it
    (python3 -S: 45 ms for a start with argparse and json, 13 ms for an empty one, on the lab machine)."""
    words = list(sys.argv[1:] if argv is None else argv)
    a = Args()
    numbers = {"--at": "at", "--timeout": "timeout", "--spin": "spin"}
    seen = set()
    while words:
        word = words.pop(0)
        name, eq, inline = word.partition("=")
        if word == "--":
            break
        if word in ("-h", "--help"):
            sys.stdout.write(HELP)
            sys.exit(0)
        if name in (*numbers, "--node"):
            if not eq and not words:
                usage_error(f"argument {name}: expected one argument")
            value = inline if eq else words.pop(0)
            if name == "--node":
                a.node = value
                continue
            try:
                setattr(a, numbers[name], float(value))
            except ValueError:
                usage_error(f"argument {name}: invalid float value: {value!r}")
            seen.add(name)
        elif word == "--no-hold":
            a.no_hold = True
        elif word.startswith("-") and word != "-":
            usage_error(f"unrecognized argument: {word}")
        else:
            words.insert(0, word)
            break
    if not words:
        usage_error("the following arguments are required: PROGRAM")
    a.program, a.args = words[0], words[1:]
    if "--at" not in seen:
        usage_error("the following arguments are required: --at")
    if not (abs(a.at) < float("inf")) or a.at > time.time() + MAX_AHEAD:
        usage_error(f"--at must be a Unix time at most {MAX_AHEAD:.0f} s ahead, not {a.at}")
    if a.spin is not None and not 0 <= a.spin <= 0.1:
        usage_error(f"--spin must be 0 to 0.1 seconds, not {a.spin}")
    if a.timeout is not None and not 0 < a.timeout < float("inf"):
        usage_error(f"--timeout must be a positive number of seconds, not {a.timeout}")
    return a
