"""What a labctl command said on stderr, beside the one line naming the backend it uses.

Every command that drives a lab first says ``labctl: backend NAME (why)``; a test that counts a
command's lines (one clear line per error) counts the others.
"""
from __future__ import annotations

BACKEND_LINE = "labctl: backend "


def stderr_lines(stderr: str) -> list[str]:
    """The stderr lines of a command, without the line naming its backend."""
    return [line for line in stderr.strip().splitlines() if not line.startswith(BACKEND_LINE)]
