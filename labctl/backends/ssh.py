"""The ``ssh`` backend: machines that already exist (real hosts, any VMs, containers), from an inventory file.

labctl does not create or remove these machines: ``up`` hands them out (the check above the backends
then opens an SSH session to each with its pinned key), ``down`` leaves them alone. Everything above the
backends works on them unchanged.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from labctl.backends.base import Backend, BackendError, BackendOptions, Check, NodeStatus, Progress
from labctl.backends.remote_links import RemoteLinks
from labctl.inventory import Inventory, load_inventory
from labctl.lab import Lab


class SshBackend(RemoteLinks, Backend):
    """Plain SSH hosts listed in an inventory file (``--inventory FILE``)."""

    name = "ssh"
    links_survive_down = True  # the hosts stay: `down` clears labctl's shaping on them first
    ssh_timeout = 10.0  # machines anywhere: a slower network than the embedded lab's

    def __init__(self, lab: Lab, state_dir: Path, *, inventory_file: Path | None = None) -> None:
        super().__init__(lab, state_dir)
        if inventory_file is None:
            raise BackendError("--backend ssh needs --inventory FILE (export one from a running lab with: "
                               "labctl inventory --format yaml > FILE, or write one, see docs/backends.md)")
        self.inventory_file = Path(inventory_file)

    @classmethod
    def from_options(cls, lab: Lab, state_dir: Path, options: BackendOptions) -> SshBackend:
        return cls(lab, state_dir, inventory_file=options.inventory_file)

    def inventory(self) -> Inventory:
        """The hosts of the inventory file (whatever backend wrote it, this one serves it now)."""
        return replace(load_inventory(self.inventory_file, self.lab), backend=self.name)

    def up(self, progress: Progress | None = None, check: Check | None = None) -> Inventory:
        """The hosts are not ours to start: ``check`` that each accepts SSH with its pinned key."""
        inventory = self.inventory()
        if progress:
            progress(f"{len(inventory)} SSH hosts from {self.inventory_file} (labctl does not start them)")
        if check:
            check(inventory)
        return inventory

    def down(self, progress: Progress | None = None) -> str | None:
        """Nothing to remove: labctl did not make these machines (labctl.impairment clears their links)."""
        return f"the ssh backend does not manage its hosts; nothing to stop ({self.inventory_file})"

    def status(self) -> list[NodeStatus]:
        """Only an SSH session can tell whether these hosts are up: ``up`` is None, labctl.bringup asks."""
        return [NodeStatus(h.name, h.role, h.address, None, f"{h.user}@{h.address}:{h.port}")
                for h in self.inventory().hosts]
