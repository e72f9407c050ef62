"""The lab as data: labctl/lab.py loads, scales and validates the lab file.

A bad lab file is refused at load with one line that names the file, both by ``load_lab`` and through
the real CLI (``labctl --lab FILE status``): never a traceback, never somebody else's lab.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labctl.lab import DEFAULT_LAB_FILE, MAX_CLIENTS, SECTIONS, Lab, LabError, Ports, load_lab

ROOT = Path(__file__).resolve().parent.parent
NAMED = "name: htest\n"


def write(tmp_path: Path, text: str | bytes, name: str = "lab.yml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
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
    lab = load_lab(write(tmp_path, NAMED + "clients: 5\n"))
    assert lab.name == "htest"
    assert [n.name for n in lab.client_nodes] == [f"client{i}" for i in range(1, 6)]
    assert lab.client_nodes[-1].address == "192.168.20.7"
    assert load_lab(write(tmp_path, NAMED + "clients: 5\n"), clients=2).clients == 2
    assert lab.with_clients(None) is lab
    assert lab.with_clients(9).nodes[-1].name == "client9"
    with pytest.raises(LabError, match="between 1 and 200, got 0"):
        lab.with_clients(0)


def test_nodes_are_found_by_name():
    lab = Lab()
    assert lab.server.name == "server" and lab.node("client2").address == "192.168.20.4"
    with pytest.raises(LabError, match=r"no node named 'client9'.*server, client1"):
        lab.node("client9")


def test_every_setting_a_lab_file_takes(tmp_path):
    text = ("name: full\nsubnet: 10.77.3.0/24\nhost_address: 10.77.3.1\nserver_address: 10.77.3.10\n"
            "clients: 2\nports: {tcp: 9000, proto: 9001, time: 0}\nvagrant: {box: x/y, memory: 256}\n")
    lab = load_lab(write(tmp_path, text))
    assert (lab.name, lab.subnet, lab.host_address, lab.clients) == ("full", "10.77.3.0/24", "10.77.3.1", 2)
    assert [n.address for n in lab.nodes] == ["10.77.3.10", "10.77.3.11", "10.77.3.12"]
    assert lab.ports == Ports(9000, 9001, 0)  # time 0: the RFC 868 server is off
    assert lab.vagrant == {"box": "x/y", "memory": 256}
    assert load_lab(write(tmp_path, "\ufeff# a BOM and CRLFs\r\nname: bom\r\n")).name == "bom"


def test_a_new_section_is_one_parser_in_the_table(tmp_path, monkeypatch):
    path = write(tmp_path, NAMED + "newsection: {server: my_server.py}\n")
    with pytest.raises(LabError, match="unknown setting 'newsection'"):
        load_lab(path)
    seen = []
    monkeypatch.setitem(SECTIONS, "newsection", lambda key, value: seen.append((key, value)) or {})
    assert load_lab(path).name == "htest" and seen == [("newsection", {"server": "my_server.py"})]


# --- refused at load, one line that names the file ---------------------------------------------------

BAD_CONTENT = [
    # a lab file says what it is: never the built-in default lab
    ("", "is empty: a lab file must at least name its lab"),
    ("  \n\n", "is empty"),
    ("# only\n# comments\n", "has no settings"),
    ("---\n", "has no settings"),
    ("clients: 2\n", "has no 'name:'"),
    ("name:\n", "name: expected text"),
    ("name: Lab\n", "lowercase"),
    ("name: toolongname\n", "15 characters"),
    ("name: off\n", "quote it"),
    ("name: 12\n", "name: expected text, got 12"),
    # the top level and its keys
    ("- a\n- b\n", "expected settings .key: value. at the top level, got a list"),
    (NAMED + "colour: blue\n",
     r"unknown setting 'colour' \(known: backend, clients, host_address, links, name"),
    (NAMED + "1: x\n", "unknown setting '1'"),
    (NAMED + "clients: 2\nclients: 30\n", "line 3 column 1: not valid YAML: 'clients' is set twice"),
    # YAML errors: one line with where
    (NAMED + "clients: [\n", r"line 3 column 1: not valid YAML: expected the node content"),
    ("name: a: b\n", "line 1 column 8: not valid YAML: mapping values are not allowed here"),
    (NAMED + "ports: {tcp: 1\x07}\n", "not valid YAML: character #x0007 at offset 26 is not allowed"),
    # clients: a whole number
    (NAMED + "clients: 2.7\n", "clients must be a whole number, got 2.7"),
    (NAMED + "clients: true\n", "clients must be a whole number, got True"),
    (NAMED + "clients: '3'\n", "clients must be a whole number, got '3'"),
    (NAMED + "clients: many\n", "clients must be a whole number, got 'many'"),
    (NAMED + "clients: 0\n", "between 1 and 200, got 0"),
    (NAMED + f"clients: {MAX_CLIENTS + 1}\n", "between 1 and 200"),
    # ports: 1..65535 each (time 0 = off), every server its own
    (NAMED + "ports: {tcp: 0}\n", "ports: tcp must be a port number 1..65535, got 0"),
    (NAMED + "ports: {proto: 0}\n", "ports: proto must be a port number 1..65535, got 0"),
    (NAMED + "ports: {tcp: 70000}\n", "tcp must be a port number 1..65535, got 70000"),
    (NAMED + "ports: {time: -1}\n", r"time must be 0 \(off\) or a port number 1..65535, got -1"),
    (NAMED + "ports: {tcp: 80.5}\n", "tcp must be a port number 1..65535, got 80.5"),
    (NAMED + "ports: {tcp: true}\n", "tcp must be a port number 1..65535, got True"),
    (NAMED + "ports: {tcp: 8080, proto: 8080}\n", "tcp and proto are both 8080"),
    (NAMED + "ports: {proto: 37}\n", "proto and time are both 37"),
    (NAMED + "ports: {tcp: 37}\n", "tcp and time are both 37"),
    (NAMED + "ports: {udp: 1}\n", "ports takes tcp, proto and time"),
    (NAMED + "ports: 8080\n", "ports takes tcp, proto and time"),
    (NAMED + "vagrant: debian\n", "vagrant: expected settings"),
    # the subnet: private, of its own, big enough
    (NAMED + "subnet: 8.8.8.0/24\nhost_address: 8.8.8.1\nserver_address: 8.8.8.2\n", "not a private range"),
    (NAMED + "subnet: 169.254.0.0/16\nhost_address: 169.254.0.1\nserver_address: 169.254.0.2\n",
     r"subnet 169.254.0.0/16 is link-local .*169.254.169.254"),
    (NAMED + "subnet: 169.254.169.0/24\nhost_address: 169.254.169.1\nserver_address: 169.254.169.2\n",
     "is link-local"),
    (NAMED + "subnet: 127.0.0.0/24\nhost_address: 127.0.0.1\nserver_address: 127.0.0.2\n", "is loopback"),
    (NAMED + "subnet: 0.0.0.0/24\nhost_address: 0.0.0.1\nserver_address: 0.0.0.2\n", "0.0.0.0/8"),
    (NAMED + "subnet: 224.0.0.0/24\nhost_address: 224.0.0.1\nserver_address: 224.0.0.2\n", "is multicast"),
    (NAMED + "subnet: 240.0.0.0/24\nhost_address: 240.0.0.1\nserver_address: 240.0.0.2\n", "is reserved"),
    (NAMED + "subnet: 100.64.0.0/24\nhost_address: 100.64.0.1\nserver_address: 100.64.0.2\n",
     "carrier-grade NAT"),
    (NAMED + "subnet: 0.0.0.0/0\nhost_address: 10.0.0.1\nserver_address: 10.0.0.2\n", "includes loopback"),
    (NAMED + "subnet: 10.0.0.0/24\nhost_address: 10.0.0.1\nserver_address: 10.0.0.2\n"
     "subnet2: x\n", "unknown setting 'subnet2'"),
    (NAMED + "subnet: 192.168.20.4/31\nhost_address: 192.168.20.4\nserver_address: 192.168.20.5\n",
     r"subnet 192.168.20.4/31 has 0 usable addresses; the host, the server and 3 clients need 5"),
    (NAMED + "subnet: 192.168.20.4/32\nhost_address: 192.168.20.4\nserver_address: 192.168.20.4\n",
     "has 0 usable addresses"),
    (NAMED + "subnet: 192.168.20.0/30\nclients: 1\nhost_address: 192.168.20.1\n"
     "server_address: 192.168.20.2\n", "has 2 usable addresses; the host, the server and 1 client need 3"),
    (NAMED + "subnet: 192.168.20.0/29\nserver_address: 192.168.20.4\n",
     "last client 192.168.20.7 is not a usable address"),
    (NAMED + "subnet: 192.168.20.0/33\n", "subnet: '33' is not a valid netmask"),
    (NAMED + "subnet: 10\n", "subnet: expected text, got 10"),
    (NAMED + "subnet: 192.168.20.1/24\n", "has host bits set"),
    (NAMED + "host_address: 192.168.20.3\n", "collides"),
    (NAMED + "host_address: 192.168.21.1\n", "host_address 192.168.21.1 is not a usable address"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONTENT)
def test_bad_lab_files_say_what_is_wrong_in_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(LabError, match=message) as info:
        load_lab(path)
    said = str(info.value)
    assert said.startswith(f"lab file {path}") and "\n" not in said, said


def test_the_lab_must_name_itself_even_when_the_rest_is_right(tmp_path):
    rest = "subnet: 192.168.62.0/24\nhost_address: 192.168.62.1\nserver_address: 192.168.62.2\nclients: 1\n"
    with pytest.raises(LabError, match=r"has no 'name:'.*name: mylab"):
        load_lab(write(tmp_path, rest))
    assert load_lab(write(tmp_path, NAMED + rest)).name == "htest"


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Lab files that are not lab files at all, with what the error must say."""
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    (tmp_path / "dir.yml").mkdir()
    unreadable = write(tmp_path, NAMED, "unreadable.yml")
    unreadable.chmod(0)
    return {
        "missing": (tmp_path / "nope.yml", "not found"),
        "directory": (tmp_path / "dir.yml", "is a directory: --lab takes a lab file"),
        "fifo": (fifo, "is not a regular file"),
        "binary": (write(tmp_path, Path(sys.executable).read_bytes()[:4096], "binary.yml"),
                   "is a binary file, not a lab file"),
        "latin-1": (write(tmp_path, "name: caf\xe9\n".encode("latin-1"), "latin1.yml"),
                    r"is not UTF-8 text \(byte 0xe9 at offset 9\)"),
        "utf-16": (write(tmp_path, NAMED.encode("utf-16"), "utf16.yml"), "is a binary file"),
        "huge": (write(tmp_path, NAMED + "#" * (1 << 20) + "\n", "huge.yml"), "is larger than 1 MiB"),
        **({} if os.geteuid() == 0 else {"unreadable": (unreadable, "permission denied")}),
    }


