"""A remote command that keeps running while we do other things: :meth:`Connection.launch`'s result.

:meth:`~labctl.remote.Connection.run` waits for a command to end. A triggered client must instead
be watched together with all the others, from one thread that Ctrl-C can interrupt, and stopped when
labctl stops: its stdin stays open, and the command on the node is tied to it (``run`` wraps each
client so that EOF on stdin, which comes when we :meth:`hangup` or when the SSH connection drops
because labctl died, stops the client's whole process group).

:func:`wait_all` pumps many of them at once with ``select`` until each has finished or a deadline.
"""
from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Iterable

import paramiko

KEEP = 512 * 1024  # bytes of each stream kept from its start, and as many from its end


class Output:
    """A stream's bytes, bounded: the first KEEP and the last KEEP (a client that floods its stdout
    cannot fill our memory, and the launcher's last stderr line, its timings, is never lost)."""

    def __init__(self) -> None:
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0

    def __iadd__(self, data: bytes) -> Output:
        room = KEEP - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > KEEP:
                self.dropped += len(self.tail) - KEEP
                del self.tail[:len(self.tail) - KEEP]
        return self

    def __bytes__(self) -> bytes:
        gap = f"\n[... {self.dropped} bytes not kept ...]\n".encode() if self.dropped else b""
        return bytes(self.head) + gap + bytes(self.tail)


class RemoteProcess:
    """One command running on a host over its own SSH channel, output gathered as it comes."""

    def __init__(self, host: str, command: str, channel: paramiko.Channel) -> None:
        self.host, self.command, self.channel = host, command, channel
        self.stdout, self.stderr = Output(), Output()
        self.exited: int | None = None
        self.lost: str | None = None  # why the channel failed, if it did

    def fileno(self) -> int:
        return self.channel.fileno()

    @property
    def finished(self) -> bool:
        return self.exited is not None or self.lost is not None

    def pump(self) -> bool:
        """Take whatever output is there; True once the command has ended (or the channel was lost)."""
        if self.finished:
            return True
        chan = self.channel
        try:
            while chan.recv_ready():
                self.stdout += chan.recv(65536)
            while chan.recv_stderr_ready():
                self.stderr += chan.recv_stderr(65536)
            if chan.exit_status_ready() and chan.eof_received and not chan.recv_ready() \
                    and not chan.recv_stderr_ready():
                self.exited = chan.recv_exit_status()
            elif chan.closed:
                self.lost = "the connection closed before the command ended"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.lost = f"lost the connection: {exc}"
        return self.finished

    def hangup(self) -> None:
        """EOF on the command's stdin: a client wrapped by ``run`` stops its process group then."""
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            self.channel.shutdown_write()

    def close(self) -> None:
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            self.channel.close()

    def text(self, which: str) -> str:
        return bytes(self.stdout if which == "stdout" else self.stderr).decode(errors="replace")


def wait_all(procs: Iterable[RemoteProcess], deadline: float) -> list[RemoteProcess]:
    """Pump every process until all have finished or ``time.monotonic()`` passes ``deadline``.

    Returns those still running. Runs in the caller's thread, in slices of at most 0.2 s, so a
    KeyboardInterrupt (Ctrl-C) reaches the caller at once.
    """
    pending = [p for p in procs if not p.pump()]
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        select.select(pending, [], [], min(left, 0.2))
        pending = [p for p in pending if not p.pump()]
    return pending
