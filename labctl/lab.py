"""The lab as plain data: subnet, nodes, roles and ports, loaded and validated from the lab file.

Nothing here creates anything; backends realise a :class:`Lab` (Mininet's topology/realisation split).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from labctl.errors import LabctlError
from labctl.links import Links, check_names, parse_links

DEFAULT_LAB_FILE = Path(__file__).resolve().parent.parent / "lab.yml"
MAX_CLIENTS = 200
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class LabError(LabctlError, ValueError):
    """The lab file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Ports:
    """Ports the node programs listen on."""

    tcp: int = 8080
    proto: int = 8081
    time: int = 37


@dataclass(frozen=True)
class Node:
    """One machine of the lab: the server or a client."""

    name: str
    role: str
    address: str


@dataclass(frozen=True)
class Lab:
    """A whole lab: one server, N clients on one isolated subnet."""

    name: str = "lab"
    subnet: str = "192.168.20.0/24"
    host_address: str = "192.168.20.1"
    server_address: str = "192.168.20.2"
    clients: int = 3
    ports: Ports = field(default_factory=Ports)
    vagrant: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    links: Links = ()         # loss/delay/jitter/rate per node (labctl.links), applied by up
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The server first, then client1..clientN on the addresses after the server's."""
        first = ipaddress.IPv4Address(self.server_address)
        nodes = [Node("server", "server", str(first))]
        nodes += [Node(f"client{i}", "client", str(first + i)) for i in range(1, self.clients + 1)]
        return tuple(nodes)

    @property
    def server(self) -> Node:
        return self.nodes[0]

    @property
    def client_nodes(self) -> tuple[Node, ...]:
        return self.nodes[1:]

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node named {name!r} in lab {self.name!r} "
                       f"(nodes: {', '.join(n.name for n in self.nodes)})")

    def with_clients(self, clients: int | None) -> Lab:
        """The same lab scaled to ``clients`` clients (None keeps the file's count)."""
        return self if clients is None else replace(self, clients=clients)


def validate(lab: Lab) -> None:
    """Raise :class:`LabError` unless the lab is consistent and isolated."""
    if not _NAME_RE.match(lab.name):
        raise LabError(f"lab name {lab.name!r}: use 1-8 lowercase letters/digits, starting with a letter "
                       "(it prefixes interface names, which Linux limits to 15 characters)")
    try:
        net = ipaddress.IPv4Network(lab.subnet)
        host = ipaddress.IPv4Address(lab.host_address)
        server = ipaddress.IPv4Address(lab.server_address)
    except ValueError as exc:
        raise LabError(f"lab {lab.name!r}: {exc}") from None
    if not net.is_private:
        raise LabError(f"subnet {net} is not a private range: a lab must never overlap real networks")
    if not 1 <= lab.clients <= MAX_CLIENTS:
        raise LabError(f"clients must be between 1 and {MAX_CLIENTS}, got {lab.clients}")
    last = server + lab.clients
    for what, addr in (("host_address", host), ("server_address", server), ("last client", last)):
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise LabError(f"{what} {addr} is not a usable address of {net}")
    if server <= host <= last:
        raise LabError(f"host_address {host} collides with a node address ({server}..{last})")
    ports = (lab.ports.tcp, lab.ports.proto, lab.ports.time)
    if any(not 0 <= p <= 65535 for p in ports) or lab.ports.tcp == lab.ports.proto:
        raise LabError(f"ports {ports}: each 1..65535 (time may be 0 = off), tcp and proto distinct")
    check_names(lab.links, [n.name for n in lab.nodes], lab.name)


def load_lab(path: str | Path | None = None, *, clients: int | None = None) -> Lab:
    """Read and validate a lab file (default: ``lab.yml`` beside the package)."""
    path = Path(path) if path else DEFAULT_LAB_FILE
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise LabError(f"lab file {path} not found") from None
    except yaml.YAMLError as exc:
        raise LabError(f"lab file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise LabError(f"lab file {path}: expected a mapping at the top level")
    known = {"name", "subnet", "host_address", "server_address", "clients", "ports", "vagrant", "links"}
    unknown = set(raw) - known
    if unknown:
        raise LabError(f"lab file {path}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    ports_raw = raw.get("ports") or {}
    if not isinstance(ports_raw, dict) or set(ports_raw) - {"tcp", "proto", "time"}:
        raise LabError(f"lab file {path}: ports takes tcp, proto and time")
    try:
        ports = Ports(**{k: int(v) for k, v in ports_raw.items()})
        fields = {k: str(raw[k]) for k in ("name", "subnet", "host_address", "server_address") if k in raw}
        count = int(raw.get("clients", 3)) if clients is None else clients
    except (TypeError, ValueError) as exc:
        raise LabError(f"lab file {path}: {exc}") from None
    links = parse_links(raw.get("links"), f"lab file {path}")
    return Lab(**fields, clients=count, ports=ports, vagrant=dict(raw.get("vagrant") or {}), links=links,
               source=path)
