"""capture's logic against a fake Connection: stats check, Ctrl-C handling, clean-up always runs."""
from __future__ import annotations

import os
import shlex
import signal
from datetime import datetime, timezone
from pathlib import Path

import pytest

from labctl.capture import (
    BUFFER_KIB,
    CaptureError,
    TcpdumpStats,
    _Signals,
    capture,
    capture_filter,
    default_output,
    parse_stats,
    tcpdump_argv,
)
from labctl.inventory import Host
from labctl.remote import Result

STATS_OK = ("listening on eth0\n9 packets captured\n9 packets received by filter\n"
            "0 packets dropped by kernel\n")


class FakeServer:
    """Plays the server node: records what capture asked for, answers like tcpdump would."""

    def __init__(self, log: str = STATS_OK) -> None:
        self.host = Host("server", "server", "192.168.20.2", lab_interface="eth0")
        self.log = log
        self.calls: list[str] = []
        self.started: list[str] = []

    def start(self, cmd, *, log, ready=None, timeout=10.0, sudo=False) -> int:
        self.started.append(shlex.join(cmd))
        assert ready == "listening on" and sudo
        return 4242

    def stop(self, pid, *, sig="TERM", timeout=5.0, sudo=False) -> bool:
        self.calls.append(f"stop {pid} {sig}")
        assert sudo
        return True

    def run(self, cmd, *, timeout=None, check=True, sudo=False, stdin=None) -> Result:
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self.calls.append(line)
        if line.startswith("cat /tmp/labctl-capture-"):  # its log, once stopped
            assert "stop 4242 INT" in self.calls, "the log is read only after tcpdump is stopped"
            return Result("server", line, 0, self.log, "")
        return Result("server", line, 0, "", "")

    def get(self, remote, local):
        self.calls.append(f"get {remote}")
        Path(local).write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 20)
        return Path(local)


def test_parse_stats_reads_the_three_lines():
    stats = parse_stats("tcpdump: listening on eth0\n3 packets captured\n5 packets received by filter\n"
                        "1 packet dropped by kernel\n")
    assert stats == TcpdumpStats(3, 5, 1) and not stats.complete
    assert parse_stats(STATS_OK).complete
    with pytest.raises(CaptureError, match=r"did not report its statistics.*No such device"):
        parse_stats("tcpdump: eth9: No such device exists\n")


def test_filter_argv_and_default_name():
    assert capture_filter([8080]) == "port 8080"
    assert capture_filter([8080, 8081, 8080]) == "port 8080 or port 8081"
    with pytest.raises(CaptureError):
        capture_filter([0])
    argv = tcpdump_argv("eth0", "/tmp/x.pcap", [8080])
    assert argv[:5] == ["timeout", "--signal=INT", "--kill-after=5", "3600", "tcpdump"]
    for flag in ("--immediate-mode", "-U"):
        assert flag in argv
    assert argv[argv.index("-s") + 1] == "0" and argv[argv.index("-B") + 1] == str(BUFFER_KIB)
    assert argv[argv.index("-i") + 1] == "eth0" and argv[-1] == "port 8080"
    when = datetime(2026, 11, 25, 9, 30, 1, 250000, tzinfo=timezone.utc)
    assert default_output([8080], when) == Path("captures/20261125T093001.250Z-port8080.pcap")


def test_a_run_is_captured_and_everything_cleaned_up(tmp_path):
    server = FakeServer()
    result = capture(server, [8080], output=tmp_path / "a.pcap", during=lambda: "ran", settle=0,
                     analyse=lambda p: ("analysis", {"packets": 9}))
    assert result.run == "ran" and result.stats.complete and not result.interrupted
    assert "-i eth0" in server.started[0] and "--immediate-mode -U" in server.started[0]
    remote = server.started[0].split(" -w ")[1].split()[0]
    assert remote.startswith("/tmp/labctl-capture-")
    assert f"get {remote}" in server.calls
    assert any(c.startswith("rm -f ") and remote in c for c in server.calls)
    assert (tmp_path / "a.pcap").exists()


def test_incomplete_capture_fails_loudly_but_keeps_the_pcap(tmp_path):
    server = FakeServer("7 packets captured\n9 packets received by filter\n2 packets dropped by kernel\n")
    with pytest.raises(CaptureError, match=r"INCOMPLETE.*7 captured, 9 received by filter, 2 dropped"):
        capture(server, [8080], output=tmp_path / "b.pcap", during=lambda: None, settle=0)
    assert (tmp_path / "b.pcap").exists()


def test_a_pcap_that_disagrees_with_tcpdump_fails(tmp_path):
    with pytest.raises(CaptureError, match="holds 8 packets but tcpdump captured 9"):
        capture(FakeServer(), [8080], output=tmp_path / "c.pcap", during=lambda: None, settle=0,
                analyse=lambda p: (None, {"packets": 8}))


def test_ctrl_c_during_the_run_still_stops_tcpdump_and_fetches(tmp_path):
    server = FakeServer()

    def interrupted_run():
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, delivered to this process
        os.kill(os.getpid(), signal.SIGINT)  # and an impatient second one
        raise AssertionError("not reached: the first SIGINT interrupts")

    before = signal.getsignal(signal.SIGINT)
    result = capture(server, [8080], output=tmp_path / "d.pcap", during=interrupted_run, settle=0)
    assert result.interrupted and result.run is None
    assert "stop 4242 INT" in server.calls and (tmp_path / "d.pcap").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_signals_are_held_while_starting_and_fire_once():
    sig = _Signals()
    sig.install()
    try:
        with pytest.raises(KeyboardInterrupt), sig.held():
            os.kill(os.getpid(), signal.SIGINT)
            reached = True  # held: the block finishes first
        assert reached
        os.kill(os.getpid(), signal.SIGINT)  # after the first, further ones are only recorded
        assert sig.pending == signal.SIGINT
    finally:
        sig.restore()


def test_a_tcpdump_that_does_not_start_is_reported_and_its_log_removed(tmp_path):
    from labctl.remote import RemoteError

    class NoTcpdump(FakeServer):
        def start(self, cmd, **kwargs) -> int:
            raise RemoteError("server: `tcpdump` exited before it was ready; its log: eth9: No such device")

    server = NoTcpdump()
    with pytest.raises(RemoteError, match="No such device"):
        capture(server, [8080], output=tmp_path / "e.pcap", duration=1)
    assert any(c.startswith("rm -f /tmp/labctl-capture-") for c in server.calls)
    assert not (tmp_path / "e.pcap").exists()
