"""What the lab's time server says: every reply as a plain function, no sockets (stdlib only).

Read this file first, then timeserver_limits.py (what the server refuses), then timeserver.py (the
sockets and the event loop that use both).

  TCP  --port        on connect: the UTC time as one line, `2026-11-25T09:39:51.123Z\\n`, then close
  UDP  --port        a datagram: the time, `2026-11-25T09:39:51.123Z` (24 bytes), within the 3x bound
  TCP  --proto-port  a line protocol, one reply line per request line:
                       `GET TIME` -> the time line, `SAY HI` -> `Hello, World!`, else `ERR ...`
  TCP+UDP --time-port  RFC 868 TIME: 4 bytes, big-endian seconds since 1900-01-01 00:00 UTC
"""
# ruff: noqa: UP031
# (%-formatting: the fastest way to build the time strings, which are rebuilt every millisecond)
from __future__ import annotations

import struct
import time

HELLO = b"Hello, World!\n"
ERR_UNKNOWN = b"ERR unknown command (try GET TIME or SAY HI)\n"
ERR_EMPTY = b"ERR empty line (try GET TIME or SAY HI)\n"
ERR_TOO_LONG = b"ERR line too long\n"
ERR_BUSY = b"ERR busy\n"
ERR_BUSY_SOURCE = b"ERR busy: too many connections from your address\n"
ERR_IDLE = b"ERR idle timeout\n"
ERR_STOPPING = b"ERR server stopping\n"
SECONDS_1900_TO_1970 = 2208988800


# --- the line protocol (--proto-port) ---------------------------------------------------------------

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
    """The reply (one line, LF-terminated) to one request line."""
    if line.startswith(b"GET TIME"):
        return time_line
    if line.startswith(b"SAY HI"):
        return HELLO
    if not line.strip():
        return ERR_EMPTY
    return ERR_UNKNOWN


# --- UDP: never more than 3x the request's bytes (the anti-amplification rule of RFC 9000 8.1) --------

def udp_reply(nbytes: int, full: bytes, seconds: bytes) -> bytes | None:
    """The --port reply to a datagram of `nbytes`: >= 8 bytes get the 24-byte time, 7 bytes the 20-byte
    `2026-11-25T09:39:51Z`, 0..6 bytes nothing."""
    limit = 3 * nbytes
    if limit >= len(full):
        return full
    if limit >= len(seconds):
        return seconds
    return None


def rfc868_reply(nbytes: int, four: bytes) -> bytes | None:
    """The RFC 868 UDP reply: 4 bytes for a datagram of >= 2 bytes, else nothing (so `rdate -u`, which
    sends an empty datagram, gets no answer; `rdate -p` over TCP works)."""
    return four if 3 * nbytes >= 4 else None


# --- the time, in every form a reply needs -----------------------------------------------------------

def iso_ms(ms: int) -> str:
    """`2026-11-25T09:39:51.123Z` for a Unix time in milliseconds (always 24 characters until 9999)."""
    sec, milli = divmod(ms, 1000)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (*time.gmtime(sec)[:6], milli)


def rfc868_bytes(unix_seconds: int) -> bytes:
    """RFC 868 time: seconds since 1900-01-01 00:00 UTC, big-endian, modulo 2**32 (era wrap 2036)."""
    return struct.pack("!I", (unix_seconds + SECONDS_1900_TO_1970) & 0xFFFFFFFF)


class Clock:
    """The current time as replies need it; `tick()` rebuilds it whenever the millisecond changed, so
    a reply always carries the current millisecond and the strings are built once per millisecond.

    text: `2026-11-25T09:39:51.123Z` (str, for the log); iso: the same as bytes (the UDP reply);
    line: iso + LF (TCP, line protocol); seconds: `2026-11-25T09:39:51Z` (a 7-byte UDP request's
    reply); rfc868: the 4 RFC 868 bytes. One Clock per thread: nothing is shared.
    """

    __slots__ = ("_sec_text", "iso", "line", "ms", "rfc868", "sec", "seconds", "text")

    def __init__(self) -> None:
        self.ms = self.sec = -1
        self.tick()

    def tick(self) -> Clock:
        ms = time.time_ns() // 1000000
        if ms != self.ms:
            sec, milli = divmod(ms, 1000)
            if sec != self.sec:
                self.sec = sec
                self._sec_text = "%04d-%02d-%02dT%02d:%02d:%02d" % time.gmtime(sec)[:6]
                self.seconds = (self._sec_text + "Z").encode()
                self.rfc868 = rfc868_bytes(sec)
            self.ms = ms
            self.text = "%s.%03dZ" % (self._sec_text, milli)
            self.iso = self.text.encode()
            self.line = self.iso + b"\n"
        return self
