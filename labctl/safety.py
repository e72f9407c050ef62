"""Network safety: labctl only ever talks to the lab it made.

Before any connection to a lab address, ``ip route get ADDR`` must say the packet leaves by the lab's
own bridge. If it would leave any other way (the lab is down, another network owns the subnet), refuse.
"""
from __future__ import annotations

from collections.abc import Iterable

from labctl.inventory import Host, LabNotUp
from labctl.routes import route_devices


def _refusal(address: str, device: str | None, interface: str) -> LabNotUp:
    where = f"routes via {device}" if device else "has no route"
    return LabNotUp(f"lab is not up: run labctl up ({address} {where}, not the lab's bridge "
                    f"{interface}; labctl refuses to send traffic outside the lab)")


def unsafe_hosts(hosts: Iterable[Host]) -> dict[str, LabNotUp]:
    """Each host whose address does not route out of its ``interface``, with why (one ``ip`` call).

    Hosts without an ``interface`` are not checked.
    """
    checked = [h for h in hosts if h.interface is not None]
    devices = route_devices(h.address for h in checked)
    return {h.name: _refusal(h.address, devices[h.address], h.interface) for h in checked
            if devices[h.address] != h.interface}


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
