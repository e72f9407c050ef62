#!/usr/bin/env python3
"""timeserver.py: the lab's time servers in one stdlib-only file (Python >= 3.9).

Serves, on --bind (default 0.0.0.0):
  TCP --port (8080)        on connect: one line, the UTC time `2026-11-25T09:39:51.123Z\\n`, then close
  UDP --port (8080)        any datagram of >= 8 bytes: the 24-byte time `2026-11-25T09:39:51.123Z`
  TCP --proto-port (8081)  line protocol: `GET TIME` -> time line, `SAY HI` -> `Hello, World!`,
                           anything else -> one `ERR ...` line; several requests per connection
  TCP+UDP --time-port (0=off)  RFC 868 TIME: 4 bytes, big-endian seconds since 1900-01-01

Limits (never die, never block, never amplify):
  * request lines are capped at --max-line bytes (without the LF/CRLF): `ERR line too long`, then close
  * a connection that completes no request for --idle-timeout seconds gets `ERR idle timeout` and is
    closed (trickling bytes does not reset the clock: slowloris-safe)
  * at most --max-conns proto connections over all workers (a semaphore they share); the excess
    gets `ERR busy`
  * a UDP reply is never more than 3x the request's bytes (RFC 9000 8.1), on every UDP port:
      main port: >= 8 bytes -> 24-byte time; 7 bytes -> 20-byte time `2026-11-25T09:39:51Z`;
                 0..6 bytes -> no reply
      RFC 868:   >= 2 bytes -> 4 bytes; 0..1 bytes -> no reply (so `rdate -u`, which sends an empty
                 datagram, gets nothing from this server by design; `rdate -p` over TCP works)
  * UDP replies per source address go through a token bucket (--rate-limit/--rate-burst, on by
    default; --no-rate-limit for benchmarks). Each worker holds rate/workers and burst/workers of
    it, so the total a source can get never exceeds the configured rate/burst.

One log line per exchange goes to stderr (`--quiet` turns it off):
  <utc time> <service> <peer> <request repr> <bytes in>B -> <bytes out>B [note]
The line `timeserver listening ...` goes to stdout once every socket of the first worker is bound.
SIGTERM/SIGINT: stop accepting, finish in-flight exchanges (at most --drain-timeout s), exit 0.

Speed: one process, one epoll loop over non-blocking sockets, plus one thread that serves the TCP
time-and-close port with a blocking accept (accept, write, close: three system calls a connection;
TCP_CORK lets the line and the FIN share one segment). Replies carry the
current millisecond: the time string is rebuilt whenever the millisecond changes, never reused
across milliseconds. --workers N forks N-1 more loops onto the same sockets (EPOLLEXCLUSIVE: one
wake-up per event; the accept-and-close ports keep a single acceptor, see SINGLE_ACCEPTOR). That
only pays where the server has cores to itself: on the 2-core lab machine, with the clients on the
same cores, a second worker cost more CPU per TCP connection (13 vs 10 us) and doubled the UDP p99
(SO_REUSEPORT was worse still: per-socket queues strand a parked worker's flows), so the default is 1.
"""
# ruff: noqa: UP031, SIM105, SIM108
# (%-formatting is the fastest in the hot paths; plain try/except avoids importing contextlib)
from __future__ import annotations

import argparse
import errno
import gc
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator

MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0)
SECONDS_1900_TO_1970 = 2208988800
DRAIN_BYTES = 65536  # after our last reply, read and drop at most this much before closing
# Accept-and-close ports have one acceptor: a second process on the same accept queue only adds lock
# contention (13 instead of 10 us of CPU per connection measured here) and the work per connection
# is tiny. Datagrams and line-protocol connections spread over all workers.
SINGLE_ACCEPTOR = ("tcp", "time-tcp")
LOG_DELAY = 0.02  # seconds a log line may wait to be written with others
LOG_CHUNK = 4000  # < PIPE_BUF, so workers' log writes to one pipe never interleave inside a line

EPOLLIN = 0x001
EPOLLOUT = 0x004
EPOLLERR = 0x008
EPOLLHUP = 0x010

HELLO = b"Hello, World!\n"
ERR_UNKNOWN = b"ERR unknown command (try GET TIME or SAY HI)\n"
ERR_EMPTY = b"ERR empty line (try GET TIME or SAY HI)\n"
ERR_TOO_LONG = b"ERR line too long\n"
ERR_BUSY = b"ERR busy\n"
ERR_IDLE = b"ERR idle timeout\n"
ERR_STOPPING = b"ERR server stopping\n"


