"""Backends realise a lab. One registry: a backend's name and where its class is.

``netns`` (the embedded default), ``vagrant`` (VMs), ``docker`` (containers), ``ssh`` (existing hosts).
Each is imported only when asked for, so the CLI can offer the names without loading any backend
(keeps start-up fast); each class builds itself from the options
(:meth:`~labctl.backends.base.Backend.from_options`). A new backend is one line here and one class.
"""
from __future__ import annotations

import importlib
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


def backend_names() -> tuple[str, ...]:
    """The registered backends' names, without importing any of them."""
    return tuple(BACKENDS)


def make_backend(name: str, lab: Lab, state_dir: Path, **options: Any) -> Backend:
    """The backend called ``name`` for ``lab``, built from ``options`` (see ``BackendOptions``)."""
    from labctl.backends.base import BackendError, BackendOptions

    try:
        module_name, cls_name = BACKENDS[name].split(":")
    except KeyError:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_options(lab, state_dir, BackendOptions(**options))
