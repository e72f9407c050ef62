"""This lab's libvirt networks (vagrant-libvirt makes them) and labctl's forwarding guard on their bridges.

The Vagrantfile names two isolated networks per lab: ``labctl-LAB`` (the lab's private network) and
``labctl-LAB-mgmt`` (Vagrant's management network). libvirt puts each on a bridge of this machine
(``virbrN``, ``virsh net-info`` names it), so a VM whose root adds a default route via this host would
be forwarded onward by a host with ``ip_forward=1``. :func:`guard` puts the netns lab's forwarding guard
(:mod:`labctl.backends.forward_guard`, one nft table ``inet labctl-LAB``) on both bridges: each carries
its own traffic, and nothing is routed into, out of or between them.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from labctl.backends import forward_guard
from labctl.backends.base import BackendError
from labctl.backends.vagrant.preflight import LIBVIRT_URI

NFT = subprocess.run  # how the guard runs nft (the unit tests record instead)


def parse_net_info_bridge(text: str) -> str | None:
    """The bridge ``virsh net-info NETWORK`` names (``Bridge:         virbr2``); None if it names none."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Bridge" and value.strip():
            return value.strip()
    return None


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True, check=False)


def of_lab(lab_name: str) -> list[str]:
    """The lab's libvirt networks that exist (defined, running or not)."""
    mine = {f"labctl-{lab_name}", f"labctl-{lab_name}-mgmt"}
    return [n.strip() for n in _virsh("net-list", "--all", "--name").stdout.splitlines() if n.strip() in mine]


def bridges(lab_name: str) -> list[str]:
    """The bridges on this machine of the lab's libvirt networks (the lab's, then Vagrant's)."""
    found = [parse_net_info_bridge(_virsh("net-info", network).stdout) for network in of_lab(lab_name)]
    return [bridge for bridge in found if bridge]


def guard_table(lab_name: str) -> str:
    return f"nft table {forward_guard.FAMILY} {forward_guard.table_name(lab_name)}"


def guard(lab_name: str, say: Callable[[str], None]) -> None:
    """Put the guard on the lab's bridges (idempotent); a lab without its networks is an error."""
    found = bridges(lab_name) if shutil.which("virsh") else []
    if not found:
        raise BackendError(f"found no libvirt network labctl-{lab_name} (virsh net-list): the "
                           "forwarding guard needs its bridge; labctl down removes the VMs")
    say(f"forwarding guard on {', '.join(found)} ({guard_table(lab_name)})")
    forward_guard.install(lab_name, *found, run=NFT)


def guarded(lab_name: str) -> bool:
    return forward_guard.present(lab_name, run=NFT)


def unguard(lab_name: str) -> bool:
    """Remove the guard; True when it was there."""
    return forward_guard.remove(lab_name, run=NFT)


def guard_status(lab_name: str) -> str | None:
    """The line ``labctl status`` prints; None when there is neither a guard nor a network (not up)."""
    try:
        if not guarded(lab_name) and not (shutil.which("virsh") and of_lab(lab_name)):
            return None
        return forward_guard.describe(lab_name, run=NFT)
    except forward_guard.GuardError as exc:   # e.g. a user without nft: status still shows the nodes
        return f"unknown: {exc}"
