"""The backend interface (Kathará's manager shape): ``up``, ``down``, ``status``, ``inventory``.

A backend realises a :class:`~labctl.lab.Lab` and hands out an :class:`~labctl.inventory.Inventory`:
everything the layers above need to reach the nodes over SSH. Nothing above ``backends/`` knows which
backend is in use.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import LabctlError
from labctl.inventory import Inventory
from labctl.lab import Lab
from labctl.links import SETTINGS, Impairment

Progress = Callable[[str], None]
Check = Callable[[Inventory], None]   # raises if the lab's nodes do not accept SSH
NodeScripts = Callable[[Mapping[str, str]], dict[str, str]]  # a root shell script per node -> its stdout


NOT_UP = "is not up: nothing to take down"  # what down() returns for a lab that is not up
NODE_NOT_UP = "lab is not up"  # the detail status() gives every node of a lab that is not up


class BackendError(LabctlError):
    """A backend could not do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class BackendOptions:
    """What the command line tells a backend; each backend takes what it needs from it."""

    inventory_file: Path | None = None   # --inventory FILE (the ssh backend's hosts)


@dataclass(frozen=True)
class NodeStatus:
    """What ``status`` reports for one node; ``up`` is None when only an SSH session can tell
    (the ssh backend's hosts): :func:`labctl.bringup.status` then opens one."""

    name: str
    role: str
    address: str
    up: bool | None
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
    ssh_timeout: float = 5.0   # seconds for a node to accept SSH in the check that ends `up`

    def __init__(self, lab: Lab, state_dir: Path) -> None:
        self.lab = lab
        self.state_dir = state_dir

    @classmethod
    def from_options(cls, lab: Lab, state_dir: Path, options: BackendOptions) -> Backend:
        """The backend for ``lab`` built from the command line's options (most need none)."""
        return cls(lab, state_dir)

    @abstractmethod
    def up(self, progress: Progress | None = None, check: Check | None = None) -> Inventory:
        """Bring every node up (idempotent) and return its inventory.

        ``check(inventory)`` is the SSH check made above the backends (:func:`labctl.bringup.up`
        passes it; :meth:`node_log` tells it why a node may not answer). The backend calls it once
        the nodes should accept SSH, before the lab counts as up: if it raises (or Ctrl-C comes), a
        lab this call built is removed again, as when ``up`` itself fails.
        """

    @abstractmethod
    def down(self, progress: Progress | None = None) -> str | None:
        """Remove everything this lab made; a lab that is not up is not an error.

        Returns None when the lab was taken down, or why there was nothing to do (the CLI says that
        one thing instead of "down")."""

    @abstractmethod
    def status(self) -> list[NodeStatus]:
        """Each node, up or not, without changing anything."""

    @abstractmethod
    def inventory(self) -> Inventory:
        """The running lab's hosts; raise :class:`LabNotUp` when it is not up."""

    def node_log(self, name: str) -> str:
        """The end of the node's SSH server log, if this backend keeps one ("" otherwise)."""
        return ""

    def guard_status(self) -> str | None:
        """The forwarding guard on this lab's bridges here (``labctl status`` prints it), ``missing: ...``
        when it should be there and is not; None where this backend puts no bridge on this machine or
        the lab is not up."""
        return None

    def clean(self, progress: Progress | None = None) -> list[str]:
        """Remove leftovers of a crashed run; return what was removed. Default: same as down."""
        self.down(progress)
        return []

    # --- link impairment (labctl.links): loss, delay, jitter, rate per node --------------------------

    shapes_over_ssh = False  # True: impair/link_reports run scripts on the nodes through ``run``

    def link_capabilities(self) -> LinkCapabilities:
        """Which settings this backend offers, by which mechanism; default: none."""
        return LinkCapabilities(missing=dict.fromkeys(SETTINGS, f"is not offered by the {self.name} backend"))

    def link_settings(self) -> dict[str, Impairment]:
        """What each node's link was last set to (a perfect link for every node by default)."""
        return {node.name: Impairment() for node in self.lab.nodes}

    def impair(self, wanted: Mapping[str, Impairment], run: NodeScripts | None = None) -> list[LinkReport]:
        """Make every node's link what ``wanted`` says (nodes left out: a perfect link); report them.

        ``run`` (from :mod:`labctl.impairment`) runs a root shell script on each node, for backends whose
        nodes are only reached over SSH.
        """
        self.link_capabilities().refuse_unsupported(wanted)
        raise BackendError(f"the {self.name} backend cannot impair links")

    def link_reports(self, run: NodeScripts | None = None) -> list[LinkReport]:
        """What is in force on each link, read back from where it was applied; empty if nothing can be."""
        return []
