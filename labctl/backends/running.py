"""Cheap "is this backend's lab running here?" probes, one per backend, for choosing the backend.

Each probe only looks at files (no subprocess, no daemon, no ``vagrant status``): it runs on every
command, so it must cost microseconds. Each answers with where it found the lab (a path to quote to
the user), or None.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labctl.lab import Lab

NETNS_RUN_DIR = Path("/run/netns")
PROJECT_DIR = Path(__file__).resolve().parents[2]  # where the Vagrantfile is


def vagrant_dotfile(lab: Lab, state_dir: Path, project_dir: Path = PROJECT_DIR) -> Path:
    """Where Vagrant keeps this lab's machines: VAGRANT_DOTFILE_PATH, else the project's ``.vagrant``
    for the project's own lab.yml, else the lab's state directory (another lab: other machines)."""
    from labctl.lab import DEFAULT_LAB_FILE

    if os.environ.get("VAGRANT_DOTFILE_PATH"):
        return Path(os.environ["VAGRANT_DOTFILE_PATH"])
    if lab.source is None or Path(lab.source).resolve() == DEFAULT_LAB_FILE.resolve():
        return Path(project_dir) / ".vagrant"
    return Path(state_dir) / "vagrant" / "dotfile"


def vagrant_machines(lab: Lab, state_dir: Path) -> dict[str, str]:
    """{machine: provider} of the lab's nodes that Vagrant has created (``machines/NAME/PROVIDER/id``)."""
    found = {}
    machines = vagrant_dotfile(lab, state_dir) / "machines"
    for node in lab.nodes:
        try:
            providers = [p for p in (machines / node.name).iterdir() if (p / "id").is_file()]
        except OSError:
            continue
        if providers:
            found[node.name] = providers[0].name
    return found


def vagrant_running(lab: Lab, state_dir: Path) -> str | None:
    """The dotfile directory if Vagrant has created any of the lab's machines."""
    machines = vagrant_machines(lab, state_dir)
    if not machines:
        return None
    providers = sorted(set(machines.values()))
    return f"{len(machines)} Vagrant machines ({', '.join(providers)}) in {vagrant_dotfile(lab, state_dir)}"


def netns_running(lab: Lab, state_dir: Path) -> str | None:
    """The server's namespace (``/run/netns/LAB-server``) or the lab's manifest, if either exists."""
    namespace = NETNS_RUN_DIR / f"{lab.name}-server"
    if namespace.exists():
        return f"network namespace {namespace}"
    manifest = Path(state_dir) / "manifest.json"
    return f"embedded lab manifest {manifest}" if manifest.is_file() else None


def docker_running(lab: Lab, state_dir: Path) -> str | None:
    """The docker backend's plan file (written before any container is made, removed by down)."""
    plan = Path(state_dir) / "docker" / "lab.json"
    return f"container plan {plan}" if plan.is_file() else None
