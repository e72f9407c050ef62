"""Backends realise a lab. One registry: a backend's name and where its class is.

``netns`` (the embedded default), ``vagrant`` (VMs), ``docker`` (containers), ``ssh`` (existing hosts).
Each is imported only when asked for, so the CLI can offer the names without loading any backend
(keeps start-up fast); each class builds itself from the options
(:meth:`~labctl.backends.base.Backend.from_options`). A new backend is one line here and one class.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labctl.backends.base import Backend
    from labctl.lab import Lab

BACKENDS: dict[str, str] = {
    "netns": "labctl.backends.netns:NetnsBackend",
    "vagrant": "labctl.backends.vagrant:VagrantBackend",
    "ssh": "labctl.backends.ssh:SshBackend",
    "docker": "labctl.backends.docker:DockerBackend",
}
DEFAULT_BACKEND = "netns"
# "is this backend's lab running here?" (labctl.backends.running: file checks only, microseconds each),
# in the order the automatic choice tries them; ssh has none (its hosts are the user's, not ours)
PROBES: dict[str, str] = {
    "vagrant": "labctl.backends.running:vagrant_running",
    "netns": "labctl.backends.running:netns_running",
    "docker": "labctl.backends.running:docker_running",
}
NEEDS_ROOT = frozenset({"netns"})  # its state lives in /run/labctl; the others' in a per-user directory
SYSTEM_STATE_ROOT = Path("/run/labctl")


def backend_names() -> tuple[str, ...]:
    """The registered backends' names, without importing any of them."""
    return tuple(BACKENDS)


def user_state_root() -> Path:
    """The per-user state directory: $XDG_STATE_HOME/labctl, ~/.local/state/labctl, or on Windows
    %LOCALAPPDATA%\\labctl."""
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "labctl"
    base = os.environ.get("XDG_STATE_HOME")
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state") / "labctl"


def default_state_root(name: str) -> Path:
    """Where backend ``name`` keeps its labs' state unless told: env LABCTL_STATE, else /run/labctl for
    the root-only namespace lab, else :func:`user_state_root` (the Vagrantfile agrees)."""
    if os.environ.get("LABCTL_STATE"):
        return Path(os.environ["LABCTL_STATE"])
    return SYSTEM_STATE_ROOT if name in NEEDS_ROOT else user_state_root()


def probe(name: str, lab: Lab, state_dir: Path) -> str | None:
    """Backend ``name``'s cheap probe: where it sees ``lab`` running, or None (no probe: None)."""
    if name not in PROBES:
        return None
    module_name, func_name = PROBES[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)(lab, state_dir)


def make_backend(name: str, lab: Lab, state_dir: Path, **options: Any) -> Backend:
    """The backend called ``name`` for ``lab``, built from ``options`` (see ``BackendOptions``)."""
    from labctl.backends.base import BackendError, BackendOptions

    try:
        module_name, cls_name = BACKENDS[name].split(":")
    except KeyError:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_options(lab, state_dir, BackendOptions(**options))
