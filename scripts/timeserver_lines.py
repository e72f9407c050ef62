"""The time server's line protocol connections (TCP --proto-port), which stay open: one epoll loop.

Read timeserver_protocol.py (what each request gets), timeserver_limits.py (what is refused) and
timeserver.py (the sockets and the workers, which run this loop in their main thread) first.

The loop keeps every connection non-blocking and never waits on one client: a request line is
answered as soon as it is complete; output that does not fit the socket buffer waits for EPOLLOUT
and, until it is out, nothing more is read from that client; a connection with no complete request
for --idle-timeout s gets `ERR idle timeout` and is closed; on SIGTERM/SIGINT the listener closes,
idle connections close at once, and requests in flight get --drain-timeout s to finish.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import os
import select
import signal
import socket
import time

from timeserver_limits import ConnectionLimits, Log, accept_spare, peer_str, show, write_log
from timeserver_protocol import ERR_IDLE, ERR_STOPPING, ERR_TOO_LONG, Clock, LineTooLong, answer, split_lines

DRAIN_BYTES = 65536  # after our last reply, read and drop at most this much before closing
LOG_DELAY = 0.02  # seconds a log line may wait to be written with others


class Conn:
    """One line-protocol connection: its socket, the unterminated input, pending output, deadline.

    closing: close once the output is out (after EOF, or `ERR line too long`);
    draining: our side is shut down for writing and the peer's leftovers are read and dropped until
    its EOF (at most DRAIN_BYTES or 1 s), so that closing does not reset our last reply away.
    """

    __slots__ = ("closing", "deadline", "discarded", "draining", "eof", "out", "peer", "rest", "sock",
                 "source", "writing")

    def __init__(self, sock: socket.socket, addr: tuple, deadline: float) -> None:
        self.sock = sock
        self.source = addr[0]
        self.peer = peer_str(addr)
        self.rest = self.out = b""
        self.deadline = deadline
        self.eof = self.closing = self.draining = self.writing = False
        self.discarded = 0


class LineServer:
    """The main thread of one worker: the line-protocol connections, the signals, the log's output."""

    def __init__(self, o: argparse.Namespace, listener: socket.socket | None, limits: ConnectionLimits,
                 logs: dict[str, Log], out: list[str], exclusive: bool) -> None:
        self.o, self.listener, self.limits, self.logs, self.out = o, listener, limits, logs, out
        self.log = logs.get("proto")
        self.clock = Clock()
        self.poller = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.stopping = False
        self.stop_deadline = 0.0
        self.spare = os.open(os.devnull, os.O_RDONLY)
        self.wake_r, self.wake_w = socket.socketpair()
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.poller.register(self.wake_r.fileno(), select.EPOLLIN)
        if listener is not None:
            listener.setblocking(False)
            excl = getattr(select, "EPOLLEXCLUSIVE", 0) if exclusive else 0
            self.poller.register(listener.fileno(), select.EPOLLIN | excl)  # one wake-up per event

    def note(self, c: Conn | None, req: str, nin: int, nout: int, note: str = "") -> None:
        if self.log is not None:
            self.log.line(self.clock.tick(), c.peer if c else "-", req, nin, nout, note)

    # -- admission --
    def accept(self) -> None:
        for _ in range(128):  # at most this many per readiness event, so the others get their turn
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    self.spare = accept_spare(self.listener, self.spare)
                    self.note(None, "-", 0, 0, "dropped: out of file descriptors")
                return
            refusal = ERR_STOPPING if self.stopping else self.limits.take(addr[0])
            c = Conn(sock, addr, time.monotonic() + self.o.idle_timeout)
            if refusal is not None:
                try:
                    n = sock.send(refusal)  # a fresh socket: cannot block
                except OSError:
                    n = 0
                sock.close()
                self.note(c, "-", 0, n, "refused: " + refusal[4:-1].decode())
                continue
            sock.setblocking(False)
            self.conns[sock.fileno()] = c
            self.poller.register(sock.fileno(), select.EPOLLIN)

    # -- reading and answering --
    def on_event(self, c: Conn) -> None:
        if c.writing:  # registered for EPOLLOUT only
            if self.flush(c):
                if c.closing:
                    self.finish(c)
                elif self.stopping and not c.rest:
                    self.close(c)
            return
        try:
            data = c.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as e:
            self.close(c, "reset: " + (e.strerror or str(e)), show(c.rest) if c.rest else "-")
            return
        if c.draining:
            c.discarded += len(data)
            if not data or c.discarded > DRAIN_BYTES:
                self.close(c)
        elif not data:  # EOF (half-close or close): answer a last unterminated request, then close
            c.eof = c.closing = True
            if c.rest:
                last, c.rest = c.rest, b""
                self.answer(c, [last[:-1] if last.endswith(b"\r") else last])
            elif not c.out:
                self.close(c)
                return
            if self.flush(c):
                self.finish(c)
        else:
            self.on_data(c, c.rest + data if c.rest else data)

    def on_data(self, c: Conn, buf: bytes) -> None:
        try:
            lines, c.rest = split_lines(buf, self.o.max_line)
        except LineTooLong:
            c.rest, c.closing = b"", True
            c.out += ERR_TOO_LONG
            self.note(c, show(buf), len(buf), len(ERR_TOO_LONG), "closing: line too long")
            if self.flush(c):
                self.finish(c)
            return
        if lines:
            self.answer(c, lines)
            c.deadline = time.monotonic() + self.o.idle_timeout  # only a complete request counts
            if self.flush(c) and self.stopping and not c.rest:
                self.close(c)

    def answer(self, c: Conn, lines: list[bytes]) -> None:
        time_line = self.clock.tick().line
        replies = [answer(line, time_line) for line in lines]
        c.out += b"".join(replies)
        if self.log is not None:
            for line, r in zip(lines, replies):
                self.log.line(self.clock, c.peer, line, len(line), len(r))

    # -- writing and closing --
    def flush(self, c: Conn) -> bool:
        """Write pending output; True when all of it is out. While some is left, stop reading (so a
        client that sends and never reads cannot make us hold more than one socket buffer of it)."""
        if c.out:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                n = 0
            except OSError as e:
                self.close(c, "reset: " + (e.strerror or str(e)))
                return False
            c.out = c.out[n:]
        if c.out != b"" and not c.writing:
            c.writing = True
            self.poller.modify(c.sock.fileno(), select.EPOLLOUT)
        elif not c.out and c.writing:
            c.writing = False
            self.poller.modify(c.sock.fileno(), select.EPOLLIN)
        return not c.out

    def finish(self, c: Conn) -> None:
        """All output is out and we are done: close, or (the peer still sending) shut down and drain."""
        if c.eof:
            self.close(c)
            return
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(c)
            return
        c.draining = True
        c.deadline = time.monotonic() + 1.0

    def close(self, c: Conn, note: str = "", req: str = "-") -> None:
        if self.conns.pop(c.sock.fileno(), None) is None:
            return
        self.limits.give_back(c.source)
        self.poller.unregister(c.sock.fileno())
        c.sock.close()
        if note:
            self.note(c, req, 0, 0, note)

    def sweep(self, now: float) -> None:
        """Idle timeouts (a connection with no complete request in --idle-timeout s); the log's summaries."""
        for c in [c for c in self.conns.values() if c.deadline <= now]:
            if not c.draining and not c.writing:
                with contextlib.suppress(OSError):
                    c.sock.send(ERR_IDLE)
            self.close(c, "" if c.draining else "closed: idle timeout", show(c.rest) if c.rest else "-")
        for log in self.logs.values():
            log.roll(self.clock.tick())

    # -- the loop --
    def on_signal(self) -> None:
        try:
            while self.wake_r.recv(64):
                pass
        except OSError:
            pass

    def begin_stop(self) -> None:
        """Stop accepting; close every connection that has no request in flight."""
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.o.drain_timeout
        if self.listener is not None:
            self.poller.unregister(self.listener.fileno())
            self.listener.close()
            self.listener = None
        for c in list(self.conns.values()):
            if (not c.rest and not c.out) or c.draining:
                self.close(c)

    def run(self, should_stop: object) -> None:
        """Serve until `should_stop()` says so and the in-flight requests are done (or time is up)."""
        gc.collect()
        gc.freeze()  # the start-up objects never need scanning again: short, rare collections
        poll, conns, monotonic = self.poller.poll, self.conns, time.monotonic
        listen_fd = self.listener.fileno() if self.listener is not None else -1
        wake_fd = self.wake_r.fileno()
        next_sweep = log_due = 0.0
        while True:
            if not self.stopping and should_stop():
                self.begin_stop()
            if self.stopping and (not conns or monotonic() >= self.stop_deadline):
                break
            for fd, _ev in poll(LOG_DELAY if self.out else 0.25):
                c = conns.get(fd)
                try:
                    if c is not None:
                        self.on_event(c)
                    elif fd == listen_fd and not self.stopping:
                        self.accept()
                    elif fd == wake_fd:
                        self.on_signal()
                except Exception as e:  # a bug must cost one connection, never the server
                    self.note(c, "-", 0, 0, f"internal error: {e!r}")
                    if c is not None:
                        self.close(c)
            now = monotonic()
            if now >= next_sweep:
                next_sweep = now + min(0.25, self.o.idle_timeout / 4)
                self.sweep(now)
            if self.out and (now >= log_due or len(self.out) >= 512):  # one write per LOG_DELAY
                write_log(self.out)
                log_due = now + LOG_DELAY
        for c in list(conns.values()):
            self.close(c, "closed: server stopping", show(c.rest) if c.rest else "-")
