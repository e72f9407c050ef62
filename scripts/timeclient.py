#!/usr/bin/env python3
"""timeclient.py: the lab's time client in one stdlib-only file (Python >= 3.9).

  timeclient.py tcp   HOST [--port 8080]             connect, read one line, print it
  timeclient.py udp   HOST [--port 8080] [--send X]  send one datagram (default `anything`), print the reply
  timeclient.py proto HOST [--port 8081] [--send LINE]...
                                                     one line per --send (default `GET TIME`), one reply each
  timeclient.py time  HOST [--port 37] [--udp]       RFC 868: 4 bytes, seconds since 1900, printed as UTC

--start-at EPOCH: the address is resolved and the socket made (and, for UDP, connected) first, then
the client sleeps until that wall-clock instant (coarse sleep, then a ~2 ms spin) and only then
connects/sends. Waking more than --late-tolerance-ms after it is reported (stderr; `late_ms` and
`late` in --json). --json prints one object: protocol, host, port, ok, reply, error, exit_code,
timings {start, connected, first_byte, done} (epoch seconds), late_ms, attempts, local, ...
For udp, `connected` is the moment the datagram went out. With --retries the timings are the last
attempt's, `first_start` the first attempt's start; `attempts` counts the attempts made, `timeouts`
and `refusals` how many of them ended that way, `attempt_log` says how each ended (`ok`, `timeout`,
`refused`, `garbage`, `network`, `busy`).
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import sys
import time

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_TIMEOUT = 4
EXIT_GARBAGE = 5
EXIT_NETWORK = 6
EXIT_BUSY = 7
EXIT_CODES = f"""exit status:
  {EXIT_OK}  ok: a reply was printed
  {EXIT_USAGE}  bad arguments
  {EXIT_REFUSED}  connection refused (nothing listens there; for udp: ICMP port unreachable)
  {EXIT_TIMEOUT}  timeout (no connection or no reply within --timeout, after --retries)
  {EXIT_GARBAGE}  garbage reply (empty, not text, too long, or not 4 bytes for `time`)
  {EXIT_NETWORK}  other network error (unreachable, reset, unknown host)
  {EXIT_BUSY}  the server answered `ERR busy` (its connection cap)"""

OUTCOMES = {EXIT_OK: "ok", EXIT_REFUSED: "refused", EXIT_TIMEOUT: "timeout", EXIT_GARBAGE: "garbage",
            EXIT_NETWORK: "network", EXIT_BUSY: "busy"}  # how an attempt ended, by its exit status
DEFAULT_PORTS = {"tcp": 8080, "udp": 8080, "proto": 8081, "time": 37}
MAX_REPLY = 4096
SECONDS_1900_TO_1970 = 2208988800
ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?")


class Failure(Exception):
    """An exchange failed; `code` is the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def is_garbage(data: bytes) -> str | None:
    """Why `data` is not a plausible text reply, or None when it is."""
    if not data.strip():
        return "empty reply"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "reply is not UTF-8 text"
    if any(ord(ch) < 32 and ch not in "\r\n\t" for ch in text) or "\x7f" in text:
        return "reply contains control bytes"
    return None


def parse_time(text: str) -> float | None:
    """Epoch seconds from an ISO 8601 UTC time or Go's time.String() (`2026-11-25 09:39:51.1 +0000 UTC`)."""
    m = ISO.search(text)
    if not m:
        return None
    import calendar

    y, mo, d, h, mi, s = (int(m[i]) for i in range(1, 7))
    try:
        t = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    offset = re.match(r"\s*([+-])(\d\d):?(\d\d)", text[m.end():])
    if offset:
        sign = 1 if offset[1] == "+" else -1
        t -= sign * (int(offset[2]) * 3600 + int(offset[3]) * 60)
    return t + (float(m[7]) if m[7] else 0.0)


