"""Analyse a capture, one way: read -> conversations -> summary -> one renderer per output.

- read (``pcap.py``, ``decode.py``) and conversations (``conversations.py`` with ``fastpath.py``,
  ``tcp.py``, ``udp.py``): ``analyse_file(path)`` returns an ``Analysis``;
- each conversation's figures (``figures.py``) and the capture's summary (``summary.py``):
  ``summarise(analysis)`` returns a ``Summary``;
- renderers: ``terminal.render(summary)``, ``svg.write_svgs(summary, dir)``,
  ``html.write_html(summary, path)``, and ``json_report.write_json(analysis, out)`` (which adds up
  the same totals while it writes every conversation's line).

``render_terminal(analysis)`` is summarise + terminal.render (the capture command calls it after a
capture). Rendering modules are imported only when used, so ``--json`` stays light.
"""
from __future__ import annotations

from pathlib import Path

from labctl.analyse.conversations import DEFAULT_DETAIL, build
from labctl.analyse.model import Analysis, Conversation, Exchange, Packet
from labctl.analyse.pcap import CaptureFileError, Source

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import TextIO

    from labctl.analyse.summary import Summary

__all__ = ["Analysis", "CaptureFileError", "Conversation", "Exchange", "Packet", "analyse_file",
           "render_terminal", "summarise"]


def analyse_file(path: str | Path | Source, detail: int = DEFAULT_DETAIL) -> Analysis:
    """Read a pcap/pcapng file (or an opened ``pcap.Source``: a FIFO, standard input) and build its
    conversations.

    ``detail``: how many conversations per protocol keep their packets for ladder diagrams.
    Raises ``CaptureFileError`` (a ``LabctlError``) for a file that is not a readable capture.
    """
    builder, info = build(path, detail)
    return Analysis(str(path), info, builder)


def summarise(analysis: Analysis, listed: int = 0, run: dict | None = None,
              captured: set[str] | None = None) -> Summary:
    """The capture's summary: facts, totals, the conversations to draw (and the first ``listed``);
    ``run``/``captured``: the run's results and the nodes captured, for the UDP clients' verdicts."""
    from labctl.analyse.summary import summarise as _summarise

    return _summarise(analysis, listed, run, captured)


def render_terminal(analysis: Analysis, out: TextIO | None = None, ladders: int = 1,
                    width: int | None = None) -> None:
    """Print ladders (``ladders`` per protocol) and the TCP-vs-UDP comparison to ``out`` (stdout)."""
    from labctl.analyse import terminal

    terminal.render(summarise(analysis), out=out, ladders=ladders, width=width)
