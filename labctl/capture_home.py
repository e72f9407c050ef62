"""Where a capture goes at home: the output checked before capturing, the streams written as they come,
several nodes merged into one pcapng, and packets handed to live consumers (stdout, the live view).

Nothing here talks to a node: :mod:`labctl.capture` feeds it the bytes each node's tcpdump streams.
"""
from __future__ import annotations

import heapq
import os
import queue
import select
import shutil
import stat
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from labctl.analyse.pcap_stream import PcapStream, StreamPacket
from labctl.analyse.pcapng_write import Interface, file_header, packet_block, statistics_block
from labctl.tcpdump import CaptureError, TcpdumpStats

MIN_FREE = 1 << 20        # bytes free at home below which a capture is refused before it starts
HOLD = 0.1                # s a streamed packet of several nodes waits for an earlier one from another node

_KIND = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def check_output(path: Path) -> None:
    """Refuse, before anything is captured, an output the capture could not be written to."""
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise CaptureError(f"-o {path}: {exc.strerror}") from None
    if st is not None:
        kind = _KIND.get(stat.S_IFMT(st.st_mode))
        if kind is not None:
            hint = ("give a file name inside it, e.g. " + str(path / "capture.pcap")
                    if kind == "a directory" else "give a file path, or -o - to stream to stdout "
                    "(labctl capture -o - | wireshark -k -i -)")
            raise CaptureError(f"-o {path} is {kind}, not a file: {hint}")
        try:
            with path.open("r+b"):
                pass
        except OSError as exc:
            raise CaptureError(f"-o {path}: cannot write it ({exc.strerror})") from None
        parent = path.parent
    else:
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            path.unlink()
        except OSError as exc:
            raise CaptureError(f"-o {path}: cannot create it ({exc.strerror})") from None
    free = shutil.disk_usage(parent).free
    if free < MIN_FREE:
        raise CaptureError(f"-o {path}: only {free // 1024} KiB free there; no room for a capture")


class RawFile:
    """A node's stream written to a file as it arrives; a write error is kept, never raised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: OSError | None = None
        self.written = 0
        try:
            self._f: BinaryIO | None = path.open("wb", buffering=0)
        except OSError as exc:
            self.error, self._f = exc, None

    def write(self, data: bytes) -> None:
        if self._f is None or self.error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                n = self._f.write(view)
                view = view[n:]
                self.written += n
        except OSError as exc:
            self.error = exc

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError as exc:
                self.error = self.error or exc
            self._f = None


# --- several nodes into one pcapng --------------------------------------------------------------------

def read_packets(path: Path, chunk: int = 1 << 20) -> Iterator[StreamPacket]:
    """Every whole packet of a pcap file, read in chunks."""
    stream = PcapStream()
    with path.open("rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                return
            yield from stream.feed(data)


@dataclass
class Part:
    """One node's pcap at home, to be merged: its interface, file, clock correction and tcpdump's count."""

    interface: Interface
    path: Path
    correction_ns: int = 0
    stats: TcpdumpStats | None = None
    start_ns: int | None = None
    end_ns: int | None = None


def merge(parts: Sequence[Part], output: Path) -> list[int]:
    """Write ``parts`` as one pcapng at ``output``, packets in time order (after each node's clock
    correction); an Interface Statistics Block per node carries tcpdump's counts. Returns the number of
    packets written per interface."""
    counts = [0] * len(parts)

    def keyed(i: int, part: Part) -> Iterator[tuple[int, int, StreamPacket]]:
        for pkt in read_packets(part.path):
            yield pkt.ts_ns + part.correction_ns, i, pkt

    last = 0
    try:
        with output.open("wb", buffering=1 << 20) as f:
            f.write(file_header(p.interface for p in parts))
            for ts, i, pkt in heapq.merge(*(keyed(i, p) for i, p in enumerate(parts))):
                f.write(packet_block(i, ts, pkt.frame, pkt.orig_len))
                counts[i] += 1
                last = max(last, ts)
            for i, p in enumerate(parts):
                if p.stats is not None:
                    f.write(statistics_block(i, p.end_ns or last, received=p.stats.received,
                                             dropped=p.stats.dropped, start_ns=p.start_ns, end_ns=p.end_ns))
    except OSError as exc:
        where = ", ".join(str(p.path) for p in parts)
        raise CaptureError(f"cannot write {output} ({exc.strerror}); each node's capture is still at "
                           f"home, unmerged: {where}") from None
    return counts


# --- live consumers -----------------------------------------------------------------------------------

class Consumer(Protocol):
    """Something that takes packets as they arrive (in time order): stdout, the live view."""

    def packet(self, index: int, pkt: StreamPacket) -> None: ...
    def done(self) -> None: ...


class StdoutPcap:
    """The capture as a pcap (one node) or pcapng (several) on a binary stream, flushed per packet.

    A reader that goes away (closed pipe) sets ``closed`` and ``wake``; nothing is raised.
    """

    def __init__(self, out: BinaryIO, interfaces: Sequence[Interface], wake: threading.Event) -> None:
        self.out = out
        self.interfaces = list(interfaces)
        self.wake = wake
        self.closed = False
        self.packets = 0
        self._started = False

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.out.write(data)
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.closed = True
            self.wake.set()

    def reader_gone(self) -> bool:
        """True once the reader closed its end (a pipe's writer sees POLLERR), even with nothing to write."""
        if not self.closed:
            try:
                poll = select.poll()
                poll.register(self.out.fileno(), select.POLLERR | select.POLLHUP)
                if poll.poll(0):
                    self.closed = True
            except (AttributeError, ValueError, OSError):
                pass
        return self.closed

    def start(self) -> None:
        """Write the file header now (Wireshark waits for it before it shows anything)."""
        if self._started:
            return
        self._started = True
        if len(self.interfaces) == 1:
            i = self.interfaces[0]
            self._write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, i.snaplen, i.linktype))
        else:
            self._write(file_header(self.interfaces))

    def packet(self, index: int, pkt: StreamPacket) -> None:
        self.start()
        if len(self.interfaces) == 1:
            sec, ns = divmod(pkt.ts_ns, 1_000_000_000)
            self._write(struct.pack("<IIII", sec, ns, len(pkt.frame), pkt.orig_len) + pkt.frame)
        else:
            self._write(packet_block(index, pkt.ts_ns, pkt.frame, pkt.orig_len))
        if not self.closed:
            self.packets += 1

    def done(self) -> None:
        self.start()


