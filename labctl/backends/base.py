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


class BackendError(LabctlError):
    """A backend could not do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class BackendOptions:
    """What the command line tells a backend; each backend takes what it needs from it."""

    inventory_file: Path | None = None   # --inventory FILE (the ssh backend's hosts)


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

    @classmethod
    def from_options(cls, lab: Lab, state_dir: Path, options: BackendOptions) -> Backend:
        """The backend for ``lab`` built from the command line's options (most need none)."""
        return cls(lab, state_dir)

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
