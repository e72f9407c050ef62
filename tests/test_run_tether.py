"""Nothing left running, whatever happens to labctl: the tether around each client, and a Ctrl-C that
reaches the caller of Group.map at once. Real shells, real processes, real signals (no lab needed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from labctl.inventory import Host
from labctl.remote import Group
from labctl.run import tethered

STARTAT = Path(__file__).resolve().parent.parent / "scripts" / "startat.py"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def _wait(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_eof_on_the_channel_stops_the_launched_client_and_its_group(tmp_path):
    """What happens on a node when labctl hangs up (Ctrl-C) or dies (its SSH connection closes)."""
    pidfile = tmp_path / "child.pid"
    program = ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; exec sleep 300"]
    argv = tethered([sys.executable, str(STARTAT), "--at", f"{time.time() + 0.2:.6f}", "--timeout", "300",
                     "--node", "client1", "--", *program])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait(lambda: pidfile.exists() and pidfile.read_text().strip())
        grandchild = int(pidfile.read_text())
        assert _alive(grandchild) and proc.poll() is None
        proc.stdin.close()  # the SSH channel's stdin ends
        err = proc.stderr.read()
        proc.wait(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM   # the launcher was stopped ...
        assert b"startat-timings: " in err               # ... and still said what happened
        assert _wait(lambda: not _alive(grandchild))     # ... and nothing of the client is left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_tether_feeds_the_input_and_passes_the_exit_status_on():
    argv = tethered(["sh", "-c", "read line; echo got $line; exit 7"], stdin="hello\n")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        out = proc.stdout.read()       # our stdin stays open: the client ends by itself
        assert proc.wait(timeout=30) == 7 and out == b"got hello\n"
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class BlockedConnection:
    """A connection whose every call blocks until released (a dead host's timeout, say)."""

    def __init__(self, name: str, release: threading.Event) -> None:
        self.host = Host(name, "client", "192.168.20.3")
        self.release = release

    def close(self) -> None:
        pass


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_ctrl_c_reaches_the_caller_of_group_map_while_hosts_are_still_blocked():
    release = threading.Event()
    group = Group.from_connections([BlockedConnection(f"c{i}", release) for i in range(3)])
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            group.map(lambda conn: conn.release.wait(60))
        assert not release.is_set()  # map returned while every host's call was still blocked
    finally:
        release.set()
        timer.cancel()
