"""What a container lab is made of, by name, and where its state lives.

``plan(lab, image, daemon)`` names everything the lab makes in the daemon: network ``labctl-LAB`` on
bridge ``LAB-dk`` (the route check's interface), containers ``LAB-server``, ``LAB-client1``, ... each
labelled ``labctl.lab=LAB``. The plan is written before anything is created, so ``down`` and ``clean``
find exactly what is theirs; once every node's host key is pinned it is written again, complete.

State directory (default ``~/.local/state/labctl/LAB/docker/``, see labctl.backends.default_state_root)::

    lab.json            the plan: daemon, network, bridge, image, nodes with pinned host keys
    id_ed25519{,.pub}   labctl's client key (0600); the public half is every node's authorized key
    known_hosts         the pinned host keys (for ``labctl ssh``)
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from labctl.backends.base import BackendError
from labctl.lab import Lab
from labctl.statefiles import write_file

LABEL = "labctl.lab"
NODE_LABEL = "labctl.node"
NODE_INTERFACE = "eth0"
PLAN_VERSION = 1


@dataclass(frozen=True)
class NodeSpec:
    """One node: its container and, once read over ``docker exec``, its pinned host key."""

    name: str
    role: str
    address: str
    container: str
    host_key: str = ""


@dataclass(frozen=True)
class DockerPlan:
    """Everything one container lab makes in one daemon."""

    lab: str
    daemon: str
    subnet: str
    host_address: str
    network: str
    bridge: str
    image: str
    nodes: tuple[NodeSpec, ...]
    complete: bool = False
    owner_pid: int = field(default=0, compare=False)

    def same_shape(self, other: DockerPlan) -> bool:
        """True when both plans make the same things (host keys and progress aside)."""
        def shape(p: DockerPlan) -> tuple:
            return (p.daemon, p.subnet, p.host_address, p.network, p.bridge, p.image,
                    tuple((n.name, n.role, n.address, n.container) for n in p.nodes))
        return shape(self) == shape(other)

    def pinned(self, host_keys: dict[str, str]) -> DockerPlan:
        """This plan, complete, with each node's host key."""
        nodes = tuple(replace(n, host_key=host_keys[n.name]) for n in self.nodes)
        return replace(self, nodes=nodes, complete=True, owner_pid=os.getpid())

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "version": PLAN_VERSION}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DockerPlan:
        data = json.loads(text)
        data.pop("version", None)
        data["nodes"] = tuple(NodeSpec(**n) for n in data["nodes"])
        return cls(**data)


def bridge_name(lab_name: str) -> str:
    """``LAB-dk``: at most 11 characters (lab names are at most 8)."""
    return f"{lab_name}-dk"


def plan(lab: Lab, image: str, daemon: str) -> DockerPlan:
    nodes = tuple(NodeSpec(n.name, n.role, n.address, f"{lab.name}-{n.name}") for n in lab.nodes)
    return DockerPlan(lab.name, daemon, lab.subnet, lab.host_address, f"labctl-{lab.name}",
                      bridge_name(lab.name), image, nodes)


class DockerState:
    """Paths inside one container lab's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def plan_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def read_plan(self) -> DockerPlan | None:
        """The plan, or None when this lab has none (never up, or down)."""
        try:
            text = self.plan_file.read_text()
        except FileNotFoundError:
            return None
        except PermissionError:
            raise BackendError(f"cannot read {self.plan_file}: run labctl as the user that brought the "
                               "lab up (or as root)") from None
        try:
            return DockerPlan.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackendError(f"{self.plan_file} is damaged ({exc}): labctl --backend docker clean "
                               "removes the lab's containers and network by label") from None

    def write_plan(self, lab_plan: DockerPlan) -> None:
        """Write the plan atomically (a crash leaves the old one or the new one, never half)."""
        write_file(self.plan_file, lab_plan.to_json())
        if lab_plan.complete:
            write_file(self.known_hosts, "".join(f"{n.address} {n.host_key}\n" for n in lab_plan.nodes),
                       0o644)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        parent = self.root.parent
        if parent.is_dir() and not any(parent.iterdir()):  # STATE/LAB held only this backend's directory
            parent.rmdir()
