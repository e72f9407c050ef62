"""capture's logic against fake nodes that stream like tcpdump: merging, checks, stops, clean-up.

The real thing (sshd, tcpdump, namespaces) is in tests/e2e/test_capture_e2e.py; here each node is a
fake Connection whose ``stream`` plays the node script's output (clock, space, pid, ``listening on``,
pcap bytes, statistics) so every path of the orchestration can be driven, including the rare ones.
"""
from __future__ import annotations

import io
import os
import shlex
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from labctl.analyse.pcap_stream import read_points
from labctl.capture import CaptureError, capture, default_output
from labctl.capture_clock import ClockNote, judge_clock
from labctl.capture_home import check_output
from labctl.capture_signals import Signals
from labctl.inventory import Host
from labctl.remote import Result
from labctl.tcpdump import Clock, TcpdumpStats, capture_filter, node_script, parse_stats, tcpdump_argv
from tests.pcapwrite import global_header, record, tcp_daytime

BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


class FakeStream:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def pump(self, on_stdout, on_stderr) -> int:
        n = self.node
        on_stderr(f"labctl-clock {time.time() + n.skew:.9f} {n.boot}\nlabctl-space 900000 {n.limit}\n"
                  f"labctl-pid 4242\n".encode())
        if n.fail_start:
            on_stderr(b"tcpdump: eth9: No such device exists\n")
            return 1
        on_stderr(b"tcpdump: listening on eth0, link-type EN10MB (Ethernet)\n")
        on_stdout(global_header(nanos=False))
        for ts, frame in n.frames:
            on_stdout(record(ts, frame))
        if n.vanish_after is not None:
            time.sleep(n.vanish_after)
            return 0                                   # killed: no statistics
        n.stopped.wait(30)
        for chunk in n.late:
            on_stdout(chunk)
        c = len(n.frames) + len(n.late)
        on_stderr(f"{c} packets captured\n{c + n.missing} packets received by filter\n"
                  f"{n.dropped} packets dropped by kernel\n".encode())
        return 0

    def close(self) -> None:
        self.node.stopped.set()


class FakeNode:
    """A node whose tcpdump 'captures' ``frames`` at once and ``late`` ones when stopped."""

    def __init__(self, name: str, address: str, frames=(), *, late=(), missing=0, dropped=0, skew=0.0,
                 boot=BOOT, fail_start=False, vanish_after=None, limit=1 << 30) -> None:
        self.host = Host(name, "server" if name == "server" else "client", address, lab_interface="eth0")
        self.frames, self.late = list(frames), list(late)
        self.missing, self.dropped, self.skew, self.boot = missing, dropped, skew, boot
        self.fail_start, self.vanish_after, self.limit = fail_start, vanish_after, limit
        self.stopped = threading.Event()
        self.calls: list[str] = []

    def stream(self, cmd, *, sudo=False) -> FakeStream:
        assert sudo
        self.calls.append("stream " + shlex.join(cmd))
        return FakeStream(self)

    def stop(self, pid, *, sig="TERM", timeout=5.0, sudo=False) -> bool:
        self.calls.append(f"stop {pid} {sig}")
        self.stopped.set()
        return True

    def run(self, cmd, *, timeout=None, check=True, sudo=False, stdin=None) -> Result:
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self.calls.append(line)
        return Result(self.host.name, line, 0, "", "")

    def close(self) -> None:
        pass


def exchange(client: str, port: int, t0: float):
    return tcp_daytime(client, port, "192.168.20.2", 8080, t0)


