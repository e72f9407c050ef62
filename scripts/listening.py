"""listening.py: which process listens on which port, read from /proc (stdlib only, Linux).

serverctl.py's eyes: a server counts as started once it (or a process it started) listens, and a port
counts as taken by whoever holds a listening socket on it. A TCP socket listens in state LISTEN; a UDP
socket "listens" once it is bound to a port. /proc/net/{tcp,udp}{,6} list the sockets of this network
namespace by inode, and /proc/PID/fd links name the inodes each process holds.
"""
from __future__ import annotations

import os

LISTEN, UNCONN = "0A", "07"  # /proc/net/tcp's and udp's state column


def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (proto, port) of every listening TCP and bound UDP socket of this network namespace."""
    found: dict[int, tuple[str, int]] = {}
    for proto, files, state in (("tcp", ("tcp", "tcp6"), LISTEN), ("udp", ("udp", "udp6"), UNCONN)):
        for name in files:
            try:
                with open(f"/proc/net/{name}") as f:
                    lines = f.readlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[3] == state:
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    if port:
                        found[int(fields[9])] = (proto, port)
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def parents() -> dict[int, int]:
    """pid -> ppid of every live process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] not in ("Z", "X"):
                out[int(entry)] = int(fields[1])
    return out


def tree(root: int, ppids: dict[int, int] | None = None) -> set[int]:
    """``root`` and all of its live descendants."""
    ppids = parents() if ppids is None else ppids
    found, grew = {root} if root in ppids else set(), True
    while grew:
        grew = False
        for pid, ppid in ppids.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def listens(pids: set[int], sockets: dict[int, tuple[str, int]] | None = None) -> set[tuple[str, int]]:
    sockets = listening_sockets() if sockets is None else sockets
    return {sockets[i] for pid in pids for i in socket_inodes(pid) if i in sockets}


def holders(wanted: list[tuple[str | None, int]]) -> dict[int, set[tuple[str, int]]]:
    """pid -> the wanted (proto, port)s it listens on, for every process of this node."""
    sockets = {i: sp for i, sp in listening_sockets().items() if matches(sp, wanted)}
    out: dict[int, set[tuple[str, int]]] = {}
    if not sockets:
        return out
    for pid in parents():
        held = {sockets[i] for i in socket_inodes(pid) if i in sockets}
        if held:
            out[pid] = held
    return out


def matches(sp: tuple[str, int], wanted: list[tuple[str | None, int]]) -> bool:
    return any(port == sp[1] and proto in (None, sp[0]) for proto, port in wanted)


def show(sps: set[tuple[str, int]]) -> list[str]:
    return [f"{proto} {port}" for proto, port in sorted(sps, key=lambda sp: (sp[1], sp[0]))]
