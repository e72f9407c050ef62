"""What a namespace lab is made of, by name, and where its state lives.

``plan(lab)`` turns a :class:`~labctl.lab.Lab` into the exact names labctl will create (namespaces,
bridge, veths). The plan is written to ``STATE/manifest.json`` *before* anything is created, so
``down`` and ``clean`` remove exactly what is theirs, by name, even after a ``kill -9`` mid-``up``.

State directory (default ``/run/labctl/<lab>/``)::

    manifest.json               the plan: names, addresses, complete or not
    id_ed25519{,.pub}           labctl's client key (0600)
    authorized_keys             that key, for every node's sshd
    known_hosts                 every node's host key, pinned
    nodes/NAME/sshd_config      per node: config, host key, pid file, log,
    nodes/NAME/ssh_host_ed25519_key{,.pub}, sshd.pid, sshd.log
    nodes/NAME/root/, tmp/      the node's private /root and /tmp (bind-mounted for its sshd only)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labctl.backends.base import BackendError
from labctl.lab import Lab
from labctl.statefiles import write_file

IFNAMSIZ = 15  # longest Linux interface name
NODE_INTERFACE = "eth0"  # the namespace end of each veth, as users expect it
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class NodePlan:
    """One node: its namespace and the host end of its veth."""

    name: str
    role: str
    address: str
    netns: str
    veth: str


@dataclass(frozen=True)
class LabPlan:
    """Everything one lab creates on this machine, by name."""

    lab: str
    subnet: str
    host_address: str
    prefixlen: int
    bridge: str
    nodes: tuple[NodePlan, ...]
    complete: bool = False
    owner_pid: int = field(default=0, compare=False)

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise BackendError(f"no node named {name!r} in lab {self.lab!r} "
                           f"(nodes: {', '.join(n.name for n in self.nodes)})")

    def same_shape(self, other: LabPlan) -> bool:
        """True when both plans create the same things (ignoring progress and owner)."""
        return (self.subnet, self.host_address, self.bridge, self.nodes) == \
               (other.subnet, other.host_address, other.bridge, other.nodes)

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = MANIFEST_VERSION
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LabPlan:
        data = json.loads(text)
        data.pop("version", None)
        data["nodes"] = tuple(NodePlan(**n) for n in data["nodes"])
        return cls(**data)


def veth_name(lab: str, node: str) -> str:
    """Host end of a node's veth: ``lab-srv``, ``lab-c1`` .. ``lab-c200`` (<= 13 characters)."""
    tag = "srv" if node == "server" else "c" + node.removeprefix("client")
    return f"{lab}-{tag}"


def plan(lab: Lab) -> LabPlan:
    """The names ``lab`` will use: namespace ``lab-server``, bridge ``lab-br``, veth ``lab-c1``..."""
    nodes = tuple(NodePlan(n.name, n.role, n.address, f"{lab.name}-{n.name}", veth_name(lab.name, n.name))
                  for n in lab.nodes)
    bridge = f"{lab.name}-br"
    for name in [bridge, *(n.veth for n in nodes)]:
        if len(name) > IFNAMSIZ:  # lab.py limits names to 8 characters and 200 clients: cannot happen
            raise BackendError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    return LabPlan(lab.name, lab.subnet, lab.host_address, lab.prefixlen, bridge, nodes)


class StateDir:
    """Paths inside one lab's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def sshd_config(self, node: str) -> Path:
        return self.node_dir(node) / "sshd_config"

    def host_key(self, node: str) -> Path:
        return self.node_dir(node) / "ssh_host_ed25519_key"

    def pid_file(self, node: str) -> Path:
        return self.node_dir(node) / "sshd.pid"

    def log_file(self, node: str) -> Path:
        return self.node_dir(node) / "sshd.log"

    def node_root(self, node: str) -> Path:
        return self.node_dir(node) / "root"

    def node_tmp(self, node: str) -> Path:
        return self.node_dir(node) / "tmp"

    def read_plan(self) -> LabPlan | None:
        """The manifest, or None when this lab has none (never brought up, or fully down)."""
        try:
            text = self.manifest.read_text()
        except FileNotFoundError:
            return None
        except PermissionError:
            raise BackendError(f"cannot read {self.manifest}: the namespace lab needs root "
                               "(e.g. sudo .venv/bin/python labctl.py ...)") from None
        except OSError as exc:  # a state dir that is a file, a name too long, ...
            raise BackendError(f"cannot use the state directory {self.root}: {exc.strerror or exc} "
                               "(choose another with --state-dir)") from None
        try:
            return LabPlan.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackendError(f"{self.manifest} is damaged ({exc}); remove what it named by hand "
                               f"(ip netns list; ip link) and delete {self.root}") from None

    def write_plan(self, lab_plan: LabPlan) -> None:
        """Write the manifest atomically (a crash leaves the old one or the new one, never half)."""
        write_file(self.manifest, lab_plan.to_json())

    def read_pid(self, node: str) -> int | None:
        try:
            return int(self.pid_file(node).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log_tail(self, node: str, lines: int = 3) -> str:
        try:
            text = self.log_file(node).read_text(errors="replace")
        except OSError:
            return ""
        return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])