# ---------------------------------------------------------------------------------------------------
# The line protocol, as pure functions (the unit tests and the property test drive these directly).

class LineTooLong(Exception):
    """A request line (or an unterminated tail) exceeded the cap."""


def split_lines(buf: bytes, max_line: int) -> tuple[list[bytes], bytes]:
    """Split `buf` into complete lines (LF or CRLF, terminator removed) and the unterminated rest.

    Raises LineTooLong when a complete line, or the rest, is longer than `max_line` bytes (the rest
    may hold one extra byte: a CR waiting for its LF).
    """
    lines = []
    start = 0
    find = buf.find
    while True:
        i = find(b"\n", start)
        if i < 0:
            break
        end = i - 1 if i > start and buf[i - 1] == 13 else i
        if end - start > max_line:
            raise LineTooLong
        lines.append(buf[start:end])
        start = i + 1
    rest = buf[start:]
    if len(rest) > max_line + (1 if rest.endswith(b"\r") else 0):
        raise LineTooLong
    return lines, rest


def answer(line: bytes, time_line: bytes) -> bytes:
    """The reply (one line, LF-terminated) to one request line of the proto port."""
    if line.startswith(b"GET TIME"):
        return time_line
    if line.startswith(b"SAY HI"):
        return HELLO
    if not line.strip():
        return ERR_EMPTY
    return ERR_UNKNOWN


def udp_reply(nbytes: int, full: bytes, seconds: bytes) -> bytes | None:
    """The main UDP port's reply to a datagram of `nbytes`: never more than 3x its size."""
    limit = 3 * nbytes
    if limit >= len(full):
        return full
    if limit >= len(seconds):
        return seconds
    return None


def rfc868_reply(nbytes: int, four: bytes) -> bytes | None:
    """The RFC 868 UDP reply: 4 bytes when 3x the request allows it, else nothing."""
    return four if 3 * nbytes >= 4 else None


def rfc868_bytes(unix_seconds: int) -> bytes:
    """RFC 868 time: seconds since 1900-01-01 00:00 UTC, big-endian, modulo 2**32 (era wrap 2036)."""
    return struct.pack("!I", (unix_seconds + SECONDS_1900_TO_1970) & 0xFFFFFFFF)


def iso_ms(ms: int) -> str:
    """`2026-11-25T09:39:51.123Z` for a Unix time in milliseconds (always 24 characters until 9999)."""
    sec, milli = divmod(ms, 1000)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (*time.gmtime(sec)[:6], milli)