def test_stats_filter_argv_and_default_name():
    stats = parse_stats("listening on eth0\n3 packets captured\n5 packets received by filter\n"
                        "1 packet dropped by kernel\n")
    assert stats == TcpdumpStats(3, 5, 1) and not stats.complete
    with pytest.raises(CaptureError, match=r"did not report its statistics.*No such device"):
        parse_stats("labctl-pid 1\ntcpdump: eth9: No such device exists\n")
    assert capture_filter([8080, 8081, 8080]) == "port 8080 or port 8081"
    with pytest.raises(CaptureError):
        capture_filter([0])
    argv = tcpdump_argv("eth0", [8080])
    assert argv[:5] == ["timeout", "--signal=INT", "--kill-after=5", "3600", "tcpdump"]
    assert {"--immediate-mode", "-U", "--time-stamp-precision=nano"} <= set(argv)
    assert argv[argv.index("-w") + 1] == "-" and argv[-1] == "port 8080"
    script = node_script(argv, "/tmp/x y.pcap", 1 << 20)
    assert "tee -p '/tmp/x y.pcap'" in script and "stat -f -c" in script and "ulimit -f" in script
    when = datetime(2026, 11, 25, 9, 30, 1, 250000, tzinfo=timezone.utc)
    assert default_output([8080], when) == Path("captures/20261125T093001.250Z-port8080.pcap")
    assert default_output([8080], when, nodes=2).suffix == ".pcapng"


def test_one_node_is_its_pcap_as_streamed(tmp_path):
    server = FakeNode("server", "192.168.20.2", exchange("192.168.20.3", 40000, 100.0))
    result = capture(server, [8080], output=tmp_path / "a.pcap", during=lambda: "ran", settle=0)
    assert result.run == "ran" and result.stats == TcpdumpStats(8, 8, 0) and result.stopped_by == "run"
    assert (tmp_path / "a.pcap").read_bytes()[:4] == global_header()[:4]
    assert "stop 4242 INT" in server.calls
    assert any("rm -f" in c for c in server.calls)           # home holds it all: the node's copy goes
    assert not result.nodes[0].kept_remote


def test_several_nodes_merge_into_one_pcapng_in_time_order(tmp_path):
    frames = exchange("192.168.20.3", 40000, 100.0)
    client = FakeNode("client1", "192.168.20.3", frames)
    server = FakeNode("server", "192.168.20.2", [(ts + 0.00003, f) for ts, f in frames],
                      late=[record(200.0, frames[0][1])])
    out = tmp_path / "m.pcapng"
    result = capture([server, client], [8080], output=out, during=lambda: None, settle=0)
    points, _, packets, names = read_points(out)
    assert points == ["server/eth0", "client1/eth0"]
    assert names == {"192.168.20.2": "server", "192.168.20.3": "client1"}
    assert [n.packets for n in result.nodes] == [9, 8] == [n.stats.captured for n in result.nodes]
    stamps = [p.ts_ns for _, p in packets]
    assert stamps == sorted(stamps) and len(packets) == 17
    assert [i for i, _ in packets[:2]] == [1, 0]              # the client saw the SYN first
    assert not list(tmp_path.glob(".*part*"))                 # the per-node parts are gone
    assert all(n.clock.kind == "same" for n in result.nodes)


def test_a_node_clock_that_is_off_is_corrected_and_said(tmp_path):
    frames = exchange("192.168.20.3", 40000, 100.0)
    vm = FakeNode("client1", "192.168.20.3", [(ts + 5.0, f) for ts, f in frames], skew=5.0, boot="other")
    server = FakeNode("server", "192.168.20.2", frames, boot="other2")
    result = capture([server, vm], [8080], output=tmp_path / "c.pcapng", during=lambda: None, settle=0)
    note = result.nodes[1].clock
    assert note.kind == "corrected" and abs(note.offset_s - 5.0) < 0.5 and "corrected by -5" in note.text
    _, _, packets, _ = read_points(tmp_path / "c.pcapng")
    first_client = next(p for i, p in packets if i == 1)
    assert abs(first_client.ts_ns / 1e9 - 100.0) < 0.5      # back on the server's time line
    assert result.nodes[0].clock.kind == "within"


