"""The command users type: ``python labctl.py up``, ``run tcp``, ``capture --port 8080``."""
import os
import signal


def _interrupted(signum, frame):  # Ctrl-C while Python loads labctl: nothing made yet; one line
    os.write(2, b"labctl: interrupted\n")
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted)
from labctl.__main__ import run  # noqa: E402  (after the handler: a Ctrl-C while loading is one line)

raise SystemExit(run())