class TokenBuckets:
    """Per-source-address token buckets in a bounded dict.

    When the table is full, buckets that have refilled completely are dropped (they carry no
    state); if it is still full, new sources share one overflow bucket. So memory is bounded and
    a flood of spoofed sources cannot reset anyone's bucket.
    """

    __slots__ = ("buckets", "burst", "max_entries", "overflow", "rate")

    def __init__(self, rate: float, burst: float, max_entries: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self.buckets: dict[str, list[float]] = {}
        self.overflow = [burst, 0.0]

    def allow(self, source: str, now: float) -> bool:
        """Take one token for `source` at monotonic time `now`; False when it has none left."""
        b = self.buckets.get(source)
        if b is None:
            if len(self.buckets) >= self.max_entries:
                self.purge(now)
            if len(self.buckets) >= self.max_entries:
                b = self.overflow
            else:
                b = self.buckets[source] = [self.burst, now]
        tokens = b[0] + (now - b[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            return False
        b[0] = tokens - 1.0
        return True

    def purge(self, now: float) -> None:
        """Forget buckets that are full again (their state equals a new bucket's)."""
        full_after = self.burst / self.rate if self.rate > 0 else float("inf")
        for key in [k for k, b in self.buckets.items() if now - b[1] >= full_after]:
            del self.buckets[key]


# ---------------------------------------------------------------------------------------------------
# Sockets

def bind_socket(host: str, port: int, kind: int) -> socket.socket:
    """A non-blocking bound (and, for TCP, listening) socket. No SO_REUSEPORT: a second server on the
    same port is an error, not a silent split of the traffic."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(4096)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def open_sockets(host: str, port: int, proto_port: int, time_port: int) -> dict[str, socket.socket]:
    """Every listening socket. --port 0 lets the kernel pick; udp then takes tcp's number."""
    plan = [("tcp", port, socket.SOCK_STREAM, None), ("udp", port, socket.SOCK_DGRAM, "tcp"),
            ("proto", proto_port, socket.SOCK_STREAM, None)]
    if time_port:
        plan += [("time-tcp", time_port, socket.SOCK_STREAM, None),
                 ("time-udp", time_port, socket.SOCK_DGRAM, None)]
    for attempt in range(20):
        socks: dict[str, socket.socket] = {}
        try:
            for name, p, kind, twin in plan:
                if p == 0 and twin:
                    p = socks[twin].getsockname()[1]
                socks[name] = bind_socket(host, p, kind)
                if name in ("tcp", "time-tcp") and hasattr(socket, "TCP_CORK"):
                    # accepted sockets inherit the cork: the reply and the FIN leave in one segment
                    socks[name].setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            return socks
        except OSError as e:
            for s in socks.values():
                s.close()
            if e.errno != errno.EADDRINUSE or port != 0 or attempt == 19:
                raise  # (only a kernel-picked tcp port whose number is taken for udp is retried)
        except BaseException:
            for s in socks.values():
                s.close()
            raise
    raise AssertionError("unreachable")


def raise_fd_limit(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards `want`; return the soft limit in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else want


class Poller:
    """select.epoll, or select.poll where there is no epoll (same event bits, timeout in ms)."""

    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._p = select.epoll()
            self.poll = self._p.poll
            self.close = self._p.close
        else:  # pragma: no cover - not Linux
            self._p = select.poll()
            self.poll = lambda timeout: self._p.poll(timeout * 1000.0)
            self.close = lambda: None
        self.register = self._p.register
        self.modify = self._p.modify
        self.unregister = self._p.unregister


def peer_str(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def show(data: bytes) -> str:
    """A request for the log: repr of at most 40 bytes (no raw newlines or control bytes)."""
    return repr(data[:40])[1:] + ("..." if len(data) > 40 else "")


# ---------------------------------------------------------------------------------------------------
# The event loop (one per worker process)

class Conn:
    """One proto-port connection: raw non-blocking fd, input tail, pending output, deadline.

    closing: close once the output is out (after EOF, or `ERR line too long`);
    draining: our side is shut down for writing, the peer's leftovers are read and dropped until its
    EOF (at most DRAIN_BYTES or 1 s), so that the close does not reset away our last reply.
    """

    __slots__ = ("closing", "deadline", "discarded", "draining", "eof", "fd", "out", "peer", "rest",
                 "writing")

    def __init__(self, fd: int, peer: str, deadline: float) -> None:
        self.fd = fd
        self.peer = peer
        self.rest = b""
        self.out = b""
        self.deadline = deadline
        self.eof = False
        self.closing = False
        self.draining = False
        self.writing = False
        self.discarded = 0


class Worker:
    """One process: serves the (shared) sockets from one epoll loop; holds its own connections,
    token buckets and log buffer. Worker 0 is the parent and also reaps the others."""

    def __init__(self, opts: argparse.Namespace, socks: dict[str, socket.socket], index: int,
                 nworkers: int, slots: object | None) -> None:
        self.o = opts
        self.index = index
        self.socks = socks
        self.poller = Poller()
        self.handlers: dict[int, object] = {}
        self.conns: dict[int, Conn] = {}
        self.slots = slots  # a semaphore shared by the workers: one unit per proto connection
        self.max_conns = max(1, opts.max_conns // nworkers)  # used only without a semaphore
        self.max_line = opts.max_line
        self.idle = opts.idle_timeout
        self.logbuf: list[str] | None = None if opts.quiet else []
        self.buckets = (None if opts.no_rate_limit else
                        TokenBuckets(opts.rate_limit / nworkers, max(1.0, opts.rate_burst / nworkers)))
        self.stopping = False
        self.stop_deadline = 0.0
        self.next_sweep = 0.0
        self.children: dict[int, int] = {}
        self.parent_pid = os.getppid()
        self.ubuf = bytearray(2048)
        self.udp_last = (b"", "''")  # the last UDP request and its log form
        self.spare_fd = os.open(os.devnull, os.O_RDONLY)
        self.cur_ms = -1
        self.cur_sec = -1
        v6 = ":" in opts.bind
        self.udp_fmt = "[%s]:%d %s %dB -> %dB%s\n" if v6 else "%s:%d %s %dB -> %dB%s\n"
        self.udp_tails: dict[tuple, str] = {}
        self.tcp_fmt = "%s tcp [%s]:%d - 0B -> %dB%s\n" if v6 else "%s tcp %s:%d - 0B -> %dB%s\n"
        self._tick(time.time_ns() // 1000000)

        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._add(self.wake_r.fileno(), EPOLLIN, self._on_wake)

        udp_handler = self._on_udp if self.buckets is None else self._on_udp_limited
        table = {"tcp": None, "udp": udp_handler, "proto": self._on_proto_accept,
                 "time-tcp": self._on_time_accept, "time-udp": self._on_time_udp}
        excl = getattr(select, "EPOLLEXCLUSIVE", 0) if nworkers > 1 else 0
        self.tcp_log: list[str] = []  # the acceptor thread's log lines, moved to logbuf by run()
        self.tcp_thread: threading.Thread | None = None
        for name, s in socks.items():
            if name in SINGLE_ACCEPTOR and index:
                continue  # held open (it is shared) but accepted by worker 0 alone
            if name == "tcp":
                continue  # worker 0's acceptor thread (see _tcp_acceptor)
            self._add(s.fileno(), EPOLLIN | excl, table[name])

    # -- time, cached per millisecond (every reply shows the current millisecond) --
    def _tick(self, ms: int) -> None:
        sec, milli = divmod(ms, 1000)
        if sec != self.cur_sec:
            self.cur_sec = sec
            self.sec_str = "%04d-%02d-%02dT%02d:%02d:%02d" % time.gmtime(sec)[:6]
            self.udp_seconds = (self.sec_str + "Z").encode()
            self.rfc868 = rfc868_bytes(sec)
        self.cur_ms = ms
        self.ts = "%s.%03dZ" % (self.sec_str, milli)
        self.ts_udp = self.ts + " udp "
        self.udp_time = self.ts.encode()
        self.tcp_line = self.udp_time + b"\n"

    # -- bookkeeping --
    def _add(self, fd: int, mask: int, handler: object) -> None:
        self.poller.register(fd, mask)
        self.handlers[fd] = handler

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.o.drain_timeout
            for pid in self.children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass

    def _on_wake(self, ev: int) -> None:
        try:
            while self.wake_r.recv(64):
                pass
        except OSError:
            pass

    def log(self, service: str, peer: str, req: str, nin: int, nout: int, note: str = "") -> None:
        if self.logbuf is not None:
            ms = time.time_ns() // 1000000
            if ms != self.cur_ms:
                self._tick(ms)
            self.logbuf.append("%s %s %s %s %dB -> %dB%s\n" % (
                self.ts, service, peer, req, nin, nout, " " + note if note else ""))

    def flush_log(self) -> None:
        data = "".join(self.logbuf).encode("utf-8", "backslashreplace")
        self.logbuf.clear()
        while data:
            if len(data) > LOG_CHUNK:
                cut = data.rfind(b"\n", 0, LOG_CHUNK) + 1 or LOG_CHUNK
            else:
                cut = len(data)
            try:
                os.write(2, data[:cut])
            except OSError:
                return
            data = data[cut:]

    def _accepted(self, service: str) -> Iterator[tuple[int, tuple]]:
        """The connections waiting on a listening socket, at most 128 per readiness event."""
        sock = self.socks[service]
        for _ in range(128):
            try:
                yield sock._accept()
            except BlockingIOError:
                return
            except OSError as e:
                self._accept_error(sock, e, service)
                return

    def _accept_error(self, sock: socket.socket, e: OSError, service: str) -> None:
        """EMFILE/ENFILE: accept with the spare fd and close, so the backlog cannot wedge us."""
        if e.errno in (errno.EMFILE, errno.ENFILE):
            os.close(self.spare_fd)
            try:
                fd, addr = sock._accept()
                os.close(fd)
                self.log(service, peer_str(addr), "-", 0, 0, "dropped: out of file descriptors")
            except OSError:
                pass
            self.spare_fd = os.open(os.devnull, os.O_RDONLY)
        elif e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
            self.log(service, "-", "-", 0, 0, "accept error: %s" % e)

    # -- TCP --port: write the line, close. A thread with a blocking accept: three system calls per
    # connection (accept, write, close) where the event loop needed five (epoll_wait and the final
    # EAGAIN). It takes the GIL only between those calls and shares nothing with the loop but
    # self.stopping and self.tcp_log (list appends and slice deletes are atomic under the GIL).
    # A fresh socket's send buffer (>= 4 KiB) always takes the 25 bytes: the write cannot block.
    def _tcp_acceptor(self, sock: socket.socket) -> None:
        accept = sock._accept
        time_ns = time.time_ns
        write = os.write
        close = os.close
        out = None if self.logbuf is None else self.tcp_log
        fmt = self.tcp_fmt
        cur_ms = -1
        ts = ""
        line = b""
        spare = os.open(os.devnull, os.O_RDONLY)
        while not self.stopping:
            try:
                fd, addr = accept()
            except OSError as e:
                if self.stopping:
                    break
                if e.errno in (errno.EMFILE, errno.ENFILE):  # accept with the spare fd and close
                    close(spare)
                    try:
                        close(accept()[0])
                    except OSError:
                        pass
                    spare = os.open(os.devnull, os.O_RDONLY)
                    if out is not None:
                        out.append("%s tcp - - 0B -> 0B dropped: out of file descriptors\n" % ts)
                elif e.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN):
                    time.sleep(0.01)  # unexpected: log it, never spin
                    if out is not None:
                        out.append("%s tcp - - 0B -> 0B accept error: %s\n" % (ts, e))
                continue
            ms = time_ns() // 1000000
            if ms != cur_ms:
                cur_ms = ms
                ts = iso_ms(ms)
                line = (ts + "\n").encode()
            try:
                n = write(fd, line)
                note = ""
            except OSError as e:
                n = 0
                note = " error: " + (e.strerror or str(e))
            close(fd)
            if out is not None:
                out.append(fmt % (ts, addr[0], addr[1], n, note))
        close(spare)

    def _on_time_accept(self, ev: int) -> None:
        for fd, addr in self._accepted("time-tcp"):
            self._tick(time.time_ns() // 1000000)
            try:
                n, note = os.write(fd, self.rfc868), ""
            except OSError as e:
                n, note = 0, "error: " + (e.strerror or str(e))
            os.close(fd)
            self.log("time-tcp", peer_str(addr), "-", 0, n, note)

    # -- UDP --port --
    def _on_udp(self, ev: int) -> None:
        """The hot path (no rate limit): the reply goes out before anything else is done."""
        sock = self.socks["udp"]
        recv = sock.recvfrom_into
        send = sock.sendto
        buf = self.ubuf
        time_ns = time.time_ns
        logbuf = self.logbuf
        fmt = self.udp_fmt
        last_req, last_repr = self.udp_last
        tails = self.udp_tails
        for _ in range(64):
            try:
                n, addr = recv(buf, 0, MSG_TRUNC)  # n: the datagram's real size, even if > buf
            except BlockingIOError:
                return
            except OSError:
                continue
            ms = time_ns() // 1000000
            if ms != self.cur_ms:
                self._tick(ms)
            reply = self.udp_time if n >= 8 else udp_reply(n, self.udp_time, self.udp_seconds)
            if reply is not None:
                try:
                    out = send(reply, addr)
                except OSError as e:
                    if logbuf is not None:
                        logbuf.append(self.ts_udp)
                        logbuf.append(fmt % (addr[0], addr[1], show(bytes(buf[:min(n, 41)])), n, 0,
                                             " dropped: " + (e.strerror or str(e))))
                    continue
            else:
                out = 0
            if logbuf is not None:
                # The log line's tail depends only on the peer and the request (clients repeat
                # themselves): cache it per peer for the current request, so logging allocates nothing.
                if n != len(last_req) or not buf.startswith(last_req):
                    last_req = bytes(buf[:min(n, 41)])
                    last_repr = show(last_req)
                    self.udp_last = (last_req, last_repr)
                    tails.clear()
                tail = tails.get(addr)
                if tail is None:
                    if len(tails) >= 1024:
                        tails.clear()
                    tail = tails[addr] = fmt % (addr[0], addr[1], last_repr, n, out,
                                                "" if out else " no reply: 3x bound")
                logbuf.append(self.ts_udp)
                logbuf.append(tail)

    def _on_udp_limited(self, ev: int) -> None:
        self._udp_limited("udp", ev)

    def _on_time_udp(self, ev: int) -> None:
        self._udp_limited("time-udp", ev)

    def _udp_limited(self, service: str, ev: int) -> None:
        sock = self.socks[service]
        buf = self.ubuf
        buckets = self.buckets
        for _ in range(256):
            try:
                n, addr = sock.recvfrom_into(buf, 0, MSG_TRUNC)
            except BlockingIOError:
                return
            except OSError:
                continue
            self._tick(time.time_ns() // 1000000)
            if service == "udp":
                reply = udp_reply(n, self.udp_time, self.udp_seconds)
            else:
                reply = rfc868_reply(n, self.rfc868)
            out = 0
            note = ""
            if reply is None:
                note = "no reply: 3x bound"
            elif buckets is not None and not buckets.allow(addr[0], time.monotonic()):
                note = "no reply: rate limit"
            else:
                try:
                    out = sock.sendto(reply, addr)
                except OSError as e:
                    note = "dropped: " + (e.strerror or str(e))
            self.log(service, peer_str(addr), show(bytes(buf[:min(n, 41)])), n, out, note)

    # -- TCP --proto-port: the line protocol --
    def _on_proto_accept(self, ev: int) -> None:
        for fd, addr in self._accepted("proto"):
            peer = peer_str(addr)
            if self.stopping or not self._take_slot():
                msg = ERR_STOPPING if self.stopping else ERR_BUSY
                try:
                    n = os.write(fd, msg)  # fresh socket: cannot block (see _tcp_acceptor)
                except OSError:
                    n = 0
                os.close(fd)
                self.log("proto", peer, "-", 0, n, "refused: " + msg[4:-1].decode())
                continue
            os.set_blocking(fd, False)
            self.conns[fd] = Conn(fd, peer, time.monotonic() + self.idle)
            self.poller.register(fd, EPOLLIN)  # run() dispatches connections through self.conns

    def _take_slot(self) -> bool:
        if self.slots is None:
            return len(self.conns) < self.max_conns
        return self.slots.acquire(False)

    def conn_event(self, c: Conn, ev: int) -> None:
        if c.writing:  # registered for EPOLLOUT only
            if self._flush(c):
                if c.closing:
                    self._finish(c)
                elif self.stopping and not c.rest:
                    self._close(c)
            return
        try:
            data = os.read(c.fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            self._close(c, "reset: " + (e.strerror or str(e)), show(c.rest) if c.rest else "-")
            return
        if c.draining:
            c.discarded += len(data)
            if not data or c.discarded > DRAIN_BYTES:
                self._close(c)
            return
        if not data:  # EOF (half-close or close): answer a last unterminated request, then close
            c.eof = c.closing = True
            if c.rest:
                last, c.rest = c.rest, b""
                self._requests(c, [last[:-1] if last.endswith(b"\r") else last], len(last))
            elif not c.out:
                self._close(c)
                return
            if self._flush(c):
                self._finish(c)
            return
        self._data(c, data)

    def _data(self, c: Conn, data: bytes) -> None:
        buf = c.rest + data if c.rest else data
        try:
            lines, c.rest = split_lines(buf, self.max_line)
        except LineTooLong:
            c.rest = b""
            c.out += ERR_TOO_LONG
            c.closing = True
            self.log("proto", c.peer, show(buf), len(buf), len(ERR_TOO_LONG), "closing: line too long")
            if self._flush(c):
                self._finish(c)
            return
        if lines:
            self._requests(c, lines, len(buf) - len(c.rest))
            c.deadline = time.monotonic() + self.idle
            if self._flush(c) and self.stopping and not c.rest:
                self._close(c)

    def _requests(self, c: Conn, lines: list[bytes], nin: int) -> None:
        ms = time.time_ns() // 1000000
        if ms != self.cur_ms:
            self._tick(ms)
        tl = self.tcp_line
        if len(lines) == 1:
            out = answer(lines[0], tl)
            replies = [out]
        else:
            replies = [answer(line, tl) for line in lines]
            out = b"".join(replies)
        c.out = c.out + out if c.out else out
        logbuf = self.logbuf
        if logbuf is not None:
            for line, r in zip(lines, replies):
                logbuf.append("%s proto %s %s %dB -> %dB\n" % (self.ts, c.peer, show(line), len(line),
                                                                len(r)))

    def _flush(self, c: Conn) -> bool:
        """Write pending output; True when all of it is out. While some is left, stop reading."""
        if c.out:
            try:
                n = os.write(c.fd, c.out)
            except BlockingIOError:
                n = 0
            except OSError as e:
                self._close(c, "reset: " + (e.strerror or str(e)))
                return False
            if n:
                c.deadline = time.monotonic() + self.idle
                c.out = c.out[n:]
        if c.out:
            if not c.writing:
                c.writing = True
                self.poller.modify(c.fd, EPOLLOUT)
            return False
        if c.writing:
            c.writing = False
            self.poller.modify(c.fd, EPOLLIN)
        return True

    def _finish(self, c: Conn) -> None:
        """All output is out and we are done: close, or (peer still sending) shut down and drain."""
        if c.eof:
            self._close(c)
            return
        try:
            s = socket.socket(fileno=c.fd)
            try:
                s.shutdown(socket.SHUT_WR)
            finally:
                s.detach()
        except OSError:
            self._close(c)
            return
        c.draining = True
        c.deadline = time.monotonic() + 1.0

    def _close(self, c: Conn, note: str = "", req: str = "") -> None:
        if self.conns.pop(c.fd, None) is None:
            return
        if self.slots is not None:
            self.slots.release()
        try:
            self.poller.unregister(c.fd)
        except OSError:
            pass
        os.close(c.fd)
        if note:
            self.log("proto", c.peer, req or "-", 0, 0, note)

    def sweep(self, now: float) -> None:
        """Idle timeouts, dead children, an orphaned worker."""
        self.next_sweep = now + min(0.25, self.idle / 4)
        for c in [c for c in self.conns.values() if c.deadline <= now]:
            if c.draining:
                self._close(c)
                continue
            if not c.writing:
                try:
                    os.write(c.fd, ERR_IDLE)
                except OSError:
                    pass
            self._close(c, "closed: idle timeout", show(c.rest) if c.rest else "-")
        for pid in list(self.children):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got, status = pid, 0
            if got:
                idx = self.children.pop(pid)
                if not self.stopping:
                    self.log("server", "-", "-", 0, 0, "worker %d (pid %d) died, status %d" % (
                        idx, pid, status))
        if self.index and os.getppid() != self.parent_pid:
            self._on_signal(signal.SIGTERM, None)  # our parent is gone: stop too

    def begin_stop(self) -> None:
        """Close the listening sockets and every connection that has no request in flight."""
        if self.tcp_thread is not None:
            try:
                self.socks["tcp"].shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (EINVAL)
            except OSError:
                pass
            self.tcp_thread.join(timeout=5)
            self.tcp_thread = None
        for name, s in list(self.socks.items()):
            fd = s.fileno()
            self.handlers.pop(fd, None)
            try:
                self.poller.unregister(fd)
            except OSError:
                pass
            s.close()
            del self.socks[name]
        for c in list(self.conns.values()):
            if (not c.rest and not c.out) or c.draining:
                self._close(c)

    def run(self) -> int:
        gc.collect()
        gc.freeze()  # the start-up objects never need scanning again: short, rare collections
        poll = self.poller.poll
        handlers = self.handlers
        conns = self.conns
        monotonic = time.monotonic
        stopped_listening = False
        logbuf = self.logbuf if self.logbuf is not None else []
        log_due = 0.0
        tcp_log = self.tcp_log
        if self.index == 0 and "tcp" in self.socks:
            self.socks["tcp"].setblocking(True)
            self.tcp_thread = threading.Thread(target=self._tcp_acceptor, args=(self.socks["tcp"],),
                                               name="tcp-acceptor", daemon=True)
            self.tcp_thread.start()
        while True:
            if self.stopping:
                if not stopped_listening:
                    stopped_listening = True
                    self.begin_stop()
                if not conns or monotonic() >= self.stop_deadline:
                    break
            if tcp_log:
                n = len(tcp_log)
                logbuf += tcp_log[:n]
                del tcp_log[:n]
            pending = len(logbuf)
            try:
                events = poll(LOG_DELAY if pending else 0.25)
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            for fd, ev in events:
                c = conns.get(fd)
                try:
                    if c is not None:
                        self.conn_event(c, ev)
                    else:
                        h = handlers.get(fd)
                        if h is not None:
                            h(ev)
                except Exception as e:  # a bug must cost one connection, never the server
                    self.log("server", c.peer if c else "-", "-", 0, 0, "internal error: %r" % (e,))
                    if c is not None:
                        self._close(c)
            now = monotonic()
            if logbuf:  # log lines go out in batches: one write per LOG_DELAY, not per exchange
                if not pending:
                    log_due = now + LOG_DELAY
                if now >= log_due or len(logbuf) >= 512:
                    self.flush_log()
            if now >= self.next_sweep:
                self.sweep(now)
        for c in list(conns.values()):
            self._close(c, "closed: server stopping", show(c.rest) if c.rest else "-")
        self.wait_children()
        if self.logbuf is not None:
            self.logbuf += self.tcp_log
            if self.logbuf:
                self.flush_log()
        return 0

    def wait_children(self) -> None:
        deadline = time.monotonic() + self.o.drain_timeout + 2.0
        while self.children and time.monotonic() < deadline:
            for pid in list(self.children):
                try:
                    got, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    got = pid
                if got:
                    del self.children[pid]
            time.sleep(0.01)
        for pid in self.children:  # pragma: no cover - a wedged worker
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------------

def connection_slots(n: int) -> object | None:
    """A semaphore the forked workers share, so --max-conns holds exactly over all of them; None
    where POSIX semaphores are missing (then each worker takes max-conns/workers)."""
    try:
        import multiprocessing

        return multiprocessing.get_context("fork").BoundedSemaphore(n)
    except (ImportError, OSError, ValueError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="timeserver.py",
        description="UTC time over TCP, UDP, a line protocol and RFC 868 (stdlib only).",
        epilog="Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when a port cannot be bound, "
               "2 on bad arguments.")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0; '::' for IPv6)")
    p.add_argument("--port", type=int, default=8080,
                   help="TCP time-and-close and UDP time port (default 8080; 0 = pick one)")
    p.add_argument("--proto-port", type=int, default=8081,
                   help="TCP line-protocol port (default 8081; 0 = pick one)")
    p.add_argument("--time-port", type=int, default=0,
                   help="RFC 868 TIME port, TCP and UDP (default 0 = off; the standard port is 37)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes serving the same sockets (default 1; more only help where the server "
                        "has cores of its own)")
    p.add_argument("--max-conns", type=int, default=2048,
                   help="concurrent proto connections, all workers together (default 2048)")
    p.add_argument("--max-line", type=int, default=1024, help="request line cap in bytes (default 1024)")
    p.add_argument("--idle-timeout", type=float, default=30.0,
                   help="seconds a proto connection may go without a complete request (default 30)")
    p.add_argument("--rate-limit", type=float, default=100.0,
                   help="UDP replies per second per source address (default 100)")
    p.add_argument("--rate-burst", type=float, default=200.0,
                   help="UDP token-bucket size per source address (default 200)")
    p.add_argument("--no-rate-limit", action="store_true", help="no UDP rate limit (benchmarks)")
    p.add_argument("--drain-timeout", type=float, default=2.0,
                   help="on SIGTERM, seconds to let in-flight requests finish (default 2)")
    p.add_argument("--quiet", action="store_true", help="no per-exchange log lines on stderr")
    o = p.parse_args(argv)
    for name in ("port", "proto_port", "time_port"):
        v = getattr(o, name)
        if not 0 <= v <= 65535:
            p.error(f"--{name.replace('_', '-')} must be 0..65535, not {v}")
    if o.workers < 1 or o.max_conns < 1 or o.max_line < 8:
        p.error("--workers and --max-conns must be >= 1, --max-line >= 8")
    if o.idle_timeout <= 0 or o.drain_timeout < 0 or o.rate_limit <= 0 or o.rate_burst < 1:
        p.error("--idle-timeout and --rate-limit must be > 0, --rate-burst >= 1, --drain-timeout >= 0")
    return o


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    host = o.bind
    limit = raise_fd_limit(o.max_conns + 64 * o.workers + 64)
    if o.max_conns + 32 * o.workers > limit:
        o.max_conns = max(1, limit - 32 * o.workers)
        print(f"timeserver: file descriptor limit {limit}: --max-conns lowered to {o.max_conns}",
              file=sys.stderr)
    try:
        socks = open_sockets(host, o.port, o.proto_port, o.time_port)
    except OSError as e:
        ports = ", ".join(str(p) for p in (o.port, o.proto_port, o.time_port) if p)
        print(f"timeserver: cannot listen on {host} port(s) {ports}: {e}", file=sys.stderr)
        return 1
    except (ValueError, OverflowError, UnicodeError) as e:
        print(f"timeserver: bad --bind address {host!r}: {e}", file=sys.stderr)
        return 1

    slots = connection_slots(o.max_conns) if o.workers > 1 else None
    children: dict[int, int] = {}
    for idx in range(1, o.workers):
        pid = os.fork()
        if pid == 0:  # worker idx: same sockets, its own loop
            code = 1
            try:
                code = Worker(o, socks, idx, o.workers, slots).run()
            except BaseException as e:
                try:
                    os.write(2, f"timeserver: worker {idx} failed: {e!r}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        children[pid] = idx

    worker = Worker(o, socks, 0, o.workers, slots)
    worker.children = children
    h = f"[{host}]" if ":" in host else host
    parts = [f"{name}={h}:{s.getsockname()[1]}" for name, s in socks.items()]
    print(f"timeserver listening {' '.join(parts)} workers={o.workers} pid={os.getpid()}", flush=True)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
