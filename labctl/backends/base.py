"""The backend interface (Kathará's manager shape): ``up``, ``down``, ``status``, ``inventory``.

A backend realises a :class:`~labctl.lab.Lab` and hands out an :class:`~labctl.inventory.Inventory`:
everything the layers above need to reach the nodes over SSH. Nothing above ``backends/`` knows which
backend is in use.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import LabctlError
from labctl.inventory import Inventory
from labctl.lab import Lab

Progress = Callable[[str], None]
Check = Callable[[Inventory], None]   # raises if the lab's nodes do not accept SSH


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
    def down(self, progress: Progress | None = None) -> None:
        """Remove everything this lab made; a lab that is not up is not an error."""

    @abstractmethod
    def status(self) -> list[NodeStatus]:
        """Each node, up or not, without changing anything."""

    @abstractmethod
    def inventory(self) -> Inventory:
        """The running lab's hosts; raise :class:`LabNotUp` when it is not up."""

    def node_log(self, name: str) -> str:
        """The end of the node's SSH server log, if this backend keeps one ("" otherwise)."""
        return ""

    def clean(self, progress: Progress | None = None) -> list[str]:
        """Remove leftovers of a crashed run; return what was removed. Default: same as down."""
        self.down(progress)
        return []
