"""The lab as plain data: subnet, nodes, roles, ports and programs, loaded and validated from the lab file.

Nothing here creates anything; backends realise a :class:`Lab` (Mininet's topology/realisation split).

A lab file is a YAML mapping of sections. Each section has one small parser in :data:`SECTIONS` that
turns its value into fields of :class:`Lab`; :func:`validate` then checks the whole lab. A new section
(say ``links:``) is a parser added to the table and a field added to :class:`Lab`.
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from labctl.errors import LabctlError
from labctl.links import LinkError, Links, check_names, parse_links
from labctl.programs import ProgramError, ProgramSpec, parse_section

DEFAULT_LAB_FILE = Path(__file__).resolve().parent.parent / "lab.yml"
MAX_CLIENTS = 200
MAX_FILE_BYTES = 1 << 20
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
# A lab subnet lies inside RFC 1918 (what Python calls "private" also takes in loopback, link-local,
# 0.0.0.0/8 and documentation ranges, and changed between versions). The ranges a careless choice is
# likely to hit are named, so the message says why.
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
SPECIAL_RANGES = tuple((ipaddress.IPv4Network(n), what) for n, what in (
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (on a cloud machine the instance metadata answers on 169.254.169.254)"),
    ("0.0.0.0/8", "'this network' (0.0.0.0/8): no host may use it"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
    ("100.64.0.0/10", "carrier-grade NAT space (100.64.0.0/10: providers, VPNs such as Tailscale)"),
))


class LabError(LabctlError, ValueError):
    """The lab file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Ports:
    """Ports the node programs listen on (``tcp`` serves TCP and UDP time; ``time`` 0 = RFC 868 off)."""

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
    backend: str | None = None  # netns, vagrant, docker or ssh: which backend drives it (labctl.choice)
    programs: dict[str, ProgramSpec] = field(default_factory=dict, compare=False, hash=False)
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


# --- validation: the lab as a whole --------------------------------------------------------------------

def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(key: str, value: object) -> str:
    if isinstance(value, str) and value:
        return value
    hint = " (YAML reads yes/no/on/off as true/false: quote it)" if isinstance(value, bool) else ""
    raise LabError(f"{key}: expected text, got {value!r}{hint}")


def validate(lab: Lab) -> None:
    """Raise :class:`LabError` unless the lab is consistent and isolated."""
    if not _NAME_RE.match(_text("name", lab.name)):
        raise LabError(f"lab name {lab.name!r}: use 1-8 lowercase letters/digits, starting with a letter "
                       "(it prefixes interface names, which Linux limits to 15 characters)")
    if not _whole(lab.clients):
        raise LabError(f"clients must be a whole number, got {lab.clients!r}")
    if not 1 <= lab.clients <= MAX_CLIENTS:
        raise LabError(f"clients must be between 1 and {MAX_CLIENTS}, got {lab.clients}")
    net = _subnet(lab)
    _addresses(lab, net)
    _ports(lab.ports)
    try:
        check_names(lab.links, [n.name for n in lab.nodes], lab.name)
    except LinkError as exc:
        raise LabError(str(exc)) from None


def _subnet(lab: Lab) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(_text("subnet", lab.subnet))
    except ValueError as exc:
        raise LabError(f"subnet: {exc}") from None
    for special, what in SPECIAL_RANGES:
        if net.overlaps(special):
            verb = "is" if net.subnet_of(special) else "includes"
            raise LabError(f"subnet {net} {verb} {what}: a lab needs a private range of its own")
    if not any(net.subnet_of(private) for private in PRIVATE_RANGES):
        raise LabError(f"subnet {net} is not a private range: a lab must never overlap real networks "
                       "(use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)")
    usable, needed = max(net.num_addresses - 2, 0), lab.clients + 2
    if usable < needed:
        raise LabError(f"subnet {net} has {usable} usable addresses; the host, the server and "
                       f"{lab.clients} client{'s' if lab.clients != 1 else ''} need {needed}")
    return net


def _addresses(lab: Lab, net: ipaddress.IPv4Network) -> None:
    try:
        host = ipaddress.IPv4Address(_text("host_address", lab.host_address))
        server = ipaddress.IPv4Address(_text("server_address", lab.server_address))
    except ValueError as exc:
        raise LabError(str(exc)) from None
    last = server + lab.clients
    for what, addr in (("host_address", host), ("server_address", server), ("last client", last)):
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise LabError(f"{what} {addr} is not a usable address of {net}")
    if server <= host <= last:
        raise LabError(f"host_address {host} collides with a node address ({server}..{last})")


