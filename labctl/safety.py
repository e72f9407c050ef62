"""Network safety: labctl only ever talks to the lab it made.

Before any connection to a lab address, the route to it must be the lab's:

* where the inventory names the lab's ``interface`` on this machine and ``ip`` exists (Linux), ``ip route
  get ADDR`` must say the packet leaves by that interface;
* otherwise (macOS and Windows have no ``ip``; an inventory may give no interface), where the inventory
  gives this machine's address on the lab network (``host_address``), the source address the routing
  table picks for ADDR must be that one. A UDP socket's ``connect()`` sends nothing and reveals it, on
  every system.

If the route is another (the lab is down, another network owns the subnet), refuse. A host with neither
an ``interface`` nor a ``host_address`` cannot be checked (the README says so); one with an interface
but no ``ip`` and no ``host_address`` is refused rather than sent to unchecked.
"""
from __future__ import annotations

import shutil
import socket
from collections.abc import Iterable

from labctl.inventory import Host, LabNotUp
from labctl.routes import route_devices


def _refusal(address: str, device: str | None, interface: str) -> LabNotUp:
    where = f"routes via {device}" if device else "has no route"
    return LabNotUp(f"lab is not up: run labctl up ({address} {where}, not the lab's bridge "
                    f"{interface}; labctl refuses to send traffic outside the lab)")


def have_ip() -> bool:
    """True where the ``ip`` tool (iproute2) is on PATH, so ``ip route get`` can be asked."""
    return shutil.which("ip") is not None


def source_address(address: str) -> str | None:
    """The source address this machine's routing picks for ``address`` (None: no route). Portable: a UDP
    socket's ``connect()`` only looks the route up; nothing is sent."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, 9))  # the discard port; connect() on UDP sends no packet
        except OSError:
            return None
        return sock.getsockname()[0]


def _source_refusal(host: Host) -> LabNotUp | None:
    source = source_address(host.address)
    if source == host.host_address:
        return None
    picked = f"from {source}" if source else "nowhere (no route)"
    return LabNotUp(f"lab is not up: run labctl up ({host.address} would be sent {picked}, not from this "
                    f"machine's lab address {host.host_address}; labctl refuses to send traffic outside "
                    "the lab)")


def unsafe_hosts(hosts: Iterable[Host]) -> dict[str, LabNotUp]:
    """Each host whose route is not the lab's, with why (see the module docstring; one ``ip`` call)."""
    hosts = list(hosts)
    by_device = [h for h in hosts if h.interface is not None and have_ip()] if hosts else []
    devices = route_devices(h.address for h in by_device) if by_device else {}
    refused = {h.name: _refusal(h.address, devices[h.address], h.interface) for h in by_device
               if devices[h.address] != h.interface}
    for host in hosts:
        if host in by_device:
            continue
        if host.host_address is not None:
            refusal = _source_refusal(host)
            if refusal is not None:
                refused[host.name] = refusal
        elif host.interface is not None:  # an interface to check, but no `ip` to check it with
            refused[host.name] = LabNotUp(
                f"{host.name}: cannot check the route to {host.address}: 'ip' is missing here and the "
                "inventory gives no host_address (this machine's address on the lab network) to check "
                "the route's source against; add host_address to the inventory")
    return refused


def check_host(host: Host) -> None:
    """Raise :class:`LabNotUp` unless the route to ``host`` is the lab's."""
    refused = unsafe_hosts([host])
    if refused:
        raise refused[host.name]


def check_routes(addresses: Iterable[str], interface: str | None) -> None:
    """Raise :class:`LabNotUp` unless every address routes out of ``interface`` (None: not checked)."""
    if interface is None:
        return
    for address, device in route_devices(addresses).items():
        if device != interface:
            raise _refusal(address, device, interface)


def check_route(address: str, interface: str | None) -> None:
    """:func:`check_routes` for one address."""
    check_routes([address], interface)
