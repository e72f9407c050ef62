"""``python -m labctl`` and the ``labctl`` console script: the CLI, with Ctrl-C at any moment one line."""
from __future__ import annotations

import os
import signal


def interrupted_while_loading(signum: int, frame: object) -> None:
    """SIGINT before the CLI runs: labctl has made nothing yet, so say so and leave (no traceback)."""
    os.write(2, b"labctl: interrupted\n")
    os._exit(130)


def run() -> int:
    """Load the CLI and run it; a Ctrl-C while the modules load or the parser is built prints one line."""
    signal.signal(signal.SIGINT, interrupted_while_loading)
    from labctl.cli import main

    return main(restore_sigint=True)


if __name__ == "__main__":
    raise SystemExit(run())