def _ports(ports: Ports) -> None:
    named = {"tcp": ports.tcp, "proto": ports.proto, "time": ports.time}
    for key, port in named.items():
        lowest = 0 if key == "time" else 1
        if not _whole(port) or not lowest <= port <= 65535:
            off = " 0 (off) or" if key == "time" else ""
            raise LabError(f"ports: {key} must be{off} a port number 1..65535, got {port!r}")
    used = [(key, port) for key, port in named.items() if port]  # tcp serves TCP and UDP, time both too
    for i, (key, port) in enumerate(used):
        for other, other_port in used[i + 1:]:
            if port == other_port:
                raise LabError(f"ports: {key} and {other} are both {port}: each server needs its own port")


# --- the lab file's sections: one parser each -----------------------------------------------------------

Section = Callable[[str, Any], dict[str, Any]]   # (key, value in the file) -> fields of Lab


def _as_is(key: str, value: Any) -> dict[str, Any]:
    """A scalar setting; its type and range are checked by :func:`validate`."""
    return {key: value}


def _ports_section(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    names = {"tcp", "proto", "time"}
    if not isinstance(value, dict) or not set(value) <= names:
        raise LabError(f"{key} takes tcp, proto and time, e.g. ports: {{tcp: 8080, proto: 8081, time: 37}}")
    return {key: Ports(**value)}


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LabError(f"{key}: expected settings (name: value), got {value!r}")
    return {key: dict(value)}


def _links_section(key: str, value: Any) -> dict[str, Any]:
    try:
        return {key: parse_links(value, "")}
    except LinkError as exc:
        raise LabError(str(exc)) from None


def _backend_section(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, str) or not value.isidentifier():
        raise LabError(f"{key}: a backend's name, e.g. backend: vagrant (got {value!r})")
    return {key: value}


def _programs_section(key: str, value: Any) -> dict[str, Any]:
    """Servers and clients of the user's own (labctl.programs holds their parsing and checks)."""
    try:
        return {key: parse_section(value)}
    except ProgramError as exc:
        raise LabError(str(exc)) from None


SECTIONS: dict[str, Section] = {
    "name": _as_is,
    "subnet": _as_is,
    "host_address": _as_is,
    "server_address": _as_is,
    "clients": _as_is,
    "ports": _ports_section,
    "vagrant": _mapping,
    "links": _links_section,
    "backend": _backend_section,
    "programs": _programs_section,
}
REQUIRED = ("name",)


def load_lab(path: str | Path | None = None, *, clients: int | None = None) -> Lab:
    """Read and validate a lab file (default: ``lab.yml`` beside the package); ``clients`` overrides."""
    path = Path(path) if path else DEFAULT_LAB_FILE
    raw = read_lab_file(path)
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise LabError(f"lab file {path} has no {missing[0] + ':'!r}: a lab file must name its lab "
                       "(e.g. name: mylab), so that no command reaches another lab")
    try:
        unknown = [key for key in raw if key not in SECTIONS]
        if unknown:
            raise LabError(f"unknown setting {str(unknown[0])!r} (known: {', '.join(sorted(SECTIONS))})")
        fields: dict[str, Any] = {}
        for key, value in raw.items():
            fields.update(SECTIONS[key](key, value))
        lab = Lab(**fields, source=path)
    except LabError as exc:
        raise LabError(f"lab file {path}: {exc}") from None
    return lab.with_clients(clients)


# --- reading the file -------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key set twice (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:   # unhashable: the base class says so
                break
            if twice:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is set twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_lab_file(path: Path) -> dict:
    """The lab file's top-level mapping; any other content is a :class:`LabError` naming the file."""
    text = _read_text(path)
    if not text.strip():
        raise LabError(f"lab file {path} is empty: a lab file must at least name its lab (name: mylab)")
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise LabError(f"lab file {path}{_yaml_problem(exc)}") from None
    if raw is None:
        raise LabError(f"lab file {path} has no settings (only comments?): a lab file must at least "
                       "name its lab (name: mylab)")
    if not isinstance(raw, dict):
        raise LabError(f"lab file {path}: expected settings (key: value) at the top level, "
                       f"got a {'list' if isinstance(raw, list) else type(raw).__name__}")
    return raw


def _read_text(path: Path) -> str:
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise LabError(f"lab file {path} is a directory: --lab takes a lab file, e.g. lab.yml")
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a device never end
            raise LabError(f"lab file {path} is not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise LabError(f"lab file {path} not found") from None
    except PermissionError:
        raise LabError(f"cannot read lab file {path}: permission denied") from None
    except OSError as exc:
        raise LabError(f"cannot read lab file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise LabError(f"lab file {path} is larger than 1 MiB: not a lab file")
    if b"\0" in data:
        raise LabError(f"lab file {path} is a binary file, not a lab file (YAML text, saved as UTF-8)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabError(f"lab file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                       f"{exc.start}): save it as UTF-8") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where, and what PyYAML found wrong."""
    if isinstance(exc, yaml.reader.ReaderError):
        return (f": not valid YAML: character #x{exc.character:04x} at offset {exc.position} "
                "is not allowed")
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}: not valid YAML: {' '.join(str(problem).split())}"
