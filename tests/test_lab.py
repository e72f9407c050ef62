"""The lab as data: labctl/lab.py loads, scales and validates the lab file."""
from __future__ import annotations

from pathlib import Path

import pytest

from labctl.errors import LabctlError
from labctl.lab import DEFAULT_LAB_FILE, MAX_CLIENTS, Lab, LabError, Ports, load_lab


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.yml"
    path.write_text(text)
    return path


def test_the_project_lab_file_is_the_documented_lab():
    lab = load_lab()
    assert lab.source == DEFAULT_LAB_FILE
    assert (lab.name, lab.subnet, lab.host_address) == ("lab", "192.168.20.0/24", "192.168.20.1")
    assert [(n.name, n.role, n.address) for n in lab.nodes] == [
        ("server", "server", "192.168.20.2"), ("client1", "client", "192.168.20.3"),
        ("client2", "client", "192.168.20.4"), ("client3", "client", "192.168.20.5")]
    assert lab.ports == Ports(tcp=8080, proto=8081, time=37)
    assert lab.prefixlen == 24
    assert lab.vagrant["box"]


def test_clients_scale_from_the_command_line_and_the_file(tmp_path):
    assert len(load_lab(clients=31).nodes) == 32
    lab = load_lab(write(tmp_path, "clients: 5\n"))
    assert [n.name for n in lab.client_nodes] == [f"client{i}" for i in range(1, 6)]
    assert lab.client_nodes[-1].address == "192.168.20.7"
    assert load_lab(write(tmp_path, "clients: 5\n"), clients=2).clients == 2
    assert lab.with_clients(None) is lab
    assert lab.with_clients(9).nodes[-1].name == "client9"


def test_nodes_are_found_by_name():
    lab = Lab()
    assert lab.server.name == "server" and lab.node("client2").address == "192.168.20.4"
    with pytest.raises(LabError, match=r"no node named 'client9'.*server, client1"):
        lab.node("client9")


@pytest.mark.parametrize(("text", "message"), [
    ("name: Lab\n", "lowercase"),
    ("name: toolongname\n", "15 characters"),
    ("subnet: 8.8.8.0/24\nhost_address: 8.8.8.1\nserver_address: 8.8.8.2\n", "not a private range"),
    ("subnet: 192.168.20.0/33\n", "lab 'lab'"),
    ("clients: 0\n", "between 1 and 200"),
    (f"clients: {MAX_CLIENTS + 1}\n", "between 1 and 200"),
    ("subnet: 192.168.20.0/29\nclients: 5\n", "last client 192.168.20.7 is not a usable address"),
    ("host_address: 192.168.20.3\n", "collides"),
    ("ports: {tcp: 8080, proto: 8080}\n", "tcp and proto distinct"),
    ("ports: {tcp: 70000}\n", "1..65535"),
    ("ports: {udp: 1}\n", "ports takes tcp, proto and time"),
    ("colour: blue\n", "unknown keys \\['colour'\\]"),
    ("- a\n- b\n", "mapping at the top level"),
    ("clients: [\n", "not valid YAML"),
    ("clients: many\n", "lab file"),
])
def test_bad_lab_files_say_what_is_wrong(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(LabError, match=message) as info:
        load_lab(path)
    assert isinstance(info.value, LabctlError)  # the CLI prints it as one line


def test_a_missing_lab_file_is_a_clear_error(tmp_path):
    with pytest.raises(LabError, match="not found"):
        load_lab(tmp_path / "nope.yml")


def test_an_empty_lab_file_is_the_default_lab(tmp_path):
    assert load_lab(write(tmp_path, "")) == Lab()


def test_a_small_subnet_fits_as_many_clients_as_it_has_addresses(tmp_path):
    assert load_lab(write(tmp_path, "subnet: 192.168.20.0/29\n")).nodes[-1].address == "192.168.20.5"


def test_two_hundred_clients_fit_a_24():
    lab = Lab(clients=MAX_CLIENTS)
    assert lab.nodes[-1].address == "192.168.20.202"
