"""SIGINT/SIGTERM during a capture: one KeyboardInterrupt, then held back while the clean-up runs."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Signals:
    """SIGINT/SIGTERM as one KeyboardInterrupt, or held back while something must not be interrupted.

    Only the first signal interrupts: the clean-up it triggers (stop tcpdump, fetch the pcap) must run
    to the end however often an impatient user presses Ctrl-C (each step has its own timeout).
    """

    def __init__(self) -> None:
        self.holding = 0
        self.fired = False
        self.pending: int | None = None
        self.saved: dict[int, object] = {}

    def _handler(self, signum: int, _frame: object) -> None:
        if self.holding or self.fired:
            self.pending = signum
            return
        self.fired = True
        raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        self.saved.clear()

    @contextmanager
    def held(self, reraise: bool = True) -> Iterator[None]:
        """Hold signals back inside the block; raise KeyboardInterrupt after it if one came."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if reraise and not self.holding and self.pending is not None and not self.fired:
            self.pending = None
            self.fired = True
            raise KeyboardInterrupt


