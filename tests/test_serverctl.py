"""scripts/serverctl.py for real, on this machine: real servers, real sockets read from /proc, real signals.

No lab needed: the servers listen on loopback ports the kernel hands out. Every test stops what it
started (serverctl stop, then any PID it recorded), also when it fails.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.loopback_sshd import free_port

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
SEED = Path(__file__).resolve().parents[2] / "shared" / "bench"


def tcp_server(port: int, *, delay: float = 0.0) -> list[str]:
    code = (f"import socket,sys,time; time.sleep({delay}); s=socket.socket(); "
            f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',{port})); "
            "s.listen(); print('up', flush=True); print('to stderr', file=sys.stderr, flush=True); "
            "time.sleep(120)")
    return [sys.executable, "-c", code]


def udp_server(port: int) -> list[str]:
    code = (f"import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('127.0.0.1',{port})); time.sleep(120)")
    return [sys.executable, "-c", code]


class Ctl:
    """serverctl.py with its records in a folder of the test's."""

    def __init__(self, d: Path) -> None:
        self.dir = d / "servers"

    def __call__(self, *args: str, check_json: bool = True) -> dict:
        proc = subprocess.run([sys.executable, str(SCRIPTS / "serverctl.py"), "--dir", str(self.dir), *args],
                              capture_output=True, text=True, timeout=60, cwd=self.dir.parent)
        if not check_json:
            return {"stdout": proc.stdout, "rc": proc.returncode}
        assert proc.stdout.strip(), proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["rc"] = proc.returncode
        return out

    def start(self, sid: str, ports: list[str], argv: list[str], *extra: str) -> dict:
        flags = [w for p in ports for w in ("--port", p)]
        return self("start", "--id", sid, "--ready-timeout", "3", *flags, *extra, "--", *argv)

    def pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.dir.glob("*.pid") if p.read_text().strip().isdigit()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def ctl(tmp_path):
    c = Ctl(tmp_path)
    started: list[int] = []
    c.started = started
    try:
        yield c
    finally:
        started += c.pids()
        c("stop", check_json=False)
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_start_waits_until_the_program_listens_then_status_and_logs(ctl):
    port = free_port()
    out = ctl.start("mine", [f"{port}/tcp"], tcp_server(port, delay=0.3))
    assert out["ok"] and out["rc"] == 0, out
    ctl.started += [out["pid"], out["program_pid"]]
    assert out["listening"] == [f"tcp {port}"]
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # it was listening when start returned
    status = ctl("status")["servers"]
    assert [(s["id"], s["pid"], s["alive"], s["listening"]) for s in status] == \
        [("mine", out["pid"], True, [f"tcp {port}"])]
    logs = ctl("logs", check_json=False)["stdout"]
    assert "==> mine (running" in logs and "up" in logs and "to stderr" in logs  # stdout and stderr


def test_a_udp_server_is_ready_once_its_socket_is_bound(ctl):
    port = free_port()
    out = ctl.start("u", [f"{port}/udp"], udp_server(port))
    ctl.started += [out.get("pid", 0)]
    assert out["ok"] and out["listening"] == [f"udp {port}"], out


def test_one_server_per_port_the_holder_is_stopped_by_pid(ctl):
    port = free_port()
    first = ctl.start("first", [str(port)], tcp_server(port))
    assert first["ok"], first
    ctl.started += [first["pid"], first["program_pid"]]
    second = ctl.start("second", [str(port)], tcp_server(port))
    ctl.started += [second.get("pid", 0)]
    assert second["ok"], second
    assert second["stopped"] == [{"id": "first", "pid": first["pid"], "ports": [f"tcp {port}"]}]
    assert wait_gone(first["program_pid"]) and wait_gone(first["pid"])
    assert [s["id"] for s in ctl("status")["servers"]] == ["second"]


def test_a_port_held_by_a_process_labctl_did_not_start_is_refused(ctl):
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        out = ctl.start("mine", [str(port)], tcp_server(port))
    assert not out["ok"] and out["rc"] == 1
    assert f"port tcp {port} is already in use by pid {os.getpid()}" in out["error"]
    assert "did not start" in out["error"] and ctl.pids() == []