def test_files_that_are_not_lab_files_are_one_line(tmp_path):
    for kind, (path, message) in _bad_files(tmp_path).items():
        with pytest.raises(LabError, match=message) as info:
            load_lab(path)
        said = str(info.value)
        assert str(path) in said and "\n" not in said, (kind, said)


def _status(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The real CLI, as a user types it."""
    return subprocess.run([sys.executable, str(ROOT / "labctl.py"), "--lab", str(path), "--state-dir",
                           str(tmp_path / "state"), "status"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "LABCTL_DEBUG": ""})


CLI_CASES = ["", "# only comments\n", "clients: 2\n", NAMED + "clients: [\n", NAMED + "clients: 2.7\n",
             NAMED + "clients: true\n", NAMED + "ports: {tcp: 0}\n", NAMED + "ports: {proto: 0}\n",
             NAMED + "ports: {proto: 37}\n", NAMED + "ports: {tcp: 37}\n", NAMED + "1: x\n",
             NAMED + "subnet: 169.254.0.0/16\nhost_address: 169.254.0.1\nserver_address: 169.254.0.2\n"]


def test_the_cli_says_one_line_and_never_shows_another_lab(tmp_path):
    cases = {repr(text): (write(tmp_path, text, f"case{i}.yml"), None) for i, text in enumerate(CLI_CASES)}
    cases.update({kind: case for kind, case in _bad_files(tmp_path).items() if kind != "fifo"})
    for kind, (path, _) in cases.items():
        proc = _status(path, tmp_path)
        assert proc.returncode != 0, (kind, proc.stdout)
        assert proc.stdout == "", (kind, proc.stdout)  # no status table of the default (or any) lab
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"labctl: lab file {path}"), (kind, proc.stderr)


def test_a_good_lab_file_still_reaches_the_command(tmp_path):
    path = write(tmp_path, NAMED + "subnet: 192.168.62.0/24\nhost_address: 192.168.62.1\n"
                           "server_address: 192.168.62.2\nclients: 1\nports: {time: 0}\n")
    proc = _status(path, tmp_path)
    # the file's own lab (its name), not the default one: status says in one line that it is not up
    assert proc.returncode == 1 and "lab htest (netns) is not up" in proc.stdout, proc


def test_a_small_subnet_fits_as_many_clients_as_it_has_addresses(tmp_path):
    lab = load_lab(write(tmp_path, NAMED + "subnet: 192.168.20.0/29\n"))
    assert lab.nodes[-1].address == "192.168.20.5"
    with pytest.raises(LabError, match="has 6 usable addresses; the host, the server and 5 clients need 7"):
        lab.with_clients(5)


def test_two_hundred_clients_fit_a_24():
    lab = Lab(clients=MAX_CLIENTS)
    assert lab.nodes[-1].address == "192.168.20.202"


def test_a_lab_built_in_code_is_checked_like_a_file():
    with pytest.raises(LabError, match="link-local"):
        Lab(subnet="169.254.1.0/24", host_address="169.254.1.1", server_address="169.254.1.2")
    with pytest.raises(LabError, match="whole number"):
        Lab(clients=2.7)  # type: ignore[arg-type]
    with pytest.raises(LabError, match="proto and time are both 8081"):
        Lab(ports=Ports(time=8081))
    assert Lab(ports=Ports(time=0)).ports.time == 0


def test_the_backend_key_names_which_backend_drives_the_lab(tmp_path):
    path = tmp_path / "lab.yml"
    path.write_text("name: htest\nbackend: vagrant\n")
    assert load_lab(path).backend == "vagrant"
    path.write_text("name: htest\nbackend: [vagrant]\n")
    with pytest.raises(LabError, match=r"a backend's name, e\.g\. backend: vagrant"):
        load_lab(path)
