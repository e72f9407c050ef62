"""One tcpdump on one node, its packets streamed home over SSH as they are captured.

On the node, one SSH exec runs::

    tcpdump --immediate-mode -U -w - FILTER | tee -p /tmp/labctl-capture-….pcap

so every packet reaches labctl the moment it is captured (live view, ``-o -``, Wireshark), and the node
keeps its own copy until labctl says the capture is safely home (``tee -p`` keeps writing that copy even
if the connection breaks). labctl stops tcpdump when a node's stream reaches the size bound; on the
node, ``timeout`` bounds tcpdump's life and ``ulimit -f`` its copy's size even if labctl is killed
outright (the bound plus ``SLACK``, at most half the node's free space). (``head -c`` would do but holds
back what it reads.) tcpdump's stderr comes back on the channel:
``listening on`` (armed), its three statistics lines when it stops. The same exec reports, first, the
node's clock and boot id (for clock offsets), the free space and the PID of the ``timeout`` wrapper,
which :meth:`NodeCapture.stop` signals (SIGINT: tcpdump writes its last packets and its statistics).
Written against :class:`~labctl.remote.Connection` only.
"""
from __future__ import annotations

import contextlib
import re
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from labctl.errors import LabctlError
from labctl.inventory import Host
from labctl.remote import Connection, RemoteError, Stream

REMOTE_TMP = "/tmp"       # the node's /tmp (each namespace node has its own): the node's copy
MAX_SECONDS = 3600        # tcpdump's life is bounded by `timeout` even if labctl is killed outright
READY = "listening on"
# tcpdump's kernel ring, KiB. In immediate mode libpcap gives every packet a frame as large as the
# interface's biggest packet (64 KiB with offloads), so the default 2 MiB holds ~30 packets: a probe
# here lost 183 of a 200-datagram burst that way. 32 MiB holds ~500.
BUFFER_KIB = 32768
MAX_BYTES = 100 << 20     # default size bound per node
SLACK = 16 << 20          # the node's own bound is this far above labctl's (it only acts if labctl is gone)
MIN_BYTES = 1 << 20       # the node's bound is at most half its free space; below this, refuse to start
NO_SPACE = 75             # the node script's exit status when the node has no room

_STAT_RE = {
    "captured": re.compile(r"^(\d+) packets? captured", re.M),
    "received": re.compile(r"^(\d+) packets? received by filter", re.M),
    "dropped": re.compile(r"^(\d+) packets? dropped by kernel", re.M),
}
_TAG_RE = re.compile(r"^labctl-(\w+) (.*)$", re.M)


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
            lines = [ln for ln in log.strip().splitlines() if not ln.startswith("labctl-")]
            tail = " / ".join(lines[-3:]) or "(nothing)"
            raise CaptureError(f"tcpdump did not report its statistics (did it crash?); it said: {tail}")
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


def tcpdump_argv(interface: str, ports: Sequence[int], max_seconds: float = MAX_SECONDS) -> list[str]:
    """tcpdump writing every byte of every packet to stdout as captured, bounded by ``timeout``."""
    return ["timeout", "--signal=INT", "--kill-after=5", f"{max(1, int(max_seconds + 0.999))}",
            "tcpdump", "-i", interface, "-n", "--immediate-mode", "-U", "-s", "0", "-B", str(BUFFER_KIB),
            "--time-stamp-precision=nano", "-w", "-", capture_filter(ports)]


