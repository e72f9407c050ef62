"""The backend interface (Kathará's manager shape): ``up``, ``down``, ``status``, ``inventory``.

A backend realises a :class:`~labctl.lab.Lab` and hands out an :class:`Inventory`: everything the
layers above need to reach the nodes over SSH. Nothing above ``backends/`` knows which backend is in use.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import LabctlError
from labctl.lab import Lab
from labctl.links import SETTINGS, Impairment

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


@dataclass(frozen=True)
class LinkCapabilities:
    """What a backend can put on a link here, and by which mechanism (detected once, at ``up``)."""

    mechanisms: Mapping[str, str] = field(default_factory=dict)  # loss/delay/jitter/rate -> how
    missing: Mapping[str, str] = field(default_factory=dict)     # setting -> why not, and what to do

    def refuse_unsupported(self, wanted: Mapping[str, Impairment]) -> None:
        """Raise :class:`BackendError` (one line) if any node asks for a setting this backend lacks."""
        for node, imp in wanted.items():
            for setting in SETTINGS:
                if getattr(imp, setting) and setting in self.missing:
                    raise BackendError(f"{node}: {setting} {self.missing[setting]}")


@dataclass(frozen=True)
class LinkReport:
    """One node's link: what labctl was asked for, what the kernel really has, and what is wrong."""

    node: str
    wanted: Impairment
    applied: tuple[str, ...] = ()    # one phrase per setting in force, with its mechanism and counters
    problems: tuple[str, ...] = ()   # asked for but not in force (or in force but not asked for)


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

    # --- link impairment (labctl.links): loss, delay, jitter, rate per node --------------------------

    def link_capabilities(self) -> LinkCapabilities:
        """Which settings this backend offers, by which mechanism; default: none."""
        return LinkCapabilities(missing={s: f"is not offered by the {self.name} backend" for s in SETTINGS})

    def link_settings(self) -> dict[str, Impairment]:
        """What each node's link was last set to (a perfect link for every node by default)."""
        return {node.name: Impairment() for node in self.lab.nodes}

    def impair(self, wanted: Mapping[str, Impairment]) -> list[LinkReport]:
        """Make every node's link what ``wanted`` says (nodes left out: a perfect link); report them."""
        self.link_capabilities().refuse_unsupported(wanted)
        raise BackendError(f"the {self.name} backend cannot impair links")

    def link_reports(self) -> list[LinkReport]:
        """What is in force on each link, read back from where it was applied; empty if nothing can be."""
        return []
