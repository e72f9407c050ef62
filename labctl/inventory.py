"""The lab's hosts as the layers above the backends see them, and the inventory file that holds them.

:class:`Host` and :class:`Inventory` are what every backend hands out and what the remote layer, the
exercise's steps and the CLI work with. The inventory file is the same data as YAML (or JSON), with one
serializer for both: ``labctl inventory --format yaml``/``json`` and ``labctl up --json`` write it for
the running lab, and ``labctl --backend ssh --inventory FILE`` reads it back, for those nodes or for any
machines at all::

    hosts:
      - name: server
        role: server                # exactly one server; the others are clients
        address: 192.168.20.2       # the lab address: what clients dial and tcpdump sees
        port: 22
        user: root                  # a non-root user needs passwordless sudo
        key: /run/labctl/lab/id_ed25519      # private key, mode 0600 (relative: to this file)
        host_key: ssh-ed25519 AAAAC3Nza...   # the node's pinned host key ...
        # known_hosts: ~/.ssh/known_hosts    # ... or a known_hosts file that lists it
        interface: lab-br           # optional: the bridge `ip route get ADDRESS` must leave by
        host_address: 192.168.20.1  # optional: this machine's lab address, the route's source (checked
                                    # where `ip` is missing or no interface is given: macOS, Windows)
        lab_interface: eth0         # optional: the node's own lab interface (where tcpdump listens)

A host without a host key is refused: labctl never trusts a key it has not been given.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labctl.errors import LabctlError
from labctl.lab import Lab

FORMATS = ("yaml", "json")
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                  "ssh-rsa")
REQUIRED = ("name", "role", "address", "key")
OPTIONAL = ("port", "user", "host_key", "known_hosts", "interface", "lab_interface", "host_address")
TOP_LEVEL = ("hosts", "lab", "backend")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


class InventoryError(LabctlError, ValueError):
    """The inventory file is missing or malformed, names a host labctl cannot trust, or no such node."""


class LabNotUp(LabctlError):
    """The lab (or the node asked for) is not running."""


@dataclass(frozen=True)
class Host:
    """One node as the remote layer sees it (in the inventory file, ``key_file`` is written ``key``)."""

    name: str
    role: str                 # "server" or "client"
    address: str              # the lab address (what clients dial, what tcpdump sees)
    port: int = 22
    user: str = "root"
    key_file: Path | None = None        # private key, mode 0600
    host_key: str = ""                  # pinned public host key, OpenSSH line "ssh-ed25519 AAAA..."
    interface: str | None = None        # the lab's bridge on this machine: `ip route get` must leave by it
    lab_interface: str = "eth0"         # the node's own lab interface (where tcpdump listens)
    host_address: str | None = None     # this machine's lab address: the route's source must be it

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts files name this host: ``ADDRESS``, or ``[ADDRESS]:PORT`` off port 22."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


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
        raise InventoryError(f"no node named {name!r} (nodes: {', '.join(h.name for h in self.hosts)})")

    @property
    def server(self) -> Host:
        servers = [h for h in self.hosts if h.role == "server"]
        if len(servers) != 1:
            raise InventoryError(f"the inventory must have exactly one server, it has {len(servers)}")
        return servers[0]

    @property
    def clients(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == "client")


def load_inventory(path: str | Path, lab: Lab | None = None, *, check_keys: bool = True) -> Inventory:
    """Read and validate an inventory file; relative paths in it are taken from the file's directory.

    ``check_keys`` also checks that each private key exists and is private (0600).
    """
    path = Path(path)
    text = _read_inventory_text(path)
    try:
        raw = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1} column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise InventoryError(f"inventory file {path} is not valid YAML{where}: {problem}") from None
    return parse_inventory(raw, base_dir=path.resolve().parent, lab=lab, where=str(path),
                           check_keys=check_keys)


MAX_INVENTORY_BYTES = 4 << 20  # 200 hosts take ~100 KiB; more is not an inventory


def _read_inventory_text(path: Path) -> str:
    """The file as text: a directory, a device (/dev/zero never ends), a FIFO, binary or huge: one line."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise InventoryError(f"inventory file {path} is a directory: --inventory takes a file")
        if not stat.S_ISREG(info.st_mode):
            raise InventoryError(f"inventory file {path} is not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_INVENTORY_BYTES + 1)
    except FileNotFoundError:
        raise InventoryError(f"inventory file {path} not found (write one with: "
                             "labctl inventory --format yaml > FILE)") from None
    except OSError as exc:
        raise InventoryError(f"inventory file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_INVENTORY_BYTES:
        raise InventoryError(f"inventory file {path} is larger than {MAX_INVENTORY_BYTES >> 20} MiB: "
                             "not an inventory")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"inventory file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                             f"offset {exc.start})") from None


def parse_inventory(raw: Any, *, base_dir: Path, lab: Lab | None = None, where: str = "inventory",
                    check_keys: bool = True) -> Inventory:
    """Validate the parsed document ``raw`` and build the :class:`Inventory` it describes."""
    if not isinstance(raw, dict):
        raise InventoryError(f"{where}: expected a mapping with a 'hosts' list at the top level")
    unknown = set(raw) - set(TOP_LEVEL)
    if unknown:
        raise InventoryError(f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(TOP_LEVEL)})")
    entries = raw.get("hosts")
    if not isinstance(entries, list) or not entries:
        raise InventoryError(f"{where}: 'hosts' must be a non-empty list of hosts")
    hosts = [_parse_host(entry, i, base_dir, f"{where}: host {i + 1}", check_keys)
             for i, entry in enumerate(entries)]
    _check_unique(hosts, where)
    servers = [h.name for h in hosts if h.role == "server"]
    if len(servers) != 1:
        raise InventoryError(f"{where}: exactly one host must have role: server (found {len(servers)})")
    if not any(h.role == "client" for h in hosts):
        raise InventoryError(f"{where}: at least one host must have role: client")
    return Inventory(backend=str(raw.get("backend") or "ssh"), hosts=tuple(hosts), lab=lab)


