"""Capture: tcpdump on a node's lab interface over SSH, stopped by PID, the pcap brought home.

tcpdump runs with ``--immediate-mode -U``: packets go to the file as they arrive, not when a buffer
fills, so stopping it loses nothing still in the kernel's ring. It is stopped with SIGINT by its PID,
and its three statistics lines are read back from its log: a capture where ``captured`` differs from
``received by filter``, or anything was ``dropped by kernel``, is incomplete and reported as a failure
(the pcap is still brought home, so nothing is lost). ``timeout`` around tcpdump bounds its life even
if this process is killed outright.

Ctrl-C (or SIGTERM) at any moment ends the capture cleanly: tcpdump is stopped, the pcap is fetched,
and the remote copy removed; further Ctrl-Cs during that clean-up are held back until it is done.
Written against :class:`~labctl.remote.Connection` and the inventory only.
"""
from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.errors import LabctlError
from labctl.inventory import Host
from labctl.remote import Connection

if TYPE_CHECKING:  # types only: capture runs what it is handed, it imports neither
    from labctl.analyse.model import Analysis
    from labctl.run import RunResult

LOCAL_DIR = Path("captures")
REMOTE_TMP = "/tmp"       # the node's /tmp (each namespace node has its own): pcap and log while capturing
MAX_SECONDS = 3600        # tcpdump's life is bounded by `timeout` even if labctl is killed outright
SETTLE = 0.15             # s after the run's last client returned, for the closing FIN/ACKs
READY = "listening on"
# tcpdump's kernel ring, KiB. In immediate mode libpcap gives every packet a frame as large as the
# interface's biggest packet (64 KiB with offloads), so the default 2 MiB holds ~30 packets: a probe
# here lost 183 of a 200-datagram burst that way. 32 MiB holds ~500.
BUFFER_KIB = 32768

_STAT_RE = {
    "captured": re.compile(r"^(\d+) packets? captured", re.M),
    "received": re.compile(r"^(\d+) packets? received by filter", re.M),
    "dropped": re.compile(r"^(\d+) packets? dropped by kernel", re.M),
}


class CaptureError(LabctlError):
    """The capture failed or is incomplete; the message says where the pcap is, if anywhere."""


@dataclass(frozen=True)
class TcpdumpStats:
    """tcpdump's own count of what it saw, from the three lines it prints when it stops."""

    captured: int
    received: int
    dropped: int

    @property
    def complete(self) -> bool:
        return self.captured == self.received and self.dropped == 0

    def __str__(self) -> str:
        return (f"{self.captured} captured, {self.received} received by filter, "
                f"{self.dropped} dropped by kernel")


def parse_stats(log: str) -> TcpdumpStats:
    """Read tcpdump's statistics lines; raise :class:`CaptureError` if they are not all there."""
    found = {}
    for key, regex in _STAT_RE.items():
        matches = regex.findall(log)
        if not matches:
            tail = " / ".join(log.strip().splitlines()[-3:]) or "(empty log)"
            raise CaptureError(f"tcpdump did not report its statistics (did it crash?); its log: {tail}")
        found[key] = int(matches[-1])
    return TcpdumpStats(**found)


def capture_filter(ports: Sequence[int]) -> str:
    """The BPF filter for ``ports``: ``port 8080 or port 8081``."""
    if not ports:
        raise CaptureError("no port to capture")
    for p in ports:
        if not 1 <= int(p) <= 65535:
            raise CaptureError(f"port {p} is not in 1..65535")
    return " or ".join(f"port {int(p)}" for p in dict.fromkeys(ports))


def tcpdump_argv(interface: str, remote_file: str, ports: Sequence[int],
                 max_seconds: float = MAX_SECONDS) -> list[str]:
    """tcpdump writing every byte of every packet straight to ``remote_file``, bounded by ``timeout``."""
    return ["timeout", "--signal=INT", "--kill-after=5", f"{max(1, int(max_seconds + 0.999))}",
            "tcpdump", "-i", interface, "-n", "--immediate-mode", "-U", "-s", "0", "-B", str(BUFFER_KIB),
            "-w", remote_file,
            capture_filter(ports)]


def default_output(ports: Sequence[int], now: datetime | None = None, directory: Path = LOCAL_DIR) -> Path:
    """``captures/<UTC time>-port8080.pcap`` (ports joined with '-')."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    return directory / f"{stamp}-port{'-'.join(str(p) for p in dict.fromkeys(ports))}.pcap"


# --- signals ------------------------------------------------------------------------------------------

class _Signals:
    """SIGINT/SIGTERM as one KeyboardInterrupt, or held back while something must not be interrupted.

    Only the first signal interrupts: the clean-up it triggers (stop tcpdump, fetch the pcap) must run
    to the end however often an impatient user presses Ctrl-C (each step has its own timeout).
    """

    def __init__(self) -> None:
        self.holding = 0
        self.fired = False
        self.pending: int | None = None
        self.saved: dict[int, object] = {}

    def _handler(self, signum: int, _frame: object) -> None:
        if self.holding or self.fired:
            self.pending = signum
            return
        self.fired = True
        raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        self.saved.clear()

    @contextmanager
    def held(self, reraise: bool = True) -> Iterator[None]:
        """Hold signals back inside the block; raise KeyboardInterrupt after it if one came."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if reraise and not self.holding and self.pending is not None and not self.fired:
            self.pending = None
            self.fired = True
            raise KeyboardInterrupt


# --- the capture --------------------------------------------------------------------------------------

