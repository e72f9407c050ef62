#!/usr/bin/env python3
"""timeserver.py: the lab's time servers, standard library only (Python >= 3.9).

Four files, read in this order:
  timeserver_protocol.py  what the server says: every reply, as plain functions
  timeserver_limits.py    what it refuses: connection caps, UDP rate limits, the log's budget
  timeserver.py           how: the sockets, one thread per simple service, the workers (this file)
  timeserver_lines.py     the line protocol's connections, which stay open: one epoll loop

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
is one epoll loop over non-blocking sockets in the main thread (timeserver_lines.py). --workers N
forks N-1 more processes onto the same sockets (one acceptor for accept-and-close); on the 2-core lab
machine that cost more CPU per connection and doubled the UDP p99, so the default is 1.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its three other files (even under -I)
from timeserver_limits import (
    ConnectionLimits,
    Log,
    TokenBuckets,
    accept_spare,
    connection_slots,
    parse_args,
    raise_fd_limit,
    write_log,
)
from timeserver_lines import LineServer
from timeserver_protocol import Clock, rfc868_reply, udp_reply

MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0)
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
# 3. One worker: the threads and the line protocol's loop; main: arguments, sockets, workers

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
