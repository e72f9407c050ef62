"""The remote layer against a real OpenSSH sshd on loopback (no lab needed)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from loopback_sshd import free_port, keygen, loopback_sshd

from labctl.inventory import Host, LabNotUp
from labctl.remote import (
    CommandFailed,
    Connection,
    Group,
    HostKeyError,
    RemoteError,
    command_line,
)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 that accepts one generated client key; stopped by PID."""
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as d:
        yield Host(name="loop", role="server", address="127.0.0.1", port=d.port, user="root",
                   key_file=d.key_file, host_key=d.host_key, interface="lo")


def test_command_line_quotes_every_word():
    assert command_line(["echo", "a b", "$(rm -rf /)"]) == "echo 'a b' '$(rm -rf /)'"
    assert command_line("echo $HOME") == "echo $HOME"
    assert command_line(["id"], sudo=True, user="vagrant") == "sudo -n -- sh -c id"
    assert command_line(["id"], sudo=True, user="root") == "id"


def test_run_put_get_and_quoting(sshd, tmp_path):
    with Connection(sshd) as c:
        r = c.run(["printf", "%s|", "a b", "$HOME;id"])
        assert r.ok and r.stdout == "a b|$HOME;id|"
        r = c.run("echo out; echo err >&2; exit 3", check=False)
        assert (r.exited, r.stdout, r.stderr) == (3, "out\n", "err\n")
        with pytest.raises(CommandFailed, match="exited 3"):
            c.run("exit 3")
        assert c.run(["cat"], stdin=b"piped").stdout == "piped"
        big = c.run(["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; head -c 200000 /dev/zero >&2"])
        assert len(big.stdout) == 300000 and len(big.stderr) == 200000
        src = tmp_path / "src.txt"
        src.write_text("hello node\n")
        remote = str(tmp_path / "remote.txt")
        c.put(src, remote, mode=0o640)
        assert (tmp_path / "remote.txt").stat().st_mode & 0o777 == 0o640
        back = c.get(remote, tmp_path / "back.txt")
        assert back.read_text() == "hello node\n"


def test_start_waits_for_ready_and_stop_by_pid(sshd, tmp_path):
    log = str(tmp_path / "srv.log")
    with Connection(sshd) as c:
        pid = c.start(["sh", "-c", "sleep 0.2; echo now listening; exec sleep 60"], log=log,
                      ready="listening")
        assert Path(f"/proc/{pid}").exists()
        assert "listening" in Path(log).read_text()
        assert c.stop(pid) is True
        assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z"
        assert c.stop(pid) is False  # already gone
        with pytest.raises(RemoteError, match=r"exited before it was ready.*boom"):
            c.start(["sh", "-c", "echo boom; exit 1"], log=log, ready="listening")
        with pytest.raises(RemoteError, match="not ready within"):
            c.start(["sleep", "30"], log=log, ready="listening", timeout=0.3)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]


def test_stop_counts_a_zombie_as_gone(sshd, tmp_path):
    """A process that ended but is not reaped yet (an init that reaps lazily) is gone: stop says it
    ended from its signal, instead of waiting out its timeout and killing it. (bench/remote.py times it.)"""
    log = tmp_path / "parent.log"
    with Connection(sshd) as c:
        # the parent execs a sleep that never waits: its child stays a zombie until the parent ends
        parent = c.start(["sh", "-c", "sleep 60 & echo child $!; exec sleep 60"], log=str(log), ready="child")
        try:
            child = int(log.read_text().split()[1])
            assert _state(child) in ("R", "S")  # alive (running or asleep: "R" under load), not a zombie
            assert c.stop(child, timeout=1.0) is True  # not "killed after the timeout"
            assert _state(child) == "Z"  # still a zombie: stop did not wait for the reaping
        finally:
            assert c.stop(parent) is True


def test_unpinned_or_wrong_host_key_is_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other")
    wrong = Host(**{**sshd.__dict__, "host_key": other})
    with pytest.raises(HostKeyError, match="does not match the pinned key"):
        Connection(wrong).open()
    with pytest.raises(HostKeyError, match="no pinned host key"):
        Connection(Host(**{**sshd.__dict__, "host_key": ""})).open()


def test_private_key_must_be_0600(sshd, tmp_path):
    key = tmp_path / "loose"
    shutil.copy(sshd.key_file, key)
    key.chmod(0o644)
    with pytest.raises(RemoteError, match="chmod 600"):
        Connection(Host(**{**sshd.__dict__, "key_file": key})).open()


def test_route_check_refuses_addresses_outside_the_bridge(sshd):
    outside = Host(**{**sshd.__dict__, "interface": "labctl-nope0"})
    with pytest.raises(LabNotUp, match="lab is not up: run labctl up"):
        Connection(outside).open()
    with pytest.raises(LabNotUp):
        Group([outside])


def test_group_keeps_results_of_live_hosts_when_one_fails(sshd):
    dead = Host(**{**sshd.__dict__, "name": "dead", "port": free_port()})
    hosts = [sshd, Host(**{**sshd.__dict__, "name": "loop2"}), dead]
    with Group(hosts) as g:
        out = g.run(["echo", "hi"])
        assert not out.ok
        assert {n: r.stdout for n, r in out.results.items()} == {"loop": "hi\n", "loop2": "hi\n"}
        assert list(out.failures) == ["dead"]
        assert "connection refused" in str(out.failures["dead"])
        with pytest.raises(RemoteError):
            out["dead"]
        fails = g.run("exit 7")
        assert set(fails.failures) == {"loop", "loop2", "dead"}
        assert isinstance(fails.failures["loop"], CommandFailed)


def test_a_subset_shares_the_groups_open_connections(sshd):
    hosts = [sshd, Host(**{**sshd.__dict__, "name": "loop2"}), Host(**{**sshd.__dict__, "name": "loop3"})]
    with Group(hosts) as g:
        assert g.open().ok
        part = g.subset(["loop3", "loop"])
        assert [c.host.name for c in part] == ["loop3", "loop"] and len(part) == 2
        assert part["loop"] is g["loop"] and part["loop"].is_open  # the same connection, not a new one
        assert list(part.run(["true"]).results) == ["loop3", "loop"]
        with pytest.raises(RemoteError, match="no host 'nope' in this group"):
            g.subset(["nope"])
        again = Group.from_connections([g["loop2"]])
        assert again["loop2"] is g["loop2"] and again.run(["true"]).ok
    assert not part["loop"].is_open  # closing the group closed the shared connection
