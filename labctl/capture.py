"""Capture: tcpdump on one node or on several at once, every packet streamed home as it is captured.

Each node's tcpdump (:mod:`labctl.tcpdump`) is armed before anything is triggered: :func:`capture`
starts them all in parallel and returns to ``during`` (the triggered run) only once every one said
``listening on``. Each stream is written home as it arrives; one node's capture is its pcap as tcpdump
wrote it, several are merged into one pcapng, one interface per node (``client2/eth0``, described
``client2 192.168.20.4``), packets in time order. Each node's clock is probed in the same exec: nodes on
this machine's kernel share its clock; a VM whose offset the probe can tell from zero gets its
timestamps corrected, and the output says so. The completeness checks hold per node: tcpdump's
``captured`` must equal ``received by filter`` with 0 dropped, and the file at home must hold exactly
``captured`` packets. The node's own copy is removed only once home holds all of it; otherwise the
error says where it still is.

The capture ends when ``during`` returns (+ ``settle``), ``duration`` elapses, Ctrl-C, the size bound
is reached on a node, a stream's reader (``-o -``) goes away, or a tcpdump vanishes, each noticed at
once. Ctrl-C (or SIGTERM) at any moment ends the capture cleanly; further ones are held back until
the clean-up is done. Written against :class:`~labctl.remote.Connection` and the inventory only.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from labctl.analyse.pcap_stream import PcapStream
from labctl.analyse.pcapng_write import Interface
from labctl.capture_clock import ClockNote, judge_clock, local_boot_id
from labctl.capture_home import (
    HOLD,
    Consumer,
    Dispatcher,
    Part,
    RawFile,
    StdoutPcap,
    check_output,
    merge,
    read_packets,
)
from labctl.capture_result import STOPPED, CaptureResult, NodeResult  # noqa: F401
from labctl.capture_signals import Signals
from labctl.errors import LabctlError
from labctl.remote import Connection
from labctl.tcpdump import (  # noqa: F401  (re-exported: the capture's vocabulary)
    BUFFER_KIB,
    MAX_BYTES,
    MAX_SECONDS,
    REMOTE_TMP,
    CaptureError,
    NodeCapture,
    TcpdumpStats,
    capture_filter,
    parse_stats,
    tcpdump_argv,
)

if TYPE_CHECKING:  # types only: capture runs what it is handed, it imports neither
    from labctl.analyse.model import Analysis
    from labctl.run import RunResult

LOCAL_DIR = Path("captures")
SETTLE = 0.15             # s after the run's last client returned, for the closing FIN/ACKs


def default_output(ports: Sequence[int], now: datetime | None = None, directory: Path = LOCAL_DIR,
                   nodes: int = 1) -> Path:
    """``captures/<UTC time>-port8080.pcap`` (ports joined with '-'; ``.pcapng`` for several nodes)."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    suffix = ".pcap" if nodes == 1 else ".pcapng"
    return directory / f"{stamp}-port{'-'.join(str(p) for p in dict.fromkeys(ports))}{suffix}"


class _Point:
    """One capture point at home: its tcpdump, the file its stream goes to, the stream's parser."""

    def __init__(self, index: int, conn: Connection, ports: Sequence[int], file: Path,
                 dispatcher: Dispatcher | None, wake: threading.Event, **kwargs) -> None:
        self.index = index
        self.file = RawFile(file)
        self.parser = PcapStream()
        self.parse_error: LabctlError | None = None
        self._dispatcher = dispatcher
        self.tcpdump = NodeCapture(conn, ports, self._sink, wake=wake, **kwargs)
        self.stats: TcpdumpStats | None = None
        self.clock: ClockNote | None = None

    def _sink(self, _node: NodeCapture, data: bytes) -> None:
        self.file.write(data)
        if self.parse_error is not None:
            return
        try:
            packets = self.parser.feed(data)
        except LabctlError as exc:
            self.parse_error = exc
            return
        if self._dispatcher is not None:
            self._dispatcher.put(self.index, packets)

    @property
    def host(self):
        return self.tcpdump.host

    def interface(self) -> Interface:
        return Interface(self.host.name, self.tcpdump.interface, self.host.address,
                         self.parser.linktype if self.parser.linktype is not None else 1,
                         self.parser.snaplen or 262144, self.clock.comment if self.clock else "")