class Dispatcher:
    """Hands every node's packets to the consumers in time order, from a thread of its own.

    With several nodes a packet waits up to ``hold`` seconds for an earlier one that another node's
    stream may still be delivering; with one node it goes on at once. Packets put before :meth:`start`
    (while the other nodes are still being armed) wait for it.
    """

    def __init__(self, hold: float) -> None:
        self.consumers: list[Consumer] = []
        self.corrections: list[int] = []
        self.hold = hold
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="capture-dispatch", daemon=True)
        self._seq = 0
        self.errors: list[BaseException] = []

    def start(self, consumers: Sequence[Consumer], corrections_ns: Sequence[int]) -> None:
        """Start handing packets on (those that came before wait in the queue until now)."""
        self.consumers = list(consumers)
        self.corrections = list(corrections_ns)
        self._thread.start()

    def put(self, index: int, packets: Sequence[StreamPacket]) -> None:
        if packets:
            self._q.put((index, packets, time.monotonic()))

    def close(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)

    def _emit(self, index: int, pkt: StreamPacket) -> None:
        for c in self.consumers:
            try:
                c.packet(index, pkt)
            except Exception as exc:  # one consumer's failure must not stop the capture or the others
                self.errors.append(exc)

    def _run(self) -> None:
        held: list[tuple[int, int, float, int, StreamPacket]] = []
        finished = False
        while not finished or held:
            timeout = None
            if held:
                timeout = max(0.0, held[0][2] + self.hold - time.monotonic())
            if not finished:
                try:
                    item = self._q.get(timeout=timeout)
                except queue.Empty:
                    item = ()
                if item is None:
                    finished = True
                elif item:
                    index, packets, arrived = item
                    for pkt in packets:
                        self._seq += 1
                        corrected = StreamPacket(pkt.ts_ns + self.corrections[index], pkt.frame, pkt.orig_len)
                        heapq.heappush(held, (corrected.ts_ns, self._seq, arrived, index, corrected))
            now = time.monotonic()
            while held and (finished or held[0][2] + self.hold <= now):
                _, _, _, index, pkt = heapq.heappop(held)
                self._emit(index, pkt)
        for c in self.consumers:
            try:
                c.done()
            except Exception as exc:
                self.errors.append(exc)
