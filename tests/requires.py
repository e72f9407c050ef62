"""What a test needs from the machine, said once: skipped visibly here, a failure under CI.

A green CI must prove what the README claims, so under ``CI=true`` a missing required part (tshark,
chromium, tcpdump, sshd, the reference programs in ``../shared/bench``, root) fails the test instead of
skipping it. On a developer's machine it is a visible skip with the install hint.

    from tests.requires import require_tool, require_file, require_root
    TSHARK = require_tool("tshark", "apt-get install tshark")      # inside a test or fixture

Call these inside a test or a fixture (a module-wide need: an autouse fixture that calls them).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH = REPO.parent / "shared" / "bench"


def under_ci() -> bool:
    """True when the suite runs as CI (``CI=true``): a missing required part is then a failure."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str, hint: str = "") -> None:
    """Skip (here) or fail (under CI) because ``what`` is not on this machine."""
    message = f"{what} is missing" + (f" ({hint})" if hint else "")
    if under_ci():
        pytest.fail(f"required under CI: {message}", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, hint: str = "") -> str:
    """The path of program ``name`` on PATH or in /usr/sbin, /sbin (or an absolute path), else skip/fail."""
    found = shutil.which(name, path=os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin")
    if not found:
        missing(name, hint or f"apt-get install {name}")
    return found  # type: ignore[return-value]


def require_file(path: str | Path, hint: str = "") -> Path:
    """``path`` if it exists, else skip/fail."""
    path = Path(path)
    if not path.exists():
        missing(str(path), hint)
    return path


def require_root() -> None:
    """Skip/fail unless running as root (namespaces, sshd, tcpdump need it)."""
    if os.geteuid() != 0:
        missing("root", "run the suite as root")
