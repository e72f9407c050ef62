"""The command users type: ``python labctl.py up``, ``run tcp``, ``capture --port 8080``."""
from labctl.__main__ import run

raise SystemExit(run())