def _parse_host(entry: Any, index: int, base_dir: Path, where: str, check_keys: bool) -> Host:
    if not isinstance(entry, dict):
        raise InventoryError(f"{where}: expected a mapping with {', '.join(REQUIRED)}")
    if isinstance(entry.get("name"), str):
        where = f"{where.rsplit(': host', 1)[0]}: host {entry['name']!r}"
    unknown = set(entry) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise InventoryError(f"{where}: unknown keys {sorted(unknown)} "
                             f"(known: {', '.join(REQUIRED + OPTIONAL)})")
    missing = [k for k in REQUIRED if entry.get(k) in (None, "")]
    if missing:
        raise InventoryError(f"{where}: missing {', '.join(missing)}")
    name = str(entry["name"])
    if not _NAME_RE.match(name):
        raise InventoryError(f"{where}: name {name!r}: use letters, digits, '-', '_' or '.', "
                             "starting with a letter")
    role = str(entry["role"])
    if role not in ("server", "client"):
        raise InventoryError(f"{where}: role {role!r}: use server or client")
    try:
        address = str(ipaddress.ip_address(str(entry["address"])))
    except ValueError:
        raise InventoryError(f"{where}: address {entry['address']!r} is not an IP address "
                             "(use the node's lab address, not a host name)") from None
    port = entry.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InventoryError(f"{where}: port {port!r}: use a number 1..65535")
    user = str(entry.get("user") or "root")
    if not _USER_RE.match(user):
        raise InventoryError(f"{where}: user {user!r} is not a valid user name")
    key_file = _resolve(entry["key"], base_dir)
    if check_keys:
        _check_private_key(key_file, where)
    host_key = _host_key(entry, address, port, base_dir, where)
    interface = entry.get("interface")
    lab_interface = str(entry.get("lab_interface") or "eth0")
    for what, value in (("interface", interface), ("lab_interface", lab_interface)):
        if value is not None and not _IFNAME_RE.match(str(value)):
            raise InventoryError(f"{where}: {what} {value!r} is not an interface name")
    host_address = entry.get("host_address")
    if host_address is not None:
        try:
            host_address = str(ipaddress.ip_address(str(host_address)))
        except ValueError:
            raise InventoryError(f"{where}: host_address {host_address!r} is not an IP address "
                                 "(this machine's address on the lab network)") from None
    return Host(name=name, role=role, address=address, port=port, user=user, key_file=key_file,
                host_key=host_key, interface=str(interface) if interface else None,
                lab_interface=lab_interface, host_address=host_address)


