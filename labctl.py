"""The command users type: ``python labctl.py up``, ``run tcp``, ``capture --port 8080``."""
from labctl.cli import main

raise SystemExit(main())
