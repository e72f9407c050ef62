"""The keys of an SSH connection: the host's pinned key (never another) and labctl's client key (0600)."""
from __future__ import annotations

import base64
import shlex
import stat
import sys
from pathlib import Path

sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]  # (see labctl/remote.py)

import paramiko  # noqa: E402

from labctl.inventory import Host  # noqa: E402
from labctl.remote_result import HostKeyError, RemoteError  # noqa: E402


def pinned_host_keys(host: Host) -> paramiko.HostKeys:
    """A known_hosts holding only ``host``'s pinned key, under the name paramiko will look it up by."""
    keys = paramiko.HostKeys()
    fields = host.host_key.split()
    if len(fields) < 2:
        raise HostKeyError(f"{host.name}: no pinned host key in the inventory; refusing to connect "
                           "(labctl never accepts an unknown host key)")
    try:
        key = paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
    except (ValueError, paramiko.SSHException) as exc:
        raise HostKeyError(f"{host.name}: pinned host key is not readable: {exc}") from None
    keys.add(host.known_hosts_name, key.get_name(), key)
    return keys


def load_private_key(path: Path) -> paramiko.PKey:
    """Load the client key, refusing one that others may read (it must be 0600)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RemoteError(f"private key {path} not found (is the lab up? run labctl up)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RemoteError(f"private key {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                          f"run: chmod 600 {shlex.quote(str(path))}")
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteError(f"private key {path}: {exc}") from None