def capture(conns: Connection | Sequence[Connection], ports: Sequence[int], *, output: Path | None = None,
            duration: float | None = None, during: Callable[[], RunResult | None] | None = None,
            settle: float = SETTLE, remote_dir: str = REMOTE_TMP,
            on_listening: Callable[[list[NodeCapture]], None] | None = None,
            analyse: Callable[[Path], tuple[Analysis, dict]] | None = None, max_bytes: int = MAX_BYTES,
            stream_to: BinaryIO | None = None, consumers: Sequence[Consumer] = (),
            alongside: Callable[[], object] | None = None) -> CaptureResult:
    """Capture ``ports`` on every node of ``conns`` at once until the run, ``duration``, Ctrl-C, the
    size bound or a vanished tcpdump ends it; bring it home to ``output``; fail loudly if anything
    was lost. ``stream_to`` gets the capture as it arrives (pcap for one node, pcapng for several);
    ``consumers`` get every packet as it arrives (the live view). ``analyse(path)`` reads the file
    back and returns ``(analysis, summary)``; it must raise if the file does not read back.
    ``alongside()`` (the run's preparation: deploy, the lead) runs while the tcpdumps are armed, and
    ``during`` only starts once both are done; if it raises, the capture is undone and that raised."""
    conns = [conns] if isinstance(conns, Connection) or hasattr(conns, "host") else list(conns)
    if not conns:
        raise CaptureError("no node to capture on")
    if duration is not None and not 0 < duration <= MAX_SECONDS:
        raise CaptureError(f"--duration must be between 0 and {MAX_SECONDS} seconds")
    output = Path(output) if output is not None else default_output(ports, nodes=len(conns))
    check_output(output)
    several = len(conns) > 1
    wake = threading.Event()
    taps = stream_to is not None or bool(consumers)
    dispatcher = Dispatcher(HOLD if several else 0.0) if taps else None
    max_seconds = duration + 30 if duration else MAX_SECONDS
    boot = local_boot_id()
    points = [_Point(i, c, ports, _part_path(output, c.host.name) if several else output, dispatcher,
                     wake, remote_dir=remote_dir, max_seconds=max_seconds, max_bytes=max_bytes,
                     local_boot=boot) for i, c in enumerate(conns)]
    signals = Signals()
    signals.install()
    stopped_by = "run"
    run_result = None
    failure: Exception | None = None
    t0 = time.perf_counter()
    arm_seconds = 0.0
    try:
        try:
            side = _Alongside(alongside)
            with signals.held():       # a Ctrl-C here must not leave a tcpdump whose PID we never got
                try:
                    _arm(points)
                except BaseException:
                    side.join()
                    raise
                arm_seconds = time.perf_counter() - t0
                for p in points:
                    p.clock = judge_clock(p.tcpdump.clock, boot)
                stdout = None
                if dispatcher is not None:
                    sinks: list[Consumer] = list(consumers)
                    if stream_to is not None:
                        _await_headers(points)
                        stdout = StdoutPcap(stream_to, [p.interface() for p in points], wake)
                        stdout.start()
                        sinks.insert(0, stdout)
                    dispatcher.start(sinks, [p.clock.correction_ns for p in points])
            side.join()
            if side.error is not None:
                _undo(points)
                raise side.error
            if on_listening is not None:
                on_listening([p.tcpdump for p in points])
            if during is not None:
                try:
                    run_result = during()
                except Exception as exc:  # the run failed: the capture still comes home, then this
                    failure = exc
                stopped_by = _wait(points, wake, settle, stdout) or "run"
            else:
                stopped_by = _wait(points, wake, duration, stdout) or "duration"
        except KeyboardInterrupt:
            stopped_by = "ctrl-c"
        finally:
            with signals.held(reraise=False):  # clean-up runs to the end, whatever arrives meanwhile
                _stop_all(points)
                if dispatcher is not None:
                    dispatcher.close()
    finally:
        signals.restore()
    seconds = time.perf_counter() - t0
    result = CaptureResult(output, [], list(ports), seconds, stopped_by, run_result, arm_seconds=arm_seconds)
    _bring_home(points, output, result)
    if failure is not None:
        raise failure
    _check(points, result, analyse)
    return result


def _part_path(output: Path, node: str) -> Path:
    return output.with_name(f".{output.name}.{node}.part.pcap")


