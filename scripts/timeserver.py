#!/usr/bin/env python3
"""timeserver.py: the lab's time servers, standard library only (Python >= 3.9).

Three files, read in this order:
  timeserver_protocol.py  what the server says: every reply, as plain functions
  timeserver_limits.py    what it refuses: connection caps, UDP rate limits, the log's budget
  timeserver.py           how: the sockets, one thread per simple service, the event loop (this file)

Serves, on --bind (default 0.0.0.0):
  TCP --port (8080)            on connect: one line, the UTC time, then close
  UDP --port (8080)            a datagram: the time (never more than 3x the request's bytes)
  TCP --proto-port (8081)      the line protocol: GET TIME, SAY HI, several requests a connection
  TCP+UDP --time-port (0=off)  RFC 868 TIME

Log: one line per exchange on stderr (--quiet: none), at most --log-rate lines a second per service.
The line `timeserver listening ...` goes to stdout once every socket is bound.
SIGTERM/SIGINT: stop accepting, finish in-flight exchanges (at most --drain-timeout s), exit 0.

How it is built, for speed: the TCP time port and the UDP ports each have a thread that blocks in
accept() or recvfrom() and answers at once (accept, write, close: three system calls a connection;
TCP_CORK lets the line and the FIN share one segment). The line protocol, whose connections stay open,
is one epoll loop over non-blocking sockets in the main thread. --workers N forks N-1 more processes
onto the same sockets (one acceptor for accept-and-close); on the 2-core lab machine that cost more
CPU per connection and doubled the UDP p99, so the default is 1.
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
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its two other files (even under -I)
from timeserver_limits import (
    ConnectionLimits,
    Log,
    TokenBuckets,
    connection_slots,
    parse_args,
    peer_str,
    raise_fd_limit,
    show,
    write_log,
)
from timeserver_protocol import (
    ERR_IDLE,
    ERR_STOPPING,
    ERR_TOO_LONG,
    Clock,
    LineTooLong,
    answer,
    rfc868_reply,
    split_lines,
    udp_reply,
)

MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0)
DRAIN_BYTES = 65536  # after our last reply, read and drop at most this much before closing
LOG_DELAY = 0.02  # seconds a log line may wait to be written with others
SERVICES = ("tcp", "udp", "proto", "time-tcp", "time-udp")


# ---------------------------------------------------------------------------------------------------
# 1. Sockets

def bind_socket(host: str, port: int, kind: int) -> socket.socket:
    """A bound (and, for TCP, listening) socket. No SO_REUSEPORT: a second server on the same port is
    an error, not a silent split of the traffic."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(4096)
    except BaseException:
        s.close()
        raise
    return s


def open_sockets(host: str, port: int, proto_port: int, time_port: int) -> dict[str, socket.socket]:
    """Every listening socket. --port 0 lets the kernel pick; udp then takes tcp's number (retried
    when that number is taken for UDP)."""
    plan = [("tcp", port, socket.SOCK_STREAM), ("udp", port, socket.SOCK_DGRAM),
            ("proto", proto_port, socket.SOCK_STREAM)]
    if time_port:
        plan += [("time-tcp", time_port, socket.SOCK_STREAM), ("time-udp", time_port, socket.SOCK_DGRAM)]
    for attempt in range(20):
        socks: dict[str, socket.socket] = {}
        try:
            for name, p, kind in plan:
                socks[name] = bind_socket(host, socks["tcp"].getsockname()[1] if name == "udp" else p, kind)
                if name in ("tcp", "time-tcp") and hasattr(socket, "TCP_CORK"):
                    # accepted sockets inherit the cork: the reply and the FIN leave in one segment
                    socks[name].setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            return socks
        except BaseException as e:
            for s in socks.values():
                s.close()
            if not isinstance(e, OSError) or e.errno != errno.EADDRINUSE or port != 0 or attempt == 19:
                raise
    raise AssertionError("unreachable")


def accept_spare(sock: socket.socket, spare: int) -> int:
    """Out of file descriptors: free the spare one, accept and close, so the backlog cannot wedge us."""
    os.close(spare)
    with contextlib.suppress(OSError):
        os.close(sock._accept()[0])
    return os.open(os.devnull, os.O_RDONLY)


# ---------------------------------------------------------------------------------------------------
# 2. The accept-and-close ports and the UDP ports: one thread each, blocking, three lines of work

def serve_accept_and_close(sock: socket.socket, form: str, log: Log | None) -> None:
    """TCP --port (form "line") or the RFC 868 TCP port ("rfc868"): accept, write the time, close.

    A fresh socket's send buffer (>= 4 KiB) always takes the reply: the write cannot block. The
    raw `_accept` spares a socket object per connection (a sixth of the CPU a connection costs).
    """
    sock.setblocking(True)
    accept, write, close = sock._accept, os.write, os.close
    clock = Clock()
    spare = os.open(os.devnull, os.O_RDONLY)
    while True:
        try:
            fd, addr = accept()
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EBADF):  # shut down: the server is stopping
                break
            if e.errno in (errno.EMFILE, errno.ENFILE):
                spare = accept_spare(sock, spare)
                note = "dropped: out of file descriptors"
            elif e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN):
                continue
            else:
                time.sleep(0.01)  # unexpected: log it, never spin
                note = f"accept error: {e}"
            if log is not None:
                log.line(clock.tick(), "-", "-", 0, 0, note)
            continue
        reply = getattr(clock.tick(), form)
        try:
            n, note = write(fd, reply), ""
        except OSError as e:
            n, note = 0, "error: " + (e.strerror or str(e))
        close(fd)
        if log is not None:
            log.line(clock, addr, "-", 0, n, note)
    os.close(spare)


