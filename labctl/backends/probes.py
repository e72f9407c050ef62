"""What a backend that puts its nodes on this machine looks at without changing anything: routes that
overlap a subnet, SSH ports that accept a connection (netns and docker share them)."""
from __future__ import annotations

import ipaddress
import json
import select
import socket
import subprocess
import time


def subnet_users(subnet: str, *, exclude_dev: str | None = None) -> list[str]:
    """Routes (any table, so local addresses too) overlapping ``subnet``, except via ``exclude_dev``."""
    net = ipaddress.IPv4Network(subnet)
    proc = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                          check=False)
    try:
        routes = json.loads(proc.stdout or "[]")
    except ValueError:
        routes = []
    users = []
    for route in routes:
        dst, dev = route.get("dst", ""), route.get("dev")
        if dst == "default" or dev == exclude_dev:
            continue
        try:
            overlaps = ipaddress.IPv4Network(dst, strict=False).overlaps(net)
        except ValueError:
            continue
        if overlaps:
            users.append(f"{route.get('type', 'route')} {dst} dev {dev}".replace("unicast ", "route "))
    return users


def tcp_accepting(targets: list[tuple[str, int]], timeout: float) -> set[tuple[str, int]]:
    """The targets whose TCP port accepts a connection within ``timeout`` (all probed at once)."""
    pending: dict[int, tuple[socket.socket, tuple[str, int]]] = {}
    accepted: set[tuple[str, int]] = set()
    for target in targets:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(target)
        if err in (0, 115):  # 115 = EINPROGRESS
            pending[sock.fileno()] = (sock, target)
        else:
            sock.close()
    deadline = time.monotonic() + timeout
    try:
        while pending and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], list(pending), [], left)
            for fd in writable:
                sock, target = pending.pop(fd)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    accepted.add(target)
                sock.close()
    finally:
        for sock, _ in pending.values():
            sock.close()
    return accepted
