"""The backend interface (Kathará's manager shape): ``up``, ``down``, ``status``, ``inventory``.

A backend realises a :class:`~labctl.lab.Lab` and hands out an :class:`Inventory`: everything the
layers above need to reach the nodes over SSH. Nothing above ``backends/`` knows which backend is in use.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import LabctlError
from labctl.lab import Lab

Progress = Callable[[str], None]


class BackendError(LabctlError):
    """A backend could not do what was asked; the message says why and what to do."""


class LabNotUp(BackendError):
    """The lab (or the node asked for) is not running."""


@dataclass(frozen=True)
class Host:
    """One node as the remote layer sees it."""

    name: str
    role: str                 # "server" or "client"
    address: str              # the lab address (what clients dial, what tcpdump sees)
    port: int = 22
    user: str = "root"
    key_file: Path | None = None        # private key, mode 0600
    host_key: str = ""                  # pinned public host key, OpenSSH line "ssh-ed25519 AAAA..."
    interface: str | None = None        # the lab's bridge on this machine: `ip route get` must leave by it
    lab_interface: str = "eth0"         # the node's own lab interface (where tcpdump listens)


@dataclass(frozen=True)
class Inventory:
    """The hosts of one running lab, and how to reach them."""

    backend: str
    hosts: tuple[Host, ...]
    lab: Lab | None = field(default=None, compare=False)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def get(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise BackendError(f"no node named {name!r} (nodes: {', '.join(h.name for h in self.hosts)})")

    @property
    def server(self) -> Host:
        servers = [h for h in self.hosts if h.role == "server"]
        if len(servers) != 1:
            raise BackendError(f"the inventory must have exactly one server, it has {len(servers)}")
        return servers[0]

    @property
    def clients(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == "client")


@dataclass(frozen=True)
class NodeStatus:
    """What ``status`` reports for one node."""

    name: str
    role: str
    address: str
    up: bool
    detail: str = ""


class Backend(ABC):
    """One way of realising a lab: network namespaces, Vagrant VMs, or plain SSH hosts."""

    name: str = "base"

    def __init__(self, lab: Lab, state_dir: Path) -> None:
        self.lab = lab
        self.state_dir = state_dir

    @abstractmethod
    def up(self, progress: Progress | None = None) -> Inventory:
        """Bring every node up (idempotent) and return the inventory once all accept SSH."""

    @abstractmethod
    def down(self, progress: Progress | None = None) -> None:
        """Remove everything this lab made; a lab that is not up is not an error."""

    @abstractmethod
    def status(self) -> list[NodeStatus]:
        """Each node, up or not, without changing anything."""

    @abstractmethod
    def inventory(self) -> Inventory:
        """The running lab's hosts; raise :class:`LabNotUp` when it is not up."""

    def clean(self, progress: Progress | None = None) -> list[str]:
        """Remove leftovers of a crashed run; return what was removed. Default: same as down."""
        self.down(progress)
        return []