def serve_datagrams(sock: socket.socket, form: str, buckets: TokenBuckets | None, log: Log | None) -> None:
    """UDP --port (form "udp") or RFC 868 over UDP ("rfc868"): one reply per datagram, within 3x its
    size, through the source's token bucket. Returns when the socket is shut down."""
    sock.setblocking(True)
    buf = bytearray(2048)
    recv, send, monotonic = sock.recvfrom_into, sock.sendto, time.monotonic
    clock = Clock()
    while True:
        try:
            n, addr = recv(buf, 0, MSG_TRUNC)  # n: the datagram's real size, even beyond buf
        except OSError as e:
            if e.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                return
            continue
        if addr is None:  # shut down: the server is stopping
            return
        clock.tick()
        reply = udp_reply(n, clock.iso, clock.seconds) if form == "udp" else rfc868_reply(n, clock.rfc868)
        out, note = 0, ""
        if reply is None:
            note = "no reply: 3x bound"
        elif buckets is not None and not buckets.allow(addr[0], monotonic()):
            note = "no reply: rate limit"
        else:
            try:
                out = send(reply, addr)
            except OSError as e:
                note = "dropped: " + (e.strerror or str(e))
        if log is not None:
            log.line(clock, addr, buf[:min(n, 41)], n, out, note)


# ---------------------------------------------------------------------------------------------------
# 3. The line protocol: connections that stay open, served by one epoll loop

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


# ---------------------------------------------------------------------------------------------------
# 4. One worker: the threads and the loop; main: arguments, sockets, workers

def serve(o: argparse.Namespace, socks: dict[str, socket.socket], index: int, slots: object | None,
          children: dict[int, int], announce: str = "") -> int:
    """Run one worker until SIGTERM/SIGINT (or, for a forked worker, until its parent is gone);
    `announce` goes to stdout once it is ready."""
    n = o.workers
    out: list[str] = []
    logs = {} if o.quiet else {name: Log(name, max(1, o.log_rate // n), out) for name in SERVICES}
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    buckets = None if o.no_rate_limit else TokenBuckets(o.rate_limit / n, max(1.0, o.rate_burst / n))
    threads = []
    for name, s in socks.items():
        if name in ("tcp", "time-tcp") and index == 0:  # one acceptor: a second only adds contention
            form = "line" if name == "tcp" else "rfc868"
            target, args = serve_accept_and_close, (s, form, logs.get(name))
        elif name in ("udp", "time-udp"):
            form = "udp" if name == "udp" else "rfc868"
            target, args = serve_datagrams, (s, form, buckets, logs.get(name))
        else:
            continue
        threads.append(threading.Thread(target=target, args=args, name=name, daemon=True))
    per_source = -(-o.max_conns_per_source // n)
    limits = ConnectionLimits(max(1, o.max_conns // n), per_source, slots)
    loop = LineServer(o, socks.get("proto"), limits, logs, out, exclusive=n > 1)
    for t in threads:
        t.start()
    if announce:
        print(announce, flush=True)
    parent = os.getppid()

    def should_stop() -> bool:
        for pid in list(children):  # worker 0 reaps the others
            if os.waitpid(pid, os.WNOHANG)[0]:
                idx = children.pop(pid)
                if not stop.is_set() and loop.log is not None:
                    loop.note(None, "-", 0, 0, f"worker {idx} (pid {pid}) died")
        return stop.is_set() or (index > 0 and os.getppid() != parent)

    loop.run(should_stop)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for s in socks.values():  # wakes the threads blocked in accept()/recvfrom()
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
    for t in threads:
        t.join(timeout=5)
    deadline = time.monotonic() + o.drain_timeout + 2.0
    while children and time.monotonic() < deadline:
        for pid in [p for p in children if os.waitpid(p, os.WNOHANG)[0]]:
            del children[pid]
        time.sleep(0.01)
    for log in logs.values():
        log.roll(Clock(), last=True)
    write_log(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    limit = raise_fd_limit(o.max_conns + 64 * o.workers + 64)
    if o.max_conns + 32 * o.workers > limit:
        o.max_conns = max(1, limit - 32 * o.workers)
        print(f"timeserver: file descriptor limit {limit}: --max-conns lowered to {o.max_conns}",
              file=sys.stderr)
    try:
        socks = open_sockets(o.bind, o.port, o.proto_port, o.time_port)
    except OSError as e:
        ports = ", ".join(str(p) for p in (o.port, o.proto_port, o.time_port) if p)
        print(f"timeserver: cannot listen on {o.bind} port(s) {ports}: {e}", file=sys.stderr)
        return 1
    except (ValueError, OverflowError, UnicodeError) as e:
        print(f"timeserver: bad --bind address {o.bind!r}: {e}", file=sys.stderr)
        return 1
    slots = connection_slots(o.max_conns) if o.workers > 1 else None
    children: dict[int, int] = {}
    for idx in range(1, o.workers):  # before any thread starts: fork and threads do not mix
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = serve(o, socks, idx, slots, {})
            except BaseException as e:
                os.write(2, f"timeserver: worker {idx} failed: {e!r}\n".encode())
            finally:
                os._exit(code)
        children[pid] = idx
    h = f"[{o.bind}]" if ":" in o.bind else o.bind
    parts = " ".join(f"{name}={h}:{s.getsockname()[1]}" for name, s in socks.items())
    return serve(o, socks, 0, slots, children,
                 f"timeserver listening {parts} workers={o.workers} pid={os.getpid()}")


if __name__ == "__main__":
    sys.exit(main())
