"""Network safety: labctl only ever talks to the lab it made.

Before any connection to a lab address, ``ip route get ADDR`` must say the packet leaves by the lab's
own bridge. If it would leave any other way (the lab is down, another network owns the subnet), refuse.
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable

from labctl.inventory import LabNotUp

_DEV_RE = re.compile(r"\bdev (\S+)")


def route_devices(addresses: Iterable[str]) -> dict[str, str | None]:
    """The interface each address routes out of, from one ``ip -batch`` call (None: no route)."""
    addresses = list(dict.fromkeys(addresses))
    if not addresses:
        return {}
    batch = "".join(f"route get {a}\n" for a in addresses)
    proc = subprocess.run(["ip", "-o", "-force", "-batch", "-"], input=batch, capture_output=True,
                          text=True, check=False)
    devices: dict[str, str | None] = dict.fromkeys(addresses)
    for line in proc.stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        # "192.168.20.2 dev lab-br src 192.168.20.1 uid 0 \    cache" (or "local 127.0.0.1 dev lo ...")
        addr = fields[1] if fields[0] in ("local", "broadcast", "unicast") else fields[0]
        match = _DEV_RE.search(line)
        if addr in devices and match:
            devices[addr] = match.group(1)
    return devices


def check_routes(addresses: Iterable[str], interface: str | None) -> None:
    """Raise :class:`LabNotUp` unless every address routes out of ``interface`` (None: not checked)."""
    if interface is None:
        return
    for address, device in route_devices(addresses).items():
        if device != interface:
            where = f"routes via {device}" if device else "has no route"
            raise LabNotUp(f"lab is not up: run labctl up ({address} {where}, not the lab's bridge "
                           f"{interface}; labctl refuses to send traffic outside the lab)")


def check_route(address: str, interface: str | None) -> None:
    """:func:`check_routes` for one address."""
    check_routes([address], interface)
