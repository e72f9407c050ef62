"""``python -m labctl`` and the ``labctl`` console script: the CLI, with Ctrl-C at any moment one line."""
from __future__ import annotations

import sys


def run() -> int:
    """Load the CLI and run it; a Ctrl-C while the modules load or the parser is built prints one line."""
    try:
        from labctl.cli import main

        return main()
    except KeyboardInterrupt:
        print("labctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(run())