def test_where_the_bound_stops_a_stream():
    from labctl.tcpdump import SLACK, stop_at

    assert stop_at((1 << 20) + SLACK, 1 << 20) == 1 << 20          # the bound asked for
    assert stop_at(8 << 20, 100 << 20) == 6 << 20                    # lowered by the node's free space


def test_judge_clock():
    assert judge_clock(None, BOOT).kind == "unknown"
    assert judge_clock(Clock(10.0, 9.0, 11.0, BOOT), BOOT).kind == "same"
    within = judge_clock(Clock(10.0, 9.99, 10.01, "x"), BOOT)
    assert within.kind == "within" and within.correction_ns == 0
    assert within.uncertainty_s == pytest.approx(0.01)
    off = judge_clock(Clock(12.0, 9.99, 10.01, "x"), BOOT)
    assert off.kind == "corrected" and off.correction_ns == -2_000_000_000
    assert ClockNote("same").comment.startswith("clock: this machine's")


def test_incomplete_and_disagreeing_captures_fail_loudly_but_keep_the_file(tmp_path):
    frames = exchange("192.168.20.3", 40000, 100.0)
    with pytest.raises(CaptureError, match=r"INCOMPLETE on server.*8 captured, 10 received by filter, 1 dr"):
        capture(FakeNode("server", "192.168.20.2", frames, missing=2, dropped=1), [8080],
                output=tmp_path / "b.pcap", during=lambda: None, settle=0)
    assert len(read_points(tmp_path / "b.pcap")[2]) == 8
    with pytest.raises(CaptureError, match="holds 7 packets but tcpdump captured 8"):
        capture(FakeNode("server", "192.168.20.2", frames), [8080], output=tmp_path / "c.pcap",
                during=lambda: None, settle=0, analyse=lambda p: (None, {"packets": 7}))


def test_a_vanished_tcpdump_is_noticed_at_once_and_named(tmp_path):
    frames = exchange("192.168.20.3", 40000, 100.0)
    node = FakeNode("server", "192.168.20.2", frames, vanish_after=0.2)
    t0 = time.monotonic()
    with pytest.raises(CaptureError, match=r"tcpdump on server ended by itself after .* \(killed\? it "
                                           r"printed no statistics\): .*v\.pcap holds the 8 packets it "
                                           r"sent and is INCOMPLETE"):
        capture(node, [8080], output=tmp_path / "v.pcap", duration=30)
    assert time.monotonic() - t0 < 5


def test_the_size_bound_stops_the_capture_and_says_so(tmp_path):
    frames = exchange("192.168.20.3", 40000, 100.0) * 20     # 160 packets, ~12 KB
    node = FakeNode("server", "192.168.20.2", frames, limit=1 << 30)
    t0 = time.monotonic()
    result = capture(node, [8080], output=tmp_path / "s.pcap", duration=30, max_bytes=8192)
    assert result.stopped_by == "size" and time.monotonic() - t0 < 5
    assert result.nodes[0].packets == 160


def test_ctrl_c_during_the_run_still_stops_tcpdump_and_brings_it_home(tmp_path):
    server = FakeNode("server", "192.168.20.2", exchange("192.168.20.3", 40000, 100.0))

    def interrupted_run():
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, delivered to this process
        os.kill(os.getpid(), signal.SIGINT)  # and an impatient second one
        raise AssertionError("not reached: the first SIGINT interrupts")

    before = signal.getsignal(signal.SIGINT)
    result = capture(server, [8080], output=tmp_path / "d.pcap", during=interrupted_run, settle=0)
    assert result.interrupted and result.run is None and result.nodes[0].packets == 8
    assert "stop 4242 INT" in server.calls
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_signals_are_held_while_starting_and_fire_once():
    sig = Signals()
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


