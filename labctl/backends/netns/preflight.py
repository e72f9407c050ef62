"""Before building a lab: are we root, and are the programs the lab runs installed?

Each missing program is named with the Debian/Ubuntu package that provides it, and the message
ends with the exact command to install them all.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from labctl.backends.base import BackendError


class PreflightError(BackendError):
    """This machine cannot run the lab yet; the message says what to do."""


@dataclass(frozen=True)
class Tool:
    program: str      # a name on PATH, or an absolute path
    package: str      # the apt package that provides it
    needed_for: str


# ethtool is not needed: labctl turns off TX checksum offload with the same ioctl ethtool uses.
# The ssh client is checked by `labctl ssh` itself (the only command that needs it).
NETNS_TOOLS = (
    Tool("/usr/sbin/sshd", "openssh-server", "each node's SSH server"),
    Tool("ip", "iproute2", "namespaces, the bridge and the veths"),
    Tool("tcpdump", "tcpdump", "capturing the server's traffic"),
    Tool("nft", "nftables", "the forwarding guard and link loss"),
)


def _found(program: str) -> bool:
    if os.path.isabs(program):
        return os.access(program, os.X_OK)
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


def missing_tools(tools: tuple[Tool, ...] = NETNS_TOOLS) -> list[Tool]:
    return [tool for tool in tools if not _found(tool.program)]


def install_command(tools: list[Tool]) -> str:
    return "apt-get install -y " + " ".join(dict.fromkeys(t.package for t in tools))


def problems(tools: tuple[Tool, ...] = NETNS_TOOLS, *, euid: int | None = None) -> list[str]:
    """Everything that stops the namespace lab on this machine, one sentence each (empty: ready)."""
    found = []
    if (os.geteuid() if euid is None else euid) != 0:
        found.append("the namespace lab needs root (it creates network namespaces and a bridge): "
                     "run it as root, e.g. sudo .venv/bin/python labctl.py up")
    missing = missing_tools(tools)
    if missing:
        names = ", ".join(f"{os.path.basename(t.program)} ({t.needed_for})" for t in missing)
        found.append(f"missing: {names}; install with: {install_command(missing)}")
    if not os.path.exists("/proc/self/ns/net"):
        found.append("this kernel has no network namespaces (CONFIG_NET_NS): use --backend vagrant")
    return found


def require_netns() -> None:
    """Raise :class:`PreflightError` unless the namespace lab can be built here."""
    found = problems()
    if found:
        raise PreflightError("; ".join(found))
