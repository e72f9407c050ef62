"""startat_output.py: how startat.py passes its program's stdout and stderr on (stdlib only).

Never blocking: a caller that stops reading (a stalled SSH session) must not stop the launcher's
timeout or its signals from working, so output is written only as far as our stdout/stderr take it
at once, and the rest waits (its pipe is not read meanwhile: the program blocks, not the launcher).
A caller that is gone (the write fails: an SSH session dropped) stops the program.
"""
from __future__ import annotations

import os
import select
import time
from collections.abc import Callable  # (collections is there anyway: signal imports enum)


class Relay:
    """The program's output pipes -> our stdout (1) and stderr (2)."""

    def __init__(self, on_gone: Callable[[], None]) -> None:
        self.pipes: dict[int, int] = {}  # our read end -> where its data goes
        self.backlog: dict[int, bytes] = {}  # our stdout/stderr -> output our caller has not taken yet
        self.on_gone = on_gone  # called when our caller is gone

    def readable(self) -> list[int]:
        """The pipes to read now (one whose output still waits for our caller is not)."""
        return [fd for fd, dest in self.pipes.items() if not self.backlog.get(dest)]

    def waiting(self) -> list[int]:
        """Our stdout/stderr, where they hold output our caller has not taken yet."""
        return [dest for dest, data in self.backlog.items() if data]

    def read(self, fd: int) -> None:
        data = os.read(fd, 4096)  # (<= PIPE_BUF: a pipe that polls writable takes it without blocking)
        if not data:
            os.close(fd)
            del self.pipes[fd]
            return
        self.backlog[self.pipes[fd]] = data
        self.write_out(self.pipes[fd])

    def write_out(self, dest: int) -> None:
        """Pass output on to `dest` as far as it takes it without blocking."""
        data = self.backlog.get(dest, b"")
        ready = select.poll()
        ready.register(dest, select.POLLOUT)
        try:
            while data and ready.poll(0):
                data = data[os.write(dest, data[:4096]):]
        except OSError:  # whoever started us is gone: stop the program
            data = b""
            self.on_gone()
        self.backlog[dest] = data

    def close(self) -> None:
        for fd in self.pipes:
            os.close(fd)
        self.pipes = {}


def to_stderr(text: str, patience: float = 2.0) -> None:
    """Write to stderr, waiting at most `patience` seconds for a caller that does not read."""
    data, deadline = text.encode(), time.monotonic() + patience
    ready = select.poll()
    ready.register(2, select.POLLOUT)
    try:
        while data and ready.poll(max(0.0, deadline - time.monotonic()) * 1000.0):
            data = data[os.write(2, data[:4096]):]
    except OSError:
        pass
