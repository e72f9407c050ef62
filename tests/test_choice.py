"""Which backend a command drives without --backend: real files where the probes look, no mocks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.backends import SYSTEM_STATE_ROOT, default_state_root, user_state_root
from labctl.choice import BackendConflict, UnknownBackend, choose_backend
from labctl.cli import main
from labctl.lab import load_lab


@pytest.fixture
def lab(tmp_path, monkeypatch):
    for var in ("LABCTL_BACKEND", "LABCTL_STATE", "VAGRANT_DOTFILE_PATH"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "hcard.yml"
    path.write_text("name: hcard\nsubnet: 192.168.70.0/24\nhost_address: 192.168.70.1\n"
                    "server_address: 192.168.70.2\nclients: 2\n")
    return load_lab(path)


def _vagrant_machines(dotfile: Path, names=("server", "client1", "client2")) -> None:
    for name in names:
        (dotfile / "machines" / name / "libvirt").mkdir(parents=True)
        (dotfile / "machines" / name / "libvirt" / "id").write_text("6f0c1a2e-uuid")


def test_nothing_running_is_the_embedded_default(lab, tmp_path):
    choice = choose_backend(lab, state_root=tmp_path)
    assert (choice.name, choice.why, choice.state_root) == ("netns", "the default: no lab running", tmp_path)
    assert choice.line() == "backend netns (the default: no lab running)"


def test_the_flag_then_the_environment_then_the_lab_file_then_the_inventory(lab, tmp_path, monkeypatch):
    _vagrant_machines(tmp_path / "hcard" / "vagrant" / "dotfile")  # running VMs lose to what the user says
    assert choose_backend(lab, flag="docker", state_root=tmp_path).why == "--backend"
    monkeypatch.setenv("LABCTL_BACKEND", "ssh")
    assert choose_backend(lab, flag="docker", state_root=tmp_path).name == "docker"
    assert choose_backend(lab, state_root=tmp_path).why == "LABCTL_BACKEND"
    monkeypatch.delenv("LABCTL_BACKEND")
    named = lab.source.with_name("named.yml")
    named.write_text(lab.source.read_text() + "backend: docker\n")
    choice = choose_backend(load_lab(named), inventory_file=Path("x.yml"), state_root=tmp_path)
    assert choice.name == "docker" and choice.why == f"backend: in {named}"
    assert choose_backend(lab, inventory_file=Path("x.yml"), state_root=tmp_path).name == "ssh"


def test_vagrant_machines_are_found_where_vagrant_keeps_them(lab, tmp_path, monkeypatch):
    # another lab file than the project's: its machines live in the lab's state directory ...
    _vagrant_machines(tmp_path / "hcard" / "vagrant" / "dotfile", names=("server",))
    choice = choose_backend(lab, state_root=tmp_path)
    assert choice.name == "vagrant" and "1 Vagrant machines (libvirt)" in choice.why
    # ... or where VAGRANT_DOTFILE_PATH says (the user's `vagrant up` and labctl read the same one)
    dotfile = tmp_path / "elsewhere"
    _vagrant_machines(dotfile)
    monkeypatch.setenv("VAGRANT_DOTFILE_PATH", str(dotfile))
    assert f"3 Vagrant machines (libvirt) in {dotfile}" in choose_backend(lab, state_root=tmp_path).why
    # a machine directory without an id is a destroyed machine
    (dotfile / "machines" / "server" / "libvirt" / "id").unlink()
    assert "2 Vagrant machines" in choose_backend(lab, state_root=tmp_path).why


def test_the_embedded_lab_and_the_containers_are_found(lab, tmp_path):
    (tmp_path / "hcard" / "docker").mkdir(parents=True)
    (tmp_path / "hcard" / "docker" / "lab.json").write_text(json.dumps({}))
    assert choose_backend(lab, state_root=tmp_path).name == "docker"
    (tmp_path / "hcard" / "docker" / "lab.json").unlink()
    (tmp_path / "hcard" / "manifest.json").write_text("{}")
    assert choose_backend(lab, state_root=tmp_path).name == "netns"


def test_two_running_labs_on_the_same_addresses_are_refused(lab, tmp_path):
    (tmp_path / "hcard").mkdir()
    (tmp_path / "hcard" / "manifest.json").write_text("{}")
    _vagrant_machines(tmp_path / "hcard" / "vagrant" / "dotfile")
    with pytest.raises(BackendConflict, match=r"lab hcard is running on more than one backend.*vagrant: 3 "
                                              r"Vagrant machines.*netns: embedded lab manifest.*--backend"):
        choose_backend(lab, state_root=tmp_path)
    assert choose_backend(lab, flag="vagrant", state_root=tmp_path).name == "vagrant"


def test_an_unknown_backend_is_one_clear_error(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_BACKEND", "kvm")
    with pytest.raises(UnknownBackend, match=r"unknown backend 'kvm' \(LABCTL_BACKEND; choose from netns, "):
        choose_backend(lab, state_root=tmp_path)


def test_state_roots_root_only_for_the_embedded_lab(monkeypatch, tmp_path):
    monkeypatch.delenv("LABCTL_STATE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_root("netns") == SYSTEM_STATE_ROOT == Path("/run/labctl")
    assert default_state_root("vagrant") == default_state_root("docker") == tmp_path / "xdg" / "labctl"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_state_root() == tmp_path / "home" / ".local" / "state" / "labctl"
    monkeypatch.setenv("LABCTL_STATE", str(tmp_path / "mine"))
    assert default_state_root("netns") == default_state_root("ssh") == tmp_path / "mine"


def test_the_cli_says_which_backend_or_refuses_in_one_line(lab, tmp_path, capsys):
    _vagrant_machines(tmp_path / "hcard" / "vagrant" / "dotfile")
    (tmp_path / "hcard" / "manifest.json").write_text("{}")
    assert main(["--lab", str(lab.source), "--state-dir", str(tmp_path), "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("labctl: lab hcard is running on more than one backend") and err.count("\n") == 1
