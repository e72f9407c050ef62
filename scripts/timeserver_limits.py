"""What the lab's time server refuses: the limits that keep it up, fair and quiet under abuse (stdlib only).

Read timeserver_protocol.py first; timeserver.py and timeserver_lines.py use these.

  * request lines are capped (--max-line): `ERR line too long`, then close   (timeserver_protocol)
  * a line-protocol connection with no complete request for --idle-timeout s is closed: trickling
    bytes does not reset the clock (slowloris)                            (timeserver_lines.py)
  * at most --max-conns line-protocol connections, and at most --max-conns-per-source from one
    address, so one address cannot lock the others out: the excess gets `ERR busy`   ConnectionLimits
  * UDP replies per source address go through a token bucket (--rate-limit/--rate-burst)  TokenBuckets
  * a UDP reply is never more than 3x the request                              (timeserver_protocol)
  * each service logs at most --log-rate lines a second; the rest are counted, and one line a second
    says how many were left out and why                                         Log
  and at the end, the command line that sets them: parse_args
"""
# ruff: noqa: UP031
from __future__ import annotations

import argparse
import contextlib
import os
import socket

from timeserver_protocol import ERR_BUSY, ERR_BUSY_SOURCE, Clock

LOG_CHUNK = 4000  # < PIPE_BUF: the workers' writes to one pipe never interleave inside a line


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
        tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
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


class ConnectionLimits:
    """Admission for line-protocol connections: `total` in all, `per_source` from one address.

    With several worker processes, `shared` is a semaphore they share, so the total holds exactly;
    the per-source counts are each worker's own (each allows per_source / workers, rounded up).
    """

    def __init__(self, total: int, per_source: int, shared: object | None = None) -> None:
        self.total = total
        self.per_source = per_source
        self.shared = shared
        self.open = 0
        self.by_source: dict[str, int] = {}

    def take(self, source: str) -> bytes | None:
        """Admit one connection from `source`: None, or the line to refuse it with."""
        n = self.by_source.get(source, 0)
        if n >= self.per_source:
            return ERR_BUSY_SOURCE
        if self.shared is not None:
            if not self.shared.acquire(False):
                return ERR_BUSY
        elif self.open >= self.total:
            return ERR_BUSY
        self.open += 1
        self.by_source[source] = n + 1
        return None

    def give_back(self, source: str) -> None:
        """One admitted connection from `source` closed."""
        self.open -= 1
        n = self.by_source.pop(source) - 1
        if n:
            self.by_source[source] = n
        if self.shared is not None:
            self.shared.release()


def connection_slots(n: int) -> object | None:
    """A semaphore the forked workers share, so --max-conns holds exactly over all of them (None where
    POSIX semaphores are missing: then each worker takes max-conns / workers)."""
    try:
        import multiprocessing

        return multiprocessing.get_context("fork").BoundedSemaphore(n)
    except (ImportError, OSError, ValueError):
        return None


