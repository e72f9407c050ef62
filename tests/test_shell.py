"""``labctl ssh``: the system ssh client with the inventory's pinned host key, against a real sshd on
loopback (no lab needed), and the command rule it shares with ssh."""
from __future__ import annotations

import shlex
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from loopback_sshd import SSHD, keygen, loopback_sshd

from labctl.inventory import Host, LabNotUp
from labctl.shell import ShellError, open_shell, remote_command, ssh_argv
from tests.requires import require_file, require_root, require_tool


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A real sshd on 127.0.0.1, as an inventory host with its pinned key; stopped by PID."""
    require_root()
    require_file(SSHD, "apt-get install openssh-server")
    require_tool("ssh", "apt-get install openssh-client")
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as d:
        yield Host(name="loop", role="server", address="127.0.0.1", port=d.port, user="root",
                   key_file=d.key_file, host_key=d.host_key, interface="lo")


def test_one_argument_is_a_command_line_several_are_quoted_word_by_word():
    assert remote_command([]) is None
    assert remote_command(["ip -br a; ss -tn"]) == "ip -br a; ss -tn"
    words = ["sh", "-c", "echo $1", "x y", "$(rm -rf /)"]
    assert shlex.split(remote_command(words)) == words  # the remote shell gets exactly these words


def test_ssh_argv_pins_the_inventory_key_and_nothing_else(tmp_path):
    host = Host("server", "server", "192.168.20.2", key_file=tmp_path / "id", host_key="ssh-ed25519 AAAA",
                interface="lab-br")
    argv = ssh_argv("/usr/bin/ssh", host, known_hosts=tmp_path / "known_hosts", command="true")
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "StrictHostKeyChecking=yes" in opts
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in opts
    assert "GlobalKnownHostsFile=/dev/null" in opts and "IdentitiesOnly=yes" in opts
    assert "HostKeyAlgorithms=ssh-ed25519" in opts and "ForwardAgent=no" in opts
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id")
    assert argv[-3:] == ["--", "192.168.20.2", "true"] and "-t" not in argv
    shell = ssh_argv("/usr/bin/ssh", host, known_hosts=tmp_path / "k", command=None)
    assert "-t" in shell and shell[-1] == "192.168.20.2"
    with pytest.raises(ShellError, match="no pinned host key"):
        ssh_argv("/usr/bin/ssh", replace(host, host_key=""), known_hosts=tmp_path / "k", command=None)


def test_a_command_line_runs_in_the_nodes_shell(host, capfd):
    assert open_shell(host, ["echo $((40 + 2)); echo two; exit 3"]) == 3
    assert capfd.readouterr().out.splitlines() == ["42", "two"]
    assert open_shell(host, ["sh", "-c", 'echo "$1|$2"', "sh", "a b", "$HOME"]) == 0
    assert capfd.readouterr().out.strip() == "a b|$HOME"  # several words: each one quoted


def test_the_known_hosts_file_is_the_inventorys_pin_and_is_removed(host, capfd, tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("labctl-ssh-*"))
    assert open_shell(host, ["true"]) == 0
    assert set(Path(tempfile.gettempdir()).glob("labctl-ssh-*")) == before
    other = keygen(tmp_path / "other")
    assert open_shell(replace(host, host_key=other), ["echo must-not-run"]) == 255  # ssh refuses
    captured = capfd.readouterr()
    assert "must-not-run" not in captured.out and "Host key verification failed" in captured.err


def test_a_node_outside_its_bridge_is_refused_before_ssh_starts(host, capfd):
    with pytest.raises(LabNotUp, match="refuses to send traffic outside the lab"):
        open_shell(replace(host, interface="labctlnone0"), ["true"])
    assert capfd.readouterr().err == ""