def resolve(host: str, port: int, kind: int) -> tuple[int, tuple]:
    """(family, sockaddr). A literal IP goes through getaddrinfo as bytes with AI_NUMERICHOST: no DNS,
    and no import of the idna codec (a str host would pull it in)."""
    try:
        info = socket.getaddrinfo(host.encode("ascii"), port, 0, kind, 0, socket.AI_NUMERICHOST)
        return info[0][0], info[0][4]
    except (socket.gaierror, UnicodeError):
        pass
    try:
        info = socket.getaddrinfo(host, port, 0, kind)
    except (socket.gaierror, UnicodeError) as e:
        raise Failure(EXIT_NETWORK, f"cannot resolve {host!r}: {e}") from None
    return info[0][0], info[0][4]


# seconds after --start-at before a client prints and exits (see main)
START_BURST = 0.05


def wait_until(epoch: float) -> float:
    """Sleep until wall-clock `epoch`; return the wake time.

    A plain sleep, no spinning: it wakes within ~0.5 ms here, and spinning would burn the CPU that
    the other clients waking at the same instant need.
    """
    while True:
        left = epoch - time.time()
        if left <= 0:
            return time.time()
        time.sleep(left)


def net_failure(e: OSError, what: str) -> Failure:
    if isinstance(e, ConnectionRefusedError):
        return Failure(EXIT_REFUSED, f"{what}: connection refused")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return Failure(EXIT_TIMEOUT, f"{what}: timed out")
    return Failure(EXIT_NETWORK, f"{what}: {e.strerror or e}")