def _resolve(value: Any, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else base_dir / path


def _check_private_key(path: Path, where: str) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InventoryError(f"{where}: private key {path} not found") from None
    if not stat.S_ISREG(mode):
        raise InventoryError(f"{where}: private key {path} is not a file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InventoryError(f"{where}: private key {path} is readable by others "
                             f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")


def _host_key(entry: dict, address: str, port: int, base_dir: Path, where: str) -> str:
    """The pinned host key line: given inline, or looked up in a known_hosts file."""
    inline, known_hosts = entry.get("host_key"), entry.get("known_hosts")
    if inline and known_hosts:
        raise InventoryError(f"{where}: give host_key or known_hosts, not both")
    if not inline and not known_hosts:
        raise InventoryError(
            f"{where}: no host key: labctl refuses hosts whose key it does not know. Add "
            f"host_key: (the line of /etc/ssh/ssh_host_ed25519_key.pub on {address}, read over a "
            "channel you trust) or known_hosts: FILE")
    if inline:
        return check_host_key(str(inline), where)
    path = _resolve(known_hosts, base_dir)
    line = known_hosts_lookup(path, address, port, where)
    return check_host_key(line, where)


def check_host_key(line: str, where: str = "host key") -> str:
    """Validate an OpenSSH public key line (``TYPE BASE64 [comment]``); return ``TYPE BASE64``."""
    fields = line.split()
    if len(fields) < 2 or fields[0] not in HOST_KEY_TYPES:
        raise InventoryError(f"{where}: host_key {line[:40]!r}... is not an OpenSSH public key line "
                             f"(expected one of {', '.join(HOST_KEY_TYPES)} then base64)")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise InventoryError(f"{where}: host_key: the key is not valid base64") from None
    if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")] != fields[0].encode():
        raise InventoryError(f"{where}: host_key: the key data does not match its type {fields[0]}")
    return f"{fields[0]} {fields[1]}"


def known_hosts_lookup(path: Path, address: str, port: int, where: str = "known_hosts") -> str:
    """The best key (ed25519 first) for ``address`` (``[address]:port`` if not 22) in a known_hosts file."""
    import paramiko

    try:
        keys = paramiko.HostKeys(str(path))
    except FileNotFoundError:
        raise InventoryError(f"{where}: known_hosts file {path} not found") from None
    except (OSError, paramiko.SSHException) as exc:
        raise InventoryError(f"{where}: known_hosts file {path}: {exc}") from None
    lookup = Host("", "", address, port).known_hosts_name
    found = keys.lookup(lookup)
    if not found:
        raise InventoryError(f"{where}: {path} has no key for {lookup}; labctl refuses hosts whose key "
                             "it does not know (add it with ssh-keyscan after checking its fingerprint)")
    for kind in HOST_KEY_TYPES:
        if kind in found:
            return f"{kind} {found[kind].get_base64()}"
    kind = next(iter(found.keys()))
    return f"{kind} {found[kind].get_base64()}"


def _check_unique(hosts: list[Host], where: str) -> None:
    seen_names: set[str] = set()
    seen_endpoints: dict[tuple[str, int], str] = {}
    for host in hosts:
        if host.name in seen_names:
            raise InventoryError(f"{where}: host name {host.name!r} appears twice")
        seen_names.add(host.name)
        endpoint = (host.address, host.port)
        if endpoint in seen_endpoints:
            raise InventoryError(f"{where}: {host.name!r} and {seen_endpoints[endpoint]!r} have the same "
                                 f"address and port {host.address}:{host.port}")
        seen_endpoints[endpoint] = host.name


def known_hosts_text(hosts: Iterable[Host]) -> str:
    """A known_hosts file naming exactly the pinned keys of ``hosts`` (for the system ssh client)."""
    return "".join(f"{h.known_hosts_name} {h.host_key}\n" for h in hosts if h.host_key)


def inventory_document(inventory: Inventory) -> dict[str, Any]:
    """The inventory as plain data, in the file format (keys and host keys inline, paths absolute)."""
    doc: dict[str, Any] = {}
    if inventory.lab is not None:
        doc["lab"] = inventory.lab.name
    doc["backend"] = inventory.backend
    hosts = []
    for h in inventory.hosts:
        key = str(Path(h.key_file).resolve()) if h.key_file else None
        entry: dict[str, Any] = {"name": h.name, "role": h.role, "address": h.address, "port": h.port,
                                 "user": h.user, "key": key, "host_key": h.host_key}
        if h.interface:
            entry["interface"] = h.interface
        entry["lab_interface"] = h.lab_interface
        if h.host_address:
            entry["host_address"] = h.host_address
        hosts.append(entry)
    doc["hosts"] = hosts
    return doc


def dump_inventory(inventory: Inventory, fmt: str = "yaml") -> str:
    """The inventory file's text, in ``fmt`` (yaml or json)."""
    doc = inventory_document(inventory)
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt != "yaml":
        raise InventoryError(f"unknown inventory format {fmt!r} (choose from {', '.join(FORMATS)})")
    header = ("# labctl inventory: how to reach each node over SSH (host keys pinned).\n"
              "# Use it with: labctl --backend ssh --inventory THIS_FILE run tcp\n")
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)


def write_inventory(inventory: Inventory, path: str | Path, fmt: str | None = None) -> Path:
    """Write the inventory to ``path`` (format from the suffix unless given); return the path."""
    path = Path(path)
    fmt = fmt or ("json" if path.suffix == ".json" else "yaml")
    text = dump_inventory(inventory, fmt)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