def node_script(argv: Sequence[str], remote_file: str, max_bytes: int, remote_dir: str = REMOTE_TMP,
                local_boot: str | None = None) -> str:
    """The shell line run on the node: clock, free space, then tcpdump | tee -p under ``ulimit -f``.

    A node whose kernel boot id is ``local_boot`` (a namespace on this machine) says ``same`` instead
    of reading its clock.

    ``ulimit -f`` is the backstop for a labctl that is gone (labctl itself stops tcpdump earlier, at
    a packet boundary): tee may not write the node's copy past the bound, and when it stops, tcpdump's
    next write ends tcpdump too. (The limit is in 512-byte blocks in dash, 1024 in bash: at most twice
    the bound, which is at most half the free space.)
    """
    f = shlex.quote(remote_file)
    inner = f"echo labctl-pid $$ >&2; exec {shlex.join(argv)}"
    d = shlex.quote(remote_dir)
    # builtins where possible (read, set): every fork counts when several nodes arm at once
    return (f"boot=; read boot < /proc/sys/kernel/random/boot_id 2>/dev/null; "
            f"if [ \"$boot\" = {shlex.quote(local_boot or '-')} ]; then echo labctl-clock same $boot >&2; "
            f"else echo labctl-clock $(date +%s.%N) $boot >&2; fi; "
            f"set -- $(stat -f -c '%a %S' {d}); avail=$(( ${{1:-0}} * ${{2:-0}} / 1024 )); "
            f"limit=$((avail / 2 * 1024)); "
            f"if [ \"$limit\" -gt {int(max_bytes) + SLACK} ]; then limit={int(max_bytes) + SLACK}; fi; "
            f"echo labctl-space $avail $limit >&2; "
            f"if [ \"$limit\" -lt {MIN_BYTES} ]; then exit {NO_SPACE}; fi; "
            f"sh -c {shlex.quote(inner)} | ( ulimit -f $((limit / 512)); exec tee -p {f} )")


