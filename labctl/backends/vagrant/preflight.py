"""Before ``vagrant up``: can this machine run the lab's VMs with the chosen provider?

VirtualBox >= 6.1.28 refuses host-only networks outside 192.168.56.0/21 unless ``/etc/vbox/networks.conf``
lists the range, and ``vagrant up`` then fails half-way with an unhelpful message; libvirt needs a
running libvirtd. Each problem is one message that says exactly what to do.
"""
from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

from labctl.backends.base import BackendError

VBOX_NETWORKS_CONF = Path("/etc/vbox/networks.conf")
VBOX_DEFAULT_RANGE = ipaddress.IPv4Network("192.168.56.0/21")
LIBVIRT_URI = "qemu:///system"
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class VagrantPreflightError(BackendError):
    """This machine cannot run the Vagrant lab yet; the message says exactly what to do."""


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``6.1.28r147628`` -> (6, 1, 28); None when there is no version in ``text``."""
    match = _VERSION_RE.search(text)
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def vbox_allowed_ranges(conf_text: str | None) -> list[ipaddress.IPv4Network]:
    """The host-only ranges VirtualBox allows: the ``* RANGE ...`` lines of networks.conf, or its default."""
    if conf_text is None:
        return [VBOX_DEFAULT_RANGE]
    ranges = []
    for line in conf_text.splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields or fields[0] != "*":
            continue
        for field in fields[1:]:
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(field, strict=False)
                if isinstance(net, ipaddress.IPv4Network):
                    ranges.append(net)
    return ranges


def vbox_network_problem(subnet: str, version: str | None, conf_text: str | None,
                         conf_path: Path = VBOX_NETWORKS_CONF) -> str | None:
    """Why VirtualBox would refuse the lab's host-only network, with the line to add; None if it won't.

    VirtualBox >= 6.1.28 only allows host-only networks in 192.168.56.0/21 unless networks.conf lists
    the range (``vagrant up`` then fails half-way with an unhelpful message).
    """
    parsed = parse_version(version or "")
    if parsed is None or parsed < (6, 1, 28):
        return None
    net = ipaddress.IPv4Network(subnet)
    if any(net.subnet_of(allowed) for allowed in vbox_allowed_ranges(conf_text)):
        return None
    how = "create it with this line" if conf_text is None else "add this line to it"
    return (f"VirtualBox {'.'.join(map(str, parsed))} allows host-only networks only in the ranges "
            f"{conf_path} lists (default {VBOX_DEFAULT_RANGE}), and the lab uses {net}. As root, {how}:\n"
            f"    * {net}\n"
            f"e.g.: sudo mkdir -p {conf_path.parent} && echo '* {net}' | sudo tee -a {conf_path}")


def check_virtualbox(subnet: str, conf_path: Path | None = None) -> None:
    """Raise :class:`VagrantPreflightError` if VirtualBox would refuse the lab's host-only network."""
    conf_path = conf_path or VBOX_NETWORKS_CONF
    vboxmanage = shutil.which("VBoxManage") or shutil.which("vboxmanage")
    if vboxmanage is None:
        raise VagrantPreflightError("VirtualBox is not installed (no VBoxManage on PATH): install it, or use "
                                    "the libvirt provider (lab file vagrant.provider: libvirt), see "
                                    "docs/backends.md")
    version = subprocess.run([vboxmanage, "--version"], capture_output=True, text=True, check=False).stdout
    try:
        conf_text: str | None = conf_path.read_text()
    except FileNotFoundError:
        conf_text = None
    problem = vbox_network_problem(subnet, version, conf_text, conf_path)
    if problem:
        raise VagrantPreflightError(problem)


def check_libvirt(uri: str = LIBVIRT_URI) -> None:
    """Raise :class:`VagrantPreflightError` unless vagrant-libvirt can talk to a running libvirtd."""
    if shutil.which("virsh") is None:
        raise VagrantPreflightError("libvirt is not installed: apt-get install --no-install-recommends "
                                    "qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients "
                                    "vagrant-libvirt dnsmasq-base")
    proc = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VagrantPreflightError(f"libvirtd does not answer on {uri} ({proc.stderr.strip()}): start it "
                                    "(without systemd: virtlogd -d; libvirtd -d), see docs/backends.md")
    if shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
        raise VagrantPreflightError("nft is missing (the forwarding guard on the lab's libvirt bridges "
                                    "needs it): apt-get install -y nftables")


def require(provider: str, subnet: str) -> None:
    """Raise :class:`VagrantPreflightError` unless ``provider`` can run a lab on ``subnet`` here."""
    if provider == "virtualbox":
        check_virtualbox(subnet)
    else:
        check_libvirt()
