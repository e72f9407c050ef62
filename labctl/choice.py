"""Which backend a command drives, when the user did not say: the lab that is running.

Order: ``--backend``, env ``LABCTL_BACKEND``, the lab file's ``backend:``, ``--inventory`` (ssh), then
what is running here — the lab's Vagrant machines, the embedded (namespace) lab, its containers — found
by the registry's cheap probes (:data:`labctl.backends.PROBES`), and otherwise the embedded default.
Two running labs of the same name share the lab's addresses: refuse rather than guess.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from labctl.backends import DEFAULT_BACKEND, PROBES, backend_names, default_state_root, probe
from labctl.errors import LabctlError
from labctl.lab import Lab


class BackendConflict(LabctlError):
    """More than one backend's lab is running on the same addresses."""


class UnknownBackend(LabctlError):
    """A backend name that is not registered."""


@dataclass(frozen=True)
class Choice:
    """The backend to use, why (one short phrase for the user), and its state root."""

    name: str
    why: str
    state_root: Path

    def line(self) -> str:
        return f"backend {self.name} ({self.why})"


def choose_backend(lab: Lab, *, flag: str | None = None, inventory_file: Path | None = None,
                   state_root: Path | None = None) -> Choice:
    """The backend for ``lab`` (see the module's docstring); ``state_root`` None: each backend's default."""
    def root(name: str) -> Path:
        return Path(state_root) if state_root is not None else default_state_root(name)

    def chosen(name: str, why: str) -> Choice:
        if name not in backend_names():
            known = ", ".join(backend_names())
            raise UnknownBackend(f"unknown backend {name!r} ({why}; choose from {known})")
        return Choice(name, why, root(name))

    if flag:
        return chosen(flag, "--backend")
    if os.environ.get("LABCTL_BACKEND"):
        return chosen(os.environ["LABCTL_BACKEND"], "LABCTL_BACKEND")
    if lab.backend:
        return chosen(lab.backend, f"backend: in {lab.source or 'the lab file'}")
    if inventory_file is not None:
        return chosen("ssh", "--inventory")
    running = {name: where for name in PROBES
               if (where := probe(name, lab, root(name) / lab.name)) is not None}
    if len(running) > 1:
        found = "; ".join(f"{name}: {where}" for name, where in running.items())
        raise BackendConflict(f"lab {lab.name} is running on more than one backend, on the same addresses "
                              f"({found}): take one down, or choose with --backend")
    if running:
        name, where = next(iter(running.items()))
        return chosen(name, f"found {where}")
    return chosen(DEFAULT_BACKEND, "the default: no lab running")
