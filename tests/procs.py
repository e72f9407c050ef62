"""This machine's live processes, read from /proc once for every test that looks for leftovers."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def live_processes() -> Iterator[tuple[int, bytes, Path]]:
    """(pid, command line with NUL separators, its /proc entry) of every process that is not a zombie
    (or dead); processes that end while being read are passed over."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            if stat[stat.rindex(b")") + 2:][:1] in (b"Z", b"X"):
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        yield int(entry.name), cmdline, entry