class _Alongside:
    """``fn()`` in a thread of its own; :meth:`join` waits (Ctrl-C still gets through) and keeps
    what it raised in ``error``."""

    def __init__(self, fn: Callable[[], object] | None) -> None:
        self.error: BaseException | None = None
        self._thread = None
        if fn is not None:
            def call() -> None:
                try:
                    fn()
                except BaseException as exc:
                    self.error = exc
            self._thread = threading.Thread(target=call, name="capture-alongside", daemon=True)
            self._thread.start()

    def join(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.05)


def _undo(points: list[_Point]) -> None:
    """Stop every tcpdump, remove what it left at home and on the node (nothing was captured yet)."""
    _stop_all(points)
    for p in points:
        p.file.close()
        with contextlib.suppress(LabctlError):
            p.tcpdump.remove_remote()
        p.file.path.unlink(missing_ok=True)


def _arm(points: list[_Point]) -> None:
    """Start every tcpdump at once; if any fails, stop the others and say which failed and why."""
    errors: dict[str, BaseException] = {}

    def arm(p: _Point) -> None:
        try:
            p.tcpdump.start()
        except BaseException as exc:
            errors[p.host.name] = exc

    threads = [threading.Thread(target=arm, args=(p,), daemon=True) for p in points[1:]]
    for t in threads:
        t.start()
    arm(points[0])
    for t in threads:
        t.join()
    if errors:
        _undo([p for p in points if p.host.name not in errors])
        for p in points:
            p.file.close()
            with contextlib.suppress(LabctlError):
                p.tcpdump.remove_remote()
            p.file.path.unlink(missing_ok=True)
        first = next(iter(errors.values()))
        if len(errors) > 1:
            raise CaptureError("; ".join(str(e) for e in errors.values()))
        raise first


def _await_headers(points: list[_Point], timeout: float = 1.0) -> None:
    """tcpdump writes its file header when it opens ``-w -``; wait briefly for every node's."""
    deadline = time.monotonic() + timeout
    while any(p.parser.header is None for p in points) and time.monotonic() < deadline:
        time.sleep(0.005)


def _wait(points: list[_Point], wake: threading.Event, seconds: float | None,
          stdout: StdoutPcap | None) -> str | None:
    """Sleep ``seconds`` (None: until Ctrl-C) unless something ends the capture first: say what."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if any(p.tcpdump.bound_hit for p in points):
            return "size"
        if any(p.tcpdump.vanished for p in points):
            return "vanished"
        if stdout is not None and stdout.reader_gone():
            return "reader"
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        most = 60 if stdout is None else 0.25   # a closed pipe with nothing to write says so by poll
        wake.wait(most if left is None else min(left, most))
        wake.clear()


def _each(points: list[_Point], fn: Callable[[_Point], object]) -> list:
    """``fn(point)`` for every point at once (the first in this thread); results in order, an
    exception counting as None (one node's trouble never loses the others)."""
    out: list = [None] * len(points)

    def call(i: int) -> None:
        try:
            out[i] = fn(points[i])
        except Exception:
            out[i] = None

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(1, len(points))]
    for t in threads:
        t.start()
    if points:
        call(0)
    for t in threads:
        t.join()
    return out


def _stop_all(points: list[_Point]) -> None:
    """Stop every started tcpdump by its PID, all at once; keep their statistics."""
    for p, stats in zip(points, _each(points, lambda p: p.tcpdump.stop())):
        p.stats = stats
        p.file.close()