def test_a_node_that_cannot_start_stops_the_others_and_says_why(tmp_path):
    good = FakeNode("server", "192.168.20.2")
    bad = FakeNode("client1", "192.168.20.3", fail_start=True)
    with pytest.raises(CaptureError, match=r"client1: tcpdump could not start on eth0.*No such device"):
        capture([good, bad], [8080], output=tmp_path / "e.pcapng", duration=1)
    assert "stop 4242 INT" in good.calls                        # the armed one is stopped again
    assert any("rm -f" in c for c in good.calls + bad.calls)
    assert not list(tmp_path.iterdir())


class ClosingPipe(io.RawIOBase):
    """stdout whose reader goes away after ``keep`` bytes."""

    def __init__(self, keep: int) -> None:
        self.keep, self.got = keep, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.got >= self.keep:
            raise BrokenPipeError(32, "Broken pipe")
        self.got += len(b)
        return len(b)


def test_a_closed_stdout_stops_the_capture_and_home_keeps_it_all(tmp_path):
    server = FakeNode("server", "192.168.20.2", exchange("192.168.20.3", 40000, 100.0))
    result = capture(server, [8080], output=tmp_path / "o.pcap", duration=30, stream_to=ClosingPipe(100))
    assert result.stopped_by == "reader" and result.nodes[0].packets == 8


def test_outputs_that_cannot_be_written_are_refused_before_capturing(tmp_path):
    with pytest.raises(CaptureError, match="is a directory"):
        check_output(tmp_path)
    with pytest.raises(CaptureError, match="character device"):
        check_output(Path("/dev/full"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CaptureError, match="FIFO"):
        check_output(fifo)
    with pytest.raises(CaptureError, match="cannot create"):
        check_output(Path("/proc/labctl-no/x.pcap"))
    check_output(tmp_path / "new" / "ok.pcap")                # a new file in a new directory is fine
    assert not (tmp_path / "new" / "ok.pcap").exists()


def test_alongside_runs_while_arming_and_its_failure_undoes_the_capture(tmp_path):
    server = FakeNode("server", "192.168.20.2", exchange("192.168.20.3", 40000, 100.0))
    order = []
    result = capture(server, [8080], output=tmp_path / "a.pcap", alongside=lambda: order.append("prepared"),
                     during=lambda: order.append("ran"), settle=0)
    assert order == ["prepared", "ran"] and result.nodes[0].packets == 8

    def broken():
        raise CaptureError("deploy failed on client1")

    server = FakeNode("server", "192.168.20.2", exchange("192.168.20.3", 40000, 100.0))
    with pytest.raises(CaptureError, match="deploy failed"):
        capture(server, [8080], output=tmp_path / "b.pcap", alongside=broken, during=lambda: None)
    assert "stop 4242 INT" in server.calls and any("rm -f" in c for c in server.calls)
    assert not (tmp_path / "b.pcap").exists()


def test_a_run_that_fails_still_brings_the_capture_home(tmp_path):
    server = FakeNode("server", "192.168.20.2", exchange("192.168.20.3", 40000, 100.0))

    def failing_run():
        raise RuntimeError("the run broke")

    with pytest.raises(RuntimeError, match="the run broke"):
        capture(server, [8080], output=tmp_path / "r.pcap", during=failing_run, settle=0)
    assert len(read_points(tmp_path / "r.pcap")[2]) == 8 and any("rm -f" in c for c in server.calls)


def test_a_stop_mid_traffic_notes_the_ring_tail_but_a_run_stays_strict(tmp_path):
    frames = exchange("192.168.20.3", 40000, 100.0) * 20
    node = FakeNode("server", "192.168.20.2", frames, missing=3)
    result = capture(node, [8080], output=tmp_path / "t.pcap", duration=30, max_bytes=8192)
    assert result.stopped_by == "size" and "3 packets still in the kernel's ring" in result.notes[0]
    with pytest.raises(CaptureError, match="INCOMPLETE"):
        capture(FakeNode("server", "192.168.20.2", frames, missing=3), [8080], output=tmp_path / "u.pcap",
                during=lambda: None, settle=0)
