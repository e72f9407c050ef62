"""Analyse a capture: read -> conversations -> ladders -> report (terminal, SVG, HTML, JSON).

``analyse_file(path)`` returns an ``Analysis``; ``render_terminal(analysis)`` prints the ladders and the
comparison table (the capture command calls both after a capture). Rendering modules are imported
only when used, so ``--json`` stays light.
"""
from __future__ import annotations

from pathlib import Path

from labctl.analyse.conversations import DEFAULT_DETAIL, build
from labctl.analyse.model import Analysis, Conversation, Exchange, Packet
from labctl.analyse.pcap import CaptureFileError, Source

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["Analysis", "CaptureFileError", "Conversation", "Exchange", "Packet", "analyse_file",
           "render_terminal"]


def analyse_file(path: str | Path | Source, detail: int = DEFAULT_DETAIL) -> Analysis:
    """Read a pcap/pcapng file (or an opened ``pcap.Source``: a FIFO, standard input) and build its
    conversations.

    ``detail``: how many conversations per protocol keep their packets for ladder diagrams.
    Raises ``CaptureFileError`` (a ``LabctlError``) for a file that is not a readable capture.
    """
    builder, info = build(path, detail)
    return Analysis(str(path), info, builder)


def render_terminal(analysis: Analysis, out: TextIO | None = None, ladders: int = 1,
                    width: int | None = None) -> None:
    """Print ladders (``ladders`` per protocol) and the TCP-vs-UDP comparison to ``out`` (stdout)."""
    from labctl.analyse.ladder import print_report

    print_report(analysis, out=out, ladders=ladders, width=width)