def stop_at(limit: int, max_bytes: int) -> int:
    """Where labctl stops a node's stream: at the bound asked for, or below the node's own bound (which
    free space may have lowered) by SLACK or a quarter of it."""
    return min(max_bytes, limit - min(SLACK, limit // 4))


@dataclass
class Clock:
    """What the node said its clock read, between ``sent`` and ``received`` on ours."""

    remote: float
    sent: float
    received: float
    boot_id: str

    @property
    def offset_range(self) -> tuple[float, float]:
        """The node clock minus ours lies in this interval (seconds)."""
        return self.remote - self.received, self.remote - self.sent


PacketSink = Callable[["NodeCapture", bytes], None]


class NodeCapture:
    """tcpdump on one node: armed by :meth:`start`, read by a thread, stopped by PID in :meth:`stop`.

    Everything the stream delivers goes to ``sink(self, data)`` (from the reader thread) as it arrives.
    ``wake`` is set when the stream ends or the size bound is reached, so whoever waits notices at once.
    """

    def __init__(self, conn: Connection, ports: Sequence[int], sink: PacketSink, *,
                 interface: str | None = None, remote_dir: str = REMOTE_TMP,
                 max_seconds: float = MAX_SECONDS, max_bytes: int = MAX_BYTES,
                 wake: threading.Event | None = None, local_boot: str | None = None) -> None:
        self.conn = conn
        self.local_boot = local_boot
        self.host: Host = conn.host
        self.ports = list(ports)
        self.interface = interface or self.host.lab_interface
        stamp = f"{time.time():.6f}".replace(".", "-")
        self.remote_file = f"{remote_dir}/labctl-capture-{stamp}-{self.host.name}.pcap"
        self.remote_dir = remote_dir
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.sink = sink
        self.wake = wake or threading.Event()
        self.pid: int | None = None
        self.clock: Clock | None = None
        self.free_kib: int | None = None
        self.limit: int | None = None
        self.bytes = 0
        self.bound_hit = False
        self.stopping = False          # labctl asked it to stop (else an end is a vanished tcpdump)
        self.ended = threading.Event()
        self.exit_status: int | None = None
        self.lost: str | None = None   # why the stream broke (connection lost), if it did
        self.started_at = 0.0
        self.ended_at = 0.0
        self._by_itself = False
        self._stderr = bytearray()
        self._ready = threading.Event()
        self._stream: Stream | None = None
        self._thread: threading.Thread | None = None
        self._sent = 0.0

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    @property
    def vanished(self) -> bool:
        """tcpdump ended without being asked to (killed, crashed, the node went away)."""
        return self._by_itself

    def start(self, timeout: float = 15.0) -> None:
        """Start tcpdump and return once it said ``listening on``; raise with what it said if not."""
        script = node_script(tcpdump_argv(self.interface, self.ports, self.max_seconds), self.remote_file,
                             self.max_bytes, self.remote_dir, self.local_boot)
        self._sent = time.time()
        self._stream = self.conn.stream(["sh", "-c", script], sudo=True)
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._read, name=f"tcpdump-{self.host.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.ended.is_set() or time.monotonic() > deadline:
                break
        if self._ready.is_set():
            return
        said = " / ".join(ln for ln in self.stderr.strip().splitlines()
                          if not ln.startswith("labctl-"))[-300:]
        if self.exit_status == NO_SPACE:
            raise CaptureError(f"{self.host.name}: only {self.free_kib or 0} KiB free in "
                               f"{self.remote_dir} on the node: no room for a capture")
        if not self.ended.is_set():
            if self.pid is not None:
                self._kill()
            raise CaptureError(f"{self.host.name}: tcpdump was not listening within {timeout:g} s"
                               + (f"; it said: {said}" if said else ""))
        raise CaptureError(f"{self.host.name}: tcpdump could not start on {self.interface}"
                           + (f": {said}" if said else f" (exit status {self.exit_status})"))

    def _read(self) -> None:
        assert self._stream is not None
        try:
            self.exit_status = self._stream.pump(self._on_stdout, self._on_stderr)
            if self.exit_status == -1:
                self.lost = "the connection closed before tcpdump's end"
        except RemoteError as exc:
            self.lost = str(exc)
        finally:
            self.ended_at = time.perf_counter()
            self._by_itself = not self.stopping and not self.bound_hit
            self.ended.set()
            self.wake.set()

    def _on_stdout(self, data: bytes) -> None:
        self.bytes += len(data)
        self.sink(self, data)
        if self.limit is not None and not self.bound_hit \
                and self.bytes >= stop_at(self.limit, self.max_bytes):
            self.bound_hit = True
            self.wake.set()

    def _on_stderr(self, data: bytes) -> None:
        now = time.time()
        self._stderr += data
        if self._ready.is_set():
            return
        text = self.stderr
        for tag, rest in _TAG_RE.findall(text):
            words = rest.split()
            if tag == "clock" and self.clock is None and words:
                boot = words[1] if len(words) > 1 else ""
                if words[0] == "same":
                    self.clock = Clock(now, self._sent, now, boot)
                else:
                    with contextlib.suppress(ValueError):
                        self.clock = Clock(float(words[0]), self._sent, now, boot)
            elif tag == "space" and len(words) == 2 and all(w.isdigit() for w in words):
                self.free_kib, self.limit = int(words[0]), int(words[1])
            elif tag == "pid" and words and words[0].isdigit():
                self.pid = int(words[0])
        if READY in text and self.pid is not None:
            self._ready.set()

    def stop(self, timeout: float = 15.0) -> TcpdumpStats | None:
        """SIGINT by PID (if it still runs), wait for the stream's end, read tcpdump's statistics.

        Returns None when tcpdump ended without printing them (killed, or the stream broke).
        """
        self.stopping = True
        if self.pid is not None and not self.ended.is_set():
            with contextlib.suppress(LabctlError):  # the stream's end below says what happened
                self.conn.stop(self.pid, sig="INT", timeout=10, sudo=True)
        self.ended.wait(timeout)
        if not self.ended.is_set():  # tcpdump stopped but the stream does not end: cut it
            self.lost = self.lost or f"the stream did not end within {timeout:g} s of tcpdump's stop"
            if self._stream is not None:
                self._stream.close()
            self.ended.wait(5)
        try:
            return parse_stats(self.stderr)
        except CaptureError:
            return None

    def _kill(self) -> None:
        with contextlib.suppress(LabctlError):
            self.conn.stop(self.pid, sig="INT", timeout=5, sudo=True)
        if self._stream is not None:
            self._stream.close()

    def remote_size(self) -> int | None:
        """Bytes of the node's copy, or None if it is not there."""
        r = self.conn.run(["stat", "-c", "%s", self.remote_file], check=False, sudo=True, timeout=30)
        return int(r.stdout.strip()) if r.ok and r.stdout.strip().isdigit() else None

    def fetch_remote(self, local) -> None:
        """Bring the node's copy home over SFTP (a fresh connection if the old one broke)."""
        if self.lost:
            self.conn.close()
        self.conn.get(self.remote_file, local)

    def remove_remote(self) -> None:
        self.conn.run(["rm", "-f", self.remote_file], check=False, sudo=True, timeout=30)