class Exchange:
    """One run of the client: the socket, the timings and the result."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.kind = socket.SOCK_DGRAM if a.protocol == "udp" or (a.protocol == "time" and a.udp) \
            else socket.SOCK_STREAM
        self.family, self.addr = resolve(a.host, a.port, self.kind)
        self.timings: dict[str, float | None] = {"start": None, "connected": None, "first_byte": None,
                                                 "done": None}
        self.sock: socket.socket | None = None
        self.ready: float | None = None  # when it went to sleep until --start-at
        self.local = ""
        self.replies: list[str] = []
        self.raw = b""
        self.sent = 0
        self.received = 0
        self.deadline = 0.0  # monotonic: the end of this attempt (--timeout bounds the whole exchange)
        self.first_start: float | None = None  # the first attempt's start (the timings are the last's)
        self.outcomes: list[str] = []          # how each attempt ended: ok, timeout, refused, ...

    def left(self, s: socket.socket) -> None:
        """Give the socket's next call only the time this attempt has left (so a server trickling one
        byte at a time cannot stretch the exchange past --timeout)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        s.settimeout(left)

    def new_socket(self) -> socket.socket:
        s = socket.socket(self.family, self.kind)
        s.settimeout(self.a.timeout)
        if self.kind == socket.SOCK_DGRAM:
            s.connect(self.addr)  # a UDP connect sends nothing; it fixes the peer (and gets ICMP errors)
        return s

    def _recv(self, s: socket.socket, n: int) -> bytes:
        self.left(s)
        data = s.recv(n)
        if data and self.timings["first_byte"] is None:
            self.timings["first_byte"] = time.time()
        self.received += len(data)
        return data

    def _read_line(self, s: socket.socket, buf: bytearray) -> bytes:
        """One LF-terminated line from a stream (without the terminator); b'' on immediate EOF."""
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                line = bytes(buf[:i])
                del buf[:i + 1]
                return line.rstrip(b"\r")
            if len(buf) > MAX_REPLY:
                raise Failure(EXIT_GARBAGE, f"garbage reply: more than {MAX_REPLY} bytes without a newline")
            data = self._recv(s, 4096)
            if not data:
                line = bytes(buf)
                buf.clear()
                return line
            buf += data

    def _text(self, data: bytes) -> str:
        why = is_garbage(data)
        if why:
            raise Failure(EXIT_GARBAGE, f"garbage reply: {why}: {data[:60]!r}")
        return data.decode("utf-8").rstrip("\r\n")

    def attempt(self, s: socket.socket) -> None:
        a = self.a
        self.timings["start"] = time.time()
        if self.first_start is None:
            self.first_start = self.timings["start"]
        self.deadline = time.monotonic() + a.timeout
        if self.kind == socket.SOCK_STREAM:
            self.left(s)
            s.connect(self.addr)
        self.local = "{}:{}".format(*s.getsockname()[:2])
        if self.kind == socket.SOCK_DGRAM:
            payload = (a.send[-1] if a.send else ("time" if a.protocol == "time" else "anything")).encode()
            self.sent += s.send(payload)
        self.timings["connected"] = time.time()
        if a.protocol == "time":
            data = self._recv(s, 64) if self.kind == socket.SOCK_DGRAM else self._read_all(s, 64)
            self.raw = data
            if len(data) != 4:
                raise Failure(EXIT_GARBAGE,
                              f"garbage reply: RFC 868 wants 4 bytes, got {len(data)}: {data[:16]!r}")
            secs = struct.unpack("!I", data)[0] - SECONDS_1900_TO_1970
            self.replies.append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(secs)))
        elif a.protocol == "udp":
            self.raw = self._recv(s, 65535)
            self.replies.append(self._text(self.raw))
        elif a.protocol == "tcp":
            buf = bytearray()
            line = self._read_line(s, buf)
            self.raw = line
            self.replies.append(self._text(line))
        else:  # proto
            buf = bytearray()
            for req in a.send or ["GET TIME"]:
                self.sent += len(req) + 1
                self.left(s)
                s.sendall(req.encode() + b"\n")
                line = self._read_line(s, buf)
                self.raw = line
                text = self._text(line)
                self.replies.append(text)
                if text.startswith("ERR busy"):
                    raise Failure(EXIT_BUSY, "server busy: " + text)
        self.timings["done"] = time.time()

    def _read_all(self, s: socket.socket, limit: int) -> bytes:
        data = b""
        while len(data) <= limit:
            chunk = self._recv(s, 4096)
            if not chunk:
                break
            data += chunk
        return data

    def run(self) -> tuple[int, str | None, int, float | None]:
        """Do the exchange with retries; (exit code, error, attempts, late_ms)."""
        a = self.a
        late_ms = None
        try:
            self.sock = self.new_socket()
        except OSError as e:
            return EXIT_NETWORK, f"cannot make a socket: {e}", 0, None
        if a.start_at is not None:
            self.ready = time.time()  # asleep from here: labctl checks this came before --start-at
            woke = wait_until(a.start_at)
            late_ms = max(0.0, (woke - a.start_at) * 1000.0)
        err: Failure | None = None
        attempts = 0
        for attempts in range(1, a.retries + 2):
            if attempts > 1:
                time.sleep(min(1.0, 0.1 * 2 ** (attempts - 2)))
                self.replies.clear()
                self.timings = dict.fromkeys(self.timings)
                try:
                    self.sock = self.new_socket()
                except OSError as e:
                    return EXIT_NETWORK, f"cannot make a socket: {e}", attempts, late_ms
            s = self.sock
            try:
                self.attempt(s)
                self.outcomes.append("ok")
                return EXIT_OK, None, attempts, late_ms
            except Failure as f:
                err = f
            except OSError as e:
                err = net_failure(e, f"{a.protocol} {a.host}:{a.port}")
            finally:
                s.close()
            self.outcomes.append(OUTCOMES.get(err.code, "network"))
            if err.code not in (EXIT_REFUSED, EXIT_TIMEOUT):
                break  # garbage, busy, unreachable: retrying would not help
        return err.code, str(err), attempts, late_ms


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="timeclient.py", description="Ask a time server for the time.",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=["tcp", "udp", "proto", "time"],
                   help="tcp: one line per connection; udp: one datagram; proto: line protocol; "
                        "time: RFC 868")
    p.add_argument("host", help="server address or name")
    p.add_argument("--port", type=int, help="default: tcp/udp 8080, proto 8081, time 37")
    p.add_argument("--send", action="append", metavar="LINE",
                   help="proto: a request line (repeatable; default GET TIME); udp: the datagram "
                        "(default `anything`)")
    p.add_argument("--udp", action="store_true", help="time: use UDP (sends 4 bytes; see the docs)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds for one attempt's whole exchange: connect, send, every read (default 3)")
    p.add_argument("--retries", type=int, default=0, help="extra attempts after a refusal or timeout")
    p.add_argument("--start-at", type=float, metavar="EPOCH",
                   help="wall-clock instant (Unix seconds) to start at; socket made beforehand")
    p.add_argument("--late-tolerance-ms", type=float, default=5.0,
                   help="report waking later than this after --start-at (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the reply")
    a = p.parse_args(argv)
    if a.port is None:
        a.port = DEFAULT_PORTS[a.protocol]
    if not 0 < a.port < 65536:
        p.error(f"--port must be 1..65535, not {a.port}")
    if not 0 < a.timeout <= 3600 or not 0 <= a.retries <= 100:
        p.error("--timeout must be 0..3600 seconds (not 0) and --retries 0..100")
    if a.start_at is not None and not abs(a.start_at - time.time()) < 86400:
        p.error(f"--start-at must be a Unix time within a day of now, not {a.start_at}")
    if a.send and a.protocol in ("tcp", "time"):
        p.error(f"--send is for udp and proto; {a.protocol} sends nothing (the server talks first)")
    if a.udp and a.protocol != "time":
        p.error("--udp is for `time` (RFC 868); use the `udp` protocol for the time over UDP")
    if a.send and any("\n" in x or "\r" in x for x in a.send) and a.protocol == "proto":
        p.error("--send LINE must not contain a newline (repeat --send for several lines)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        ex = Exchange(a)
    except Failure as f:
        code, error, attempts, late_ms = f.code, str(f), 0, None
        ex = None
    else:
        code, error, attempts, late_ms = ex.run()
        if a.start_at is not None:
            # Printing and exiting cost far more CPU than the exchange: done at once by every client
            # woken at the instant, they delay the others' first packets (31 clients on 2 cores:
            # ~30 ms). Hold them until the start burst is over; the timings are already taken.
            time.sleep(max(0.0, a.start_at + START_BURST - time.time()))
    late = late_ms is not None and late_ms > a.late_tolerance_ms
    if a.json:
        reply = "\n".join(ex.replies) if ex else None
        obj = {"protocol": a.protocol, "host": a.host, "port": a.port, "ok": code == EXIT_OK,
               "reply": reply if ex and ex.replies else None, "error": error, "exit_code": code,
               "timings": ex.timings if ex else dict.fromkeys(("start", "connected", "first_byte", "done")),
               "start_at": a.start_at, "ready": ex.ready if ex else None,
               "late_ms": None if late_ms is None else round(late_ms, 3),
               "late": late, "attempts": attempts, "local": ex.local if ex else None,
               "timeouts": ex.outcomes.count("timeout") if ex else 0,
               "refusals": ex.outcomes.count("refused") if ex else 0,
               "attempt_log": ex.outcomes if ex else [], "first_start": ex.first_start if ex else None,
               "replies": ex.replies if ex else [], "bytes_sent": ex.sent if ex else 0,
               "bytes_received": ex.received if ex else 0,
               "server_time": None}
        if ex and ex.replies and code == EXIT_OK:
            if a.protocol == "time":
                obj["server_time"] = struct.unpack("!I", ex.raw)[0] - SECONDS_1900_TO_1970
            else:
                obj["server_time"] = parse_time(ex.replies[-1])
        print(json.dumps(obj))
    else:
        for r in ex.replies if ex else []:
            print(r)
        if late:
            print(f"timeclient: started {late_ms:.1f} ms after --start-at", file=sys.stderr)
        if error:
            print(f"timeclient: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