def _bring_home(points: list[_Point], output: Path, result: CaptureResult) -> None:
    """Make sure home holds each node's whole stream (fetch the node's copy if the stream broke),
    merge several into one pcapng, and only then remove the nodes' copies."""
    problems = []
    for p in points:
        td = p.tcpdump
        broken = td.lost or p.file.written != td.bytes
        if broken and p.file.error is None and td.remote_size() not in (None, p.file.written):
            try:  # the stream broke but the node kept writing its copy: fetch that instead
                td.fetch_remote(p.file.path)
                p.file.written = p.file.path.stat().st_size
            except (LabctlError, OSError):
                pass
    if len(points) > 1 and all(p.file.error is None for p in points):
        parts = [Part(p.interface(), p.file.path, p.clock.correction_ns if p.clock else 0, p.stats)
                 for p in points]
        counts = merge(parts, output)
        for p in points:
            p.file.path.unlink(missing_ok=True)
    else:
        counts = [sum(1 for _ in read_packets(p.file.path)) if p.file.error is None else 0 for p in points]
    removed = _each(points, lambda p: p.file.error is None and _remove_if_home(p.tcpdump, p.file.written))
    for p, count, gone in zip(points, counts, removed):
        td = p.tcpdump
        kept = not gone
        if kept:
            problems.append(f"{td.host.name}:{td.remote_file}")
        result.nodes.append(NodeResult(td.host.name, td.host.address, td.interface, p.stats, count,
                                       p.clock or judge_clock(None, None), td.remote_file, kept))
    errors = [p for p in points if p.file.error is not None]
    if errors:
        why = errors[0].file.error.strerror or str(errors[0].file.error)
        raise CaptureError(f"cannot write the capture home to {output} ({why}); it is still on the "
                           f"node{'s' if len(problems) > 1 else ''}: {', '.join(problems)} "
                           "(labctl ssh NODE cat FILE > copy.pcap)")


def _remove_if_home(td: NodeCapture, home_bytes: int) -> bool:
    """Remove the node's copy if it is no larger than what home holds (one exec); True if removed."""
    f = td.remote_file
    script = (f"s=$(stat -c %s {f} 2>/dev/null) || exit 0; "
              f"if [ \"$s\" -le {int(home_bytes)} ]; then rm -f {f}; else echo KEPT $s; fi")
    try:
        r = td.conn.run(["sh", "-c", script], check=False, sudo=True, timeout=30)
    except LabctlError:
        return False
    return r.ok and "KEPT" not in r.stdout


def _check(points: list[_Point], result: CaptureResult, analyse) -> None:
    """Fail loudly if a tcpdump vanished or lost packets, or home does not hold what it captured."""
    out = result.path
    for p, n in zip(points, result.nodes):
        td = p.tcpdump
        if td.vanished or (n.stats is None and not td.bound_hit):
            what = (f"tcpdump on {n.node} ended by itself after {td.ended_at - td.started_at:.1f} s "
                    + ("(killed? it printed no statistics)" if n.stats is None else f"({n.stats})")
                    if td.vanished else f"tcpdump on {n.node} did not report its statistics")
            lost = f" ({td.lost})" if td.lost else ""
            raise CaptureError(f"{what}{lost}: {out} holds the {n.packets} packet"
                               f"{'' if n.packets == 1 else 's'} it sent and is INCOMPLETE; capture again")
        if n.stats is not None and _tail_in_ring(n.stats, result.stopped_by):
            late = n.stats.received - n.stats.captured
            result.notes.append(f"{n.node}: {late} packet{'' if late == 1 else 's'} still in the kernel's "
                                "ring when tcpdump stopped mid-traffic (after the last one in the file)")
        elif n.stats is not None and not n.stats.complete:
            why = ("the kernel dropped packets: machine overloaded? capture fewer ports" if n.stats.dropped
                   else "packets the kernel passed to tcpdump are not in the file (or other traffic hit "
                        "the interface while tcpdump attached its filter)")
            raise CaptureError(f"capture INCOMPLETE on {n.node}: tcpdump says {n.stats}; the pcap is at "
                               f"{out} but may be missing packets ({why}); capture again")
        if n.stats is not None and n.packets != n.stats.captured:
            raise CaptureError(f"{out} holds {n.packets} packets from {n.node} but tcpdump captured "
                               f"{n.stats.captured}")
    if analyse is not None:
        try:
            result.analysis, result.summary = analyse(out)
        except LabctlError as exc:
            raise CaptureError(f"{out} does not read back: {exc}") from None
        packets = result.summary.get("packets")
        total = sum(n.packets for n in result.nodes)
        if packets is not None and packets != total:
            raise CaptureError(f"{out} holds {packets} packets but tcpdump captured {total}")


def _tail_in_ring(stats: TcpdumpStats, stopped_by: str) -> bool:
    """Stopped while traffic still flowed (the size bound, Ctrl-C, a reader gone), tcpdump counts as
    received the packets that reached its ring after it was told to stop: nothing dropped, and the
    file is complete up to its last packet. (A run's or a duration's end stays strict.)"""
    return (stopped_by in ("size", "ctrl-c", "reader") and stats.dropped == 0
            and stats.received > stats.captured)

