"""The one backend registry: the CLI offers its names without importing a backend; each builds itself."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labctl.backends import BACKENDS, backend_names, make_backend
from labctl.backends.base import Backend, BackendError
from labctl.cli import build_parser
from labctl.lab import Lab

REPO = Path(__file__).resolve().parent.parent


def test_the_cli_offers_exactly_the_registered_backends():
    action = next(a for a in build_parser()._actions if a.dest == "backend")
    assert tuple(action.choices) == backend_names() == tuple(BACKENDS)


def test_starting_the_cli_imports_no_backend_module():
    code = ("import sys; from labctl.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith('labctl.backends.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "ssh"])
def test_every_backend_builds_itself_from_the_options(name, tmp_path):
    backend = make_backend(name, Lab(clients=1), tmp_path / "lab", inventory_file=None)
    assert isinstance(backend, Backend) and backend.name == name


def test_the_ssh_backend_takes_its_inventory_from_the_options(tmp_path):
    backend = make_backend("ssh", Lab(clients=1), tmp_path, inventory_file=tmp_path / "hosts.yml")
    assert backend.name == "ssh" and backend.inventory_file == tmp_path / "hosts.yml"
    with pytest.raises(BackendError, match="needs --inventory FILE"):
        make_backend("ssh", Lab(clients=1), tmp_path)


def test_an_unknown_backend_is_one_clear_error(tmp_path):
    with pytest.raises(BackendError, match=r"unknown backend 'kvm' \(choose from netns, "):
        make_backend("kvm", Lab(clients=1), tmp_path)