def raise_fd_limit(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards `want`; return the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else want


def accept_spare(sock: socket.socket, spare: int) -> int:
    """Out of file descriptors (EMFILE at accept): free the spare one, accept and close, so the backlog
    cannot wedge us; returns the new spare."""
    os.close(spare)
    with contextlib.suppress(OSError):
        os.close(sock._accept()[0])
    return os.open(os.devnull, os.O_RDONLY)


def peer_str(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def show(data: bytes) -> str:
    """A request for the log: repr of at most 40 bytes (no raw newlines or control bytes)."""
    return repr(bytes(data[:40]))[1:] + ("..." if len(data) > 40 else "")


class Log:
    """The log of one service, one line per exchange, at most `per_second` lines a second:

        2026-11-25T09:39:51.123Z udp 127.0.0.1:40000 'anything' 8B -> 24B [note]

    Past the budget, lines are only counted (by note); `roll`, called by the event loop, adds at most
    one line a second with what was left out since the last one:

        2026-11-25T09:39:52.001Z udp - - 0B -> 0B not logged: 27950 more lines (27900 no reply: rate
        limit, 50 answered)

    Lines go to the list `out`, which the event loop writes out in batches. No lock on the way of a
    datagram: only the service's thread calls `line` and writes the counts, only the event loop calls
    `roll` and reads them (a plain dict's copy is atomic in CPython).
    """

    def __init__(self, service: str, per_second: int, out: list[str]) -> None:
        self.service = service
        self.per_second = per_second
        self.out = out
        self.sec = -1
        self.written = 0
        self.skipped: dict[str, int] = {}  # note -> lines not logged, ever (the service thread's)
        self.reported: dict[str, int] = {}  # what roll() has already reported (the loop's)
        self.rolled = -1

    def line(self, clock: Clock, peer: str | tuple, request: str | bytes, nin: int, nout: int,
             note: str = "") -> None:
        if clock.sec != self.sec:
            self.sec, self.written = clock.sec, 0
        if self.written < self.per_second:
            self.written += 1
            if not isinstance(peer, str):
                peer = peer_str(peer)
            if not isinstance(request, str):
                request = show(request)
            self.out.append("%s %s %s %s %dB -> %dB%s\n" % (clock.text, self.service, peer, request, nin,
                                                            nout, " " + note if note else ""))
        else:
            key = note or "answered"
            self.skipped[key] = self.skipped.get(key, 0) + 1

    def roll(self, clock: Clock, last: bool = False) -> None:
        """At most once a second (and once more at the end): a line with what was left out since."""
        if clock.sec == self.rolled and not last:
            return
        self.rolled = clock.sec
        now = self.skipped.copy()
        new = {k: n - self.reported.get(k, 0) for k, n in now.items() if n > self.reported.get(k, 0)}
        if new:
            self.reported = now
            why = ", ".join(f"{n} {k}" for k, n in sorted(new.items(), key=lambda kn: -kn[1]))
            self.out.append("%s %s - - 0B -> 0B not logged: %d more lines (%s)\n" % (
                clock.text, self.service, sum(new.values()), why))


def write_log(out: list[str]) -> None:
    """Write the pending log lines to stderr in pieces of whole lines, < PIPE_BUF each."""
    n = len(out)  # (other threads may append meanwhile: take exactly these)
    data = "".join(out[:n]).encode("utf-8", "backslashreplace")
    del out[:n]
    while data:
        cut = len(data) if len(data) <= LOG_CHUNK else (data.rfind(b"\n", 0, LOG_CHUNK) + 1 or LOG_CHUNK)
        try:
            os.write(2, data[:cut])
        except OSError:
            return
        data = data[cut:]



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: where to listen, and every limit with its default."""
    p = argparse.ArgumentParser(
        prog="timeserver.py", description="UTC time over TCP, UDP, a line protocol and RFC 868.",
        epilog="Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 when a port cannot be bound, "
               "2 on bad arguments.")
    add = p.add_argument
    add("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0; '::' for IPv6)")
    add("--port", type=int, default=8080, help="TCP time-and-close and UDP time port (default 8080; 0: pick)")
    add("--proto-port", type=int, default=8081, help="TCP line-protocol port (default 8081; 0 = pick one)")
    add("--time-port", type=int, default=0,
        help="RFC 868 TIME port, TCP and UDP (default 0 = off; the standard port is 37)")
    add("--workers", type=int, default=1, help="processes serving the same sockets (default 1; more only "
                                              "help where the server has cores of its own)")
    add("--max-conns", type=int, default=2048, help="concurrent line-protocol connections (default 2048)")
    add("--max-conns-per-source", type=int, default=64,
        help="concurrent line-protocol connections from one address (default 64)")
    add("--max-line", type=int, default=1024, help="request line cap in bytes (default 1024)")
    add("--idle-timeout", type=float, default=30.0,
        help="seconds a line-protocol connection may go without a complete request (default 30)")
    add("--rate-limit", type=float, default=100.0, help="UDP replies a second per source (default 100)")
    add("--rate-burst", type=float, default=200.0, help="UDP token bucket size per source (default 200)")
    add("--no-rate-limit", action="store_true", help="no UDP rate limit (benchmarks)")
    add("--log-rate", type=int, default=50,
        help="log lines per second per service (default 50); the rest are counted, one line a second")
    add("--drain-timeout", type=float, default=2.0,
        help="on SIGTERM, seconds to let in-flight requests finish (default 2)")
    add("--quiet", action="store_true", help="no log lines on stderr")
    o = p.parse_args(argv)
    for name in ("port", "proto_port", "time_port"):
        if not 0 <= getattr(o, name) <= 65535:
            p.error(f"--{name.replace('_', '-')} must be 0..65535, not {getattr(o, name)}")
    if min(o.workers, o.max_conns, o.max_conns_per_source, o.log_rate) < 1 or o.max_line < 8:
        p.error("--workers, --max-conns, --max-conns-per-source, --log-rate must be >= 1, --max-line >= 8")
    if not (0 < o.idle_timeout < 1e6 and 0 <= o.drain_timeout < 1e6 and 0 < o.rate_limit < 1e9
            and 1 <= o.rate_burst < 1e9 and o.workers <= 64):
        p.error("--idle-timeout and --rate-limit must be > 0, --rate-burst >= 1, --drain-timeout >= 0, "
                "--workers <= 64")
    return o
