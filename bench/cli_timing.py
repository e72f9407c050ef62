"""What the CLI benchmarks share: the CLI run as a user runs it, timed whole, and the load beside it.

Imported by bench/lab.py, bench/exercise.py and bench/run.py (run as scripts: bench/ is on sys.path).
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK_FILE = "/run/labctl-test.lock"      # the e2e tests' lab lock: a benchmark never builds beside them
# The CLI as a user runs it: with its bytecode cached (an environment that says PYTHONDONTWRITEBYTECODE
# would make every start compile labctl again, ~0.1 s that no installed labctl pays).
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str]) -> float:
    """Seconds for the whole process ``argv`` (from the repository); a failure ends the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=CLI_ENV)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[2:])} failed ({proc.returncode}): "
                         f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return elapsed


def load() -> str:
    """This machine's load average (1, 5, 15 min): the figures beside it depend on it."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())
