"""What this machine's routing table says: the interface each address leaves by (``ip route get``).

It knows nothing of labs: :mod:`labctl.safety` asks it before any connection, and the namespace
backend's ``status`` asks it before it knocks on a node's SSH port.
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable

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