def test_a_server_that_never_listens_is_stopped_and_its_log_tail_shown(ctl):
    argv = ["sh", "-c", "echo starting; echo 'cannot bind, sorry' >&2; exec sleep 60"]
    out = ctl.start("deaf", [str(free_port())], argv)
    assert not out["ok"] and "sh was started but it did not listen on" in out["error"]
    assert "within 3 s" in out["error"]
    assert "cannot bind, sorry" in out["log"] and "starting" in out["log"]
    assert wait_gone(out["pid"]) and wait_gone(out["program_pid"])  # nothing left running
    assert ctl.pids() == []


def test_a_server_that_exits_at_once_says_so(ctl):
    out = ctl.start("quits", [str(free_port())], ["sh", "-c", "echo bye; exit 3"])
    assert not out["ok"] and out["error"] == "sh exited before it listened"
    assert "bye" in out["log"] and "exited with status 3" in out["log"]


def test_a_program_that_cannot_run_is_refused_before_anything_is_stopped(ctl, tmp_path):
    port = free_port()
    good = ctl.start("good", [str(port)], tcp_server(port))
    ctl.started += [good["pid"], good["program_pid"]]
    seed = SEED / "seed-tcpserver"
    if not seed.is_file():  # any ELF of this machine will do
        seed = Path(shutil.which("true"))
    arm = tmp_path / "arm-server"
    data = bytearray(seed.read_bytes()[:4096])
    data[18:20] = (183).to_bytes(2, "little")   # e_machine: aarch64 (this machine is x86-64)
    arm.write_bytes(bytes(data))
    arm.chmod(0o755)
    out = ctl.start("arm", [str(port)], [str(arm)], "--node", "server")
    if os.uname().machine == "x86_64":
        assert out["error"] == "exec format error: arm-server is aarch64, server is x86-64"
    assert not out["ok"] and out["stopped"] == []
    missing = ctl.start("gone", [str(port)], ["./nothere"], "--node", "server")
    assert missing["error"] == "./nothere: no such file on server"
    assert alive(good["program_pid"])  # still serving
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_ready_pattern_instead_of_a_socket(ctl):
    out = ctl("start", "--id", "pat", "--ready", "^up$", "--ready-timeout", "3", "--",
              sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)")
    ctl.started += [out.get("pid", 0)]
    assert out["ok"], out


def test_stop_ends_the_whole_group_and_the_log_says_how(ctl):
    port = free_port()
    argv = ["sh", "-c", f"sleep 60 & exec {' '.join(repr(w) for w in tcp_server(port))}"]
    out = ctl.start("grp", [str(port)], argv)
    assert out["ok"], out
    ctl.started.append(out["pid"])
    members = [int(p) for p in subprocess.run(["pgrep", "-g", str(out["program_pid"])], capture_output=True,
                                              text=True).stdout.split()]
    assert len(members) >= 2  # the server and the sleep it left in its group
    ctl.started += members
    assert ctl("stop")["stopped"] == [{"id": "grp", "pid": out["pid"]}]
    assert all(wait_gone(p) for p in [out["pid"], *members])
    assert "killed by SIGTERM" in ctl("logs", "--id", "grp", check_json=False)["stdout"]


def test_the_log_is_bounded(ctl, monkeypatch):
    """A chatty server fills at most LOG_MAX bytes on the node (two halves), the newest kept."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import serverctl
    finally:
        sys.path.remove(str(SCRIPTS))
    code = ("import sys\nfor i in range(100000): sys.stdout.write('line %06d ' % i + 'x' * 80 + '\\n')\n"
            "sys.stdout.flush()\nimport time; time.sleep(60)")
    out = ctl("start", "--id", "chatty", "--ready", "line 099999", "--ready-timeout", "20", "--",
              sys.executable, "-c", code)
    ctl.started.append(out.get("pid", 0))
    assert out["ok"], out
    logs = list(ctl.dir.glob("chatty.log*"))
    assert sum(p.stat().st_size for p in logs) <= serverctl.LOG_MAX
    assert serverctl.LOG_MAX < 100000 * 90  # (the program wrote more than that)
    assert "line 099999" in (ctl.dir / "chatty.log").read_text()