class Tcpdump:
    """One tcpdump on one node: started, stopped by PID, its pcap fetched and its remote files removed."""

    def __init__(self, conn: Connection, ports: Sequence[int], *, interface: str | None = None,
                 remote_dir: str = REMOTE_TMP, max_seconds: float = MAX_SECONDS) -> None:
        self.conn = conn
        self.host: Host = conn.host
        self.ports = list(ports)
        self.interface = interface or self.host.lab_interface
        stamp = f"{time.time():.6f}".replace(".", "-")
        self.remote_file = f"{remote_dir}/labctl-capture-{stamp}.pcap"
        self.remote_log = f"{remote_dir}/labctl-capture-{stamp}.log"
        self.max_seconds = max_seconds
        self.pid: int | None = None

    def start(self) -> int:
        """Start tcpdump and return once it printed ``listening on`` (sudo: not every user is root)."""
        argv = tcpdump_argv(self.interface, self.remote_file, self.ports, self.max_seconds)
        self.pid = self.conn.start(argv, log=self.remote_log, ready=READY, timeout=15, sudo=True)
        return self.pid

    def stop(self) -> TcpdumpStats:
        """SIGINT by PID, wait until it is gone, read its statistics from its log."""
        if self.pid is None:
            raise CaptureError("tcpdump was not started")
        self.conn.stop(self.pid, sig="INT", timeout=10, sudo=True)
        self.pid = None
        log = self.conn.run(["cat", self.remote_log], check=False, sudo=True, timeout=30).stdout
        return parse_stats(log)

    def fetch(self, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        return self.conn.get(self.remote_file, local)

    def remove_remote(self) -> None:
        self.conn.run(["rm", "-f", self.remote_file, self.remote_log], check=False, sudo=True, timeout=30)


@dataclass
class CaptureResult:
    """A finished capture: where the pcap is, what tcpdump counted, what the analysis read back."""

    path: Path
    node: str
    interface: str
    ports: list[int]
    stats: TcpdumpStats
    seconds: float
    interrupted: bool = False
    run: RunResult | None = None         # what ``during`` returned: the triggered run (capture --run)
    analysis: Analysis | None = None     # what ``analyse`` made of the file
    summary: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"path": str(self.path), "node": self.node, "interface": self.interface, "ports": self.ports,
                "stats": {"captured": self.stats.captured, "received": self.stats.received,
                          "dropped": self.stats.dropped},
                "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
                "summary": self.summary,
                "run": self.run.to_json() if self.run is not None else None}


def capture(conn: Connection, ports: Sequence[int], *, output: Path | None = None,
            duration: float | None = None, during: Callable[[], RunResult | None] | None = None,
            settle: float = SETTLE, remote_dir: str = REMOTE_TMP,
            on_listening: Callable[[Tcpdump], None] | None = None,
            analyse: Callable[[Path], tuple[Analysis, dict]] | None = None) -> CaptureResult:
    """Capture ``ports`` on ``conn``'s node until ``during()`` returns (+ ``settle``), ``duration``
    elapses, or Ctrl-C; bring the pcap home to ``output``; fail loudly if tcpdump lost anything.

    ``during`` runs while tcpdump listens (``capture --run`` passes the triggered run); its return
    value lands in :attr:`CaptureResult.run`. ``analyse(path)`` reads the pcap back and returns
    ``(analysis, summary)``; it must raise if the file does not read back.
    """
    if duration is not None and not 0 < duration <= MAX_SECONDS:
        raise CaptureError(f"--duration must be between 0 and {MAX_SECONDS} seconds")
    output = output or default_output(ports)
    dump = Tcpdump(conn, ports, remote_dir=remote_dir,
                   max_seconds=(duration + 30 if duration else MAX_SECONDS))
    signals = _Signals()
    signals.install()
    interrupted = False
    run_result = None
    stats: TcpdumpStats | None = None
    t0 = time.perf_counter()
    try:
        try:
            with signals.held():       # a Ctrl-C here must not leave a tcpdump whose PID we never got
                dump.start()
            if on_listening is not None:
                on_listening(dump)
            if during is not None:
                run_result = during()
                time.sleep(settle)
            elif duration is not None:
                time.sleep(duration)
            else:
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            with signals.held(reraise=False):  # clean-up runs to the end, whatever arrives meanwhile
                if dump.pid is not None:
                    try:
                        stats = dump.stop()
                    finally:
                        try:
                            dump.fetch(output)
                        finally:
                            dump.remove_remote()
                else:  # tcpdump never got going: remove its log, without hiding why
                    with contextlib.suppress(LabctlError):
                        dump.remove_remote()
    finally:
        signals.restore()
    seconds = time.perf_counter() - t0
    assert stats is not None
    result = CaptureResult(output, conn.host.name, dump.interface, list(ports), stats, seconds,
                           interrupted=interrupted, run=run_result)
    if not stats.complete:
        why = ("the kernel dropped packets: machine overloaded? capture fewer ports" if stats.dropped else
               "packets the kernel passed to tcpdump are not in the file (or other traffic hit the "
               "interface while tcpdump attached its filter)")
        raise CaptureError(f"capture INCOMPLETE on {conn.host.name}: tcpdump says {stats}; the pcap is at "
                           f"{output} but may be missing packets ({why}); capture again")
    if analyse is not None:
        try:
            result.analysis, result.summary = analyse(output)
        except LabctlError as exc:
            raise CaptureError(f"{output} does not read back: {exc}") from None
        packets = result.summary.get("packets")
        if packets is not None and packets != stats.captured:
            raise CaptureError(f"{output} holds {packets} packets but tcpdump captured {stats.captured}")
    return result
