"""Argument types shared by the commands: each refuses a bad value with argparse's one-line usage error."""
from __future__ import annotations

import argparse
from pathlib import Path


def path_arg(text: str) -> Path:
    """A path option: an empty string is refused (``Path("")`` would silently mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a path, not an empty string")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a path cannot hold a NUL byte")
    return Path(text)
