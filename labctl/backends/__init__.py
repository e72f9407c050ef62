"""Backends realise a lab: ``netns`` (embedded default), ``vagrant`` (VMs), ``ssh`` (existing hosts),
``docker`` (containers)."""
from __future__ import annotations

import importlib
from pathlib import Path

from labctl.backends.base import Backend, BackendError
from labctl.lab import Lab

BACKENDS = {"netns": "labctl.backends.netns:NetnsBackend",
            "vagrant": "labctl.backends.vagrant:VagrantBackend",
            "ssh": "labctl.backends.ssh:SshBackend",
            "docker": "labctl.backends.docker:DockerBackend"}


def make_backend(name: str, lab: Lab, state_dir: Path, *, inventory_file: Path | None = None) -> Backend:
    """The backend called ``name``, imported only when asked for (keeps ``up`` fast)."""
    try:
        module_name, cls_name = BACKENDS[name].split(":")
    except KeyError:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    if name == "ssh":
        return cls(lab, state_dir, inventory_file=inventory_file)
    return cls(lab, state_dir)
