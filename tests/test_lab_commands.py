"""The lab commands' output and arguments, against a fake backend (no lab needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.backends.base import Backend, NodeStatus
from labctl.cli import build_parser, main
from labctl.inventory import Host, Inventory, InventoryError
from labctl.lab import Lab


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, lab: Lab, state_dir: Path, *, up_nodes=("server", "client1")) -> None:
        super().__init__(lab, state_dir)
        self.up_nodes = set(up_nodes)
        self.calls: list[str] = []

    def up(self, progress=None, check=None):
        self.calls.append("up")
        if progress:
            progress("doing things")
        check(self.inventory())
        return self.inventory()

    def down(self, progress=None):
        self.calls.append("down")

    def status(self):
        return [NodeStatus(n.name, n.role, n.address, n.name in self.up_nodes, "x") for n in self.lab.nodes]

    def inventory(self):
        return Inventory(self.name, tuple(
            Host(n.name, n.role, n.address, key_file=self.state_dir / "id_ed25519",
                 host_key="ssh-ed25519 AAAAkey", interface="lab-br") for n in self.lab.nodes))

    def clean(self, progress=None):
        return ["2 namespaces (lab-server, lab-client1)"]


class Ctx:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def backend(self) -> Backend:
        return self._backend


def run(argv: list[str], backend: Backend) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args, Ctx(backend))


@pytest.fixture
def backend(tmp_path, monkeypatch):
    fake = FakeBackend(Lab(clients=1), tmp_path / "lab")
    # the SSH check that ends `up` is tested against real sshds (test_bringup.py, the e2e tests)
    monkeypatch.setattr("labctl.bringup.check_ssh", lambda inventory, b: fake.calls.append("check_ssh"))
    return fake


def test_status_json_is_the_documented_shape(backend, capsys):
    assert run(["status", "--json"], backend) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "fake"
    assert [{k: n[k] for k in ("name", "role", "address", "up")} for n in report["nodes"]] == [
        {"name": "server", "role": "server", "address": "192.168.20.2", "up": True},
        {"name": "client1", "role": "client", "address": "192.168.20.3", "up": True}]


def test_status_exits_1_when_a_node_is_down(backend, capsys):
    backend.up_nodes = {"server"}
    assert run(["status"], backend) == 1
    out = capsys.readouterr().out
    assert "client1" in out and "down" in out


def test_up_json_prints_the_inventory_and_no_progress(backend, capsys):
    assert run(["up", "--json"], backend) == 0
    captured = capsys.readouterr()
    hosts = json.loads(captured.out)["hosts"]
    assert hosts[0] == {"name": "server", "role": "server", "address": "192.168.20.2", "port": 22,
                        "user": "root", "key": str(backend.state_dir / "id_ed25519"),
                        "host_key": "ssh-ed25519 AAAAkey", "interface": "lab-br", "lab_interface": "eth0"}
    assert captured.err == ""
    assert run(["inventory", "--format", "json"], backend) == 0  # one serializer: the same document
    assert json.loads(capsys.readouterr().out) == json.loads(captured.out)


def test_up_prints_a_table_and_progress(backend, capsys):
    assert run(["up"], backend) == 0
    captured = capsys.readouterr()
    assert "192.168.20.3" in captured.out and "labctl: doing things" in captured.err
    assert backend.calls == ["up", "check_ssh"]  # every node's SSH is checked once, after the backend


def test_up_takes_clients_which_the_context_reads(tmp_path, monkeypatch, capsys):
    made: list[FakeBackend] = []

    def make_backend(name, lab, state_dir, **options):
        made.append(FakeBackend(lab, state_dir))
        return made[-1]

    monkeypatch.setattr("labctl.backends.make_backend", make_backend)
    monkeypatch.setattr("labctl.bringup.check_ssh", lambda inventory, b: b.calls.append("check_ssh"))
    assert main(["--state-dir", str(tmp_path), "up", "--clients", "7", "--json"]) == 0
    assert [b.lab.clients for b in made] == [7] and made[0].calls == ["up", "check_ssh"]
    assert [h["name"] for h in json.loads(capsys.readouterr().out)["hosts"]][-1] == "client7"


def test_down_and_clean_report(backend, capsys):
    assert run(["down"], backend) == 0
    assert "down" in capsys.readouterr().out and backend.calls == ["down"]
    assert run(["clean"], backend) == 0
    assert "removed 2 namespaces" in capsys.readouterr().out


def test_ssh_to_an_unknown_node_is_a_clear_error(backend, monkeypatch):
    monkeypatch.setattr("labctl.shell.subprocess.Popen", lambda *a, **k: pytest.fail("must not run ssh"))
    with pytest.raises(InventoryError, match="no node named 'client9'"):
        run(["ssh", "client9"], backend)


def test_ssh_passes_one_argument_as_a_command_line_and_several_word_by_word(backend, monkeypatch):
    calls = []
    monkeypatch.setattr("labctl.shell.open_shell", lambda host, words: calls.append((host.name, words)) or 0)
    assert run(["ssh", "client1", "ip -br a; ss -tn"], backend) == 0
    assert run(["ssh", "server", "ls", "-l", "/tmp dir"], backend) == 0
    assert calls == [("client1", ["ip -br a; ss -tn"]), ("server", ["ls", "-l", "/tmp dir"])]


def test_commands_of_a_lab_that_is_not_up_print_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LABCTL_STATE", str(tmp_path))
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text("name: nolab\nsubnet: 192.168.119.0/24\nhost_address: 192.168.119.1\n"
                        "server_address: 192.168.119.2\nclients: 1\n")
    code = main(["--lab", str(lab_file), "--state-dir", str(tmp_path), "ssh", "server", "true"])
    err = capsys.readouterr().err
    assert err.startswith("labctl: backend netns (the default: no lab running)\n")  # which backend, and why
    err = err.split("\n", 1)[1]
    assert code == 1 and err.startswith("labctl: lab is not up: run labctl up") and "Traceback" not in err
    assert main(["--lab", str(lab_file), "--state-dir", str(tmp_path), "status", "--json"]) == 1
    assert not any(n["up"] for n in json.loads(capsys.readouterr().out)["nodes"])
    assert main(["--lab", str(lab_file), "--state-dir", str(tmp_path), "down"]) == 0
