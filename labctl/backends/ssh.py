"""The ``ssh`` backend: machines that already exist (real hosts, any VMs, containers), from an inventory file.

labctl does not create or remove these machines: ``up`` checks that every host answers over SSH with
its pinned key, ``down`` leaves them alone. Everything above the backends works on them unchanged.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from labctl.backends.base import Backend, BackendError, Inventory, NodeStatus, Progress
from labctl.backends.remote_links import RemoteLinks
from labctl.inventory_file import load_inventory
from labctl.lab import Lab

PROBE_TIMEOUT = 10.0


class SshBackend(RemoteLinks, Backend):
    """Plain SSH hosts listed in an inventory file (``--inventory FILE``)."""

    name = "ssh"

    def __init__(self, lab: Lab, state_dir: Path, *, inventory_file: Path | None = None) -> None:
        super().__init__(lab, state_dir)
        if inventory_file is None:
            raise BackendError("--backend ssh needs --inventory FILE (export one from a running lab with: "
                               "labctl inventory --format yaml > FILE, or write one, see docs/backends.md)")
        self.inventory_file = Path(inventory_file)

    def inventory(self) -> Inventory:
        """The hosts of the inventory file (whatever backend wrote it, this one serves it now)."""
        return replace(load_inventory(self.inventory_file, self.lab), backend=self.name)

    def _probe(self, inventory: Inventory) -> tuple[dict[str, str], dict[str, BaseException]]:
        """Run ``uname -n`` on every host at once: (answers, failures) per host name."""
        from labctl.remote import Group

        # check_route=False: each connection checks its own route, so one bad host is one failure
        with Group(inventory.hosts, connect_timeout=PROBE_TIMEOUT, check_route=False) as group:
            outcome = group.map(lambda c: c.run(["uname", "-n"], timeout=PROBE_TIMEOUT).stdout.strip())
        return outcome.results, outcome.failures

    def up(self, progress: Progress | None = None) -> Inventory:
        """The hosts are not ours to start: check each answers with its pinned key, then hand them out."""
        inventory = self.inventory()
        if progress:
            progress(f"checking {len(inventory)} SSH hosts from {self.inventory_file}")
        _, failures = self._probe(inventory)
        if failures:
            lines = "; ".join(f"{name}: {exc}" for name, exc in failures.items())
            raise BackendError(f"{len(failures)} of {len(inventory)} hosts are not reachable: {lines}")
        self._links_on_up(inventory)  # probe each host's tc (netem), apply the lab file's links:
        return inventory

    def down(self, progress: Progress | None = None) -> None:
        """Nothing to stop (labctl did not make these machines); only the tc shaping labctl put there goes."""
        self._links_down(progress)
        if progress:
            progress(f"the ssh backend does not manage its hosts; nothing to stop ({self.inventory_file})")

    def status(self) -> list[NodeStatus]:
        inventory = self.inventory()
        answers, failures = self._probe(inventory)
        return [NodeStatus(h.name, h.role, h.address, h.name in answers,
                           f"{h.user}@{h.address}:{h.port}" + (f" ({answers[h.name]})" if h.name in answers
                                                                 else f": {failures.get(h.name)}"))
                for h in inventory.hosts]
