"""Ladder diagrams in the terminal: one column per host, one arrow per packet, time running down.

``ladder_lines`` draws lanes and arrows as plain text (the picture a teacher draws on the board); each
line comes with a style name so ``print_report`` can colour it with rich on a terminal and print it
as is into a file or pipe.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from typing import TextIO

from labctl.analyse.model import Analysis, Conversation, Packet
from labctl.analyse.report import summaries
from labctl.analyse.story import comparison_rows, findings

ARROW_R, ARROW_L, LANE, LINE = "▶", "◀", "│", "─"


@dataclass
class Row:
    """One arrow: time, from lane, to lane, label on the arrow, note beside it, style."""

    t_ms: float | None
    src: int
    dst: int
    label: str
    note: str = ""
    style: str = ""


def packet_label(p: Packet) -> str:
    """SYN seq=0 · PSH-ACK seq=1 ack=1 len=28 · UDP len=9."""
    parts = [p.label]
    if p.seq is not None:
        parts.append(f"seq={p.seq}")
    if p.ack is not None:
        parts.append(f"ack={p.ack}")
    if p.length or p.label in ("UDP",):
        parts.append(f"len={p.length}")
    return " ".join(parts)


def packet_style(p: Packet) -> str:
    if any("retransmission" in n or "out-of-order" in n for n in p.notes):
        return "lost"
    if any(n.startswith("lost?") for n in p.notes):
        return "suspect"
    if p.label.startswith("RST") or p.label == "ICMP":
        return "reset"
    if p.label.startswith("SYN"):
        return "handshake"
    if p.label.startswith("FIN"):
        return "close"
    if p.length:
        return "data"
    return "ack"


def conversation_rows(conv: Conversation) -> list[Row]:
    """Rows for a two-lane ladder: lane 0 the client, lane 1 the server."""
    rows: list[Row] = []
    for p in conv.ladder or []:
        src, dst = (0, 1) if p.from_client else (1, 0)
        rows.append(Row(p.t_ms, src, dst, packet_label(p), ", ".join(p.notes), packet_style(p)))
    rows = _with_gaps(rows)
    if conv.proto == "udp":
        # an unanswered request: say so where the reply would have been
        out: list[Row] = []
        pending = False
        for r in rows:
            if r.src == 0 and pending:
                out.append(Row(None, 1, 0, "", "✗ no reply", "lost"))
            out.append(r)
            pending = r.src == 0
        if pending:
            out.append(Row(None, 1, 0, "", "✗ no reply", "lost"))
        rows = out
    return rows


def _with_gaps(rows: list[Row]) -> list[Row]:
    """Mark long silences (a retransmission timer, a slow client) with a gap row."""
    times = [r.t_ms for r in rows if r.t_ms is not None]
    if len(times) < 3:
        return rows
    steps = sorted(b - a for a, b in zip(times, times[1:]))
    typical = steps[len(steps) // 2]
    out: list[Row] = []
    prev = None
    for r in rows:
        if prev is not None and r.t_ms is not None and r.t_ms - prev > max(20.0, 20 * typical):
            out.append(Row(None, 0, 1, "", f"⋯ {r.t_ms - prev:.0f} ms pass ⋯", "gap"))
        out.append(r)
        if r.t_ms is not None:
            prev = r.t_ms
    return out


def ladder_lines(lanes: list[str], rows: list[Row], gap: int | None = None) -> list[tuple[str, str]]:
    """Draw a ladder: (text, style) lines. ``lanes`` are the column titles, left to right."""
    n = len(lanes)
    need = max([len(r.label) + 8 for r in rows if abs(r.dst - r.src) == 1] + [16])
    gap = gap or min(max(need, 22), 52)
    tw = max([9] + [len(f"{r.t_ms:.3f}") for r in rows if r.t_ms is not None])   # time column
    first = tw + 2 + max(len(lanes[0]) // 2 - 1, 0)
    pos = [first + i * (gap + 1) for i in range(n)]   # x of each lane line
    width = pos[-1] + 1
    out: list[tuple[str, str]] = []
    head = [" "] * (width + 12)
    for i, name in enumerate(lanes):
        x = max(tw + 1, min(pos[i] - len(name) // 2, width + 12 - len(name)))
        if i and x <= pos[i - 1] + 1:
            x = pos[i - 1] + 2
        head[x:x + len(name)] = list(name)
    out.append(("ms".rjust(tw) + "".join(head)[tw:].rstrip(), "title"))
    blank = [" "] * width
    for x in pos:
        blank[x] = LANE
    out.append(("".join(blank).rstrip(), "lane"))
    for r in rows:
        if r.style == "gap":
            line = [" "] * width
            for x in pos:
                line[x] = "┊"
            text = f" {r.note} "
            mid = (pos[0] + pos[-1]) // 2 - len(text) // 2
            line[mid:mid + len(text)] = list(text)
            out.append(("".join(line).rstrip(), "lane"))
            continue
        line = list(blank)
        t = "" if r.t_ms is None else f"{r.t_ms:.3f}"
        line[0:tw] = list(t.rjust(tw))
        a, b = pos[r.src], pos[r.dst]
        lo, hi = min(a, b), max(a, b)
        if r.label:
            for x in range(lo + 1, hi):
                line[x] = LINE if line[x] == " " or line[x] == LANE else line[x]
            if b > a:
                line[hi - 1] = ARROW_R
            else:
                line[lo + 1] = ARROW_L
            label = f" {r.label} "
            room = hi - lo - 3
            if len(label) > room:
                label = label[:max(room, 0)]
            start = lo + 2 + (room - len(label)) // 2
            line[start:start + len(label)] = list(label)
        text = "".join(line)
        if r.note:
            text = text.rstrip() + "  " + r.note
        out.append((text.rstrip(), r.style))
    out.append(("".join(blank).rstrip(), "lane"))
    return out


def conversation_ladder(conv: Conversation) -> list[tuple[str, str]]:
    title = (f"{conv.proto.upper()}  client {conv.client}  ⇄  server {conv.server}   "
             f"({conv.packets} packet{'s' if conv.packets != 1 else ''}, {conv.bytes} bytes on the wire)")
    lines = [(title, "title")]
    lines += ladder_lines(["client", "server"], conversation_rows(conv))
    return lines


def side_by_side(left: list[tuple[str, str]], right: list[tuple[str, str]], gap: int = 4
                 ) -> list[tuple[str, str, str, str]]:
    w = max((len(t) for t, _ in left), default=0)
    n = max(len(left), len(right))
    left = left + [("", "")] * (n - len(left))
    right = right + [("", "")] * (n - len(right))
    return [(lt.ljust(w + gap), ls, rt, rs) for (lt, ls), (rt, rs) in zip(left, right)]


STYLES = {"title": "bold", "lane": "dim", "handshake": "cyan", "data": "bold green", "ack": "",
          "close": "yellow", "reset": "bold red", "lost": "bold red", "suspect": "red",
          "head": "bold underline", "text": "", "warn": "yellow"}


class _Out:
    """Writes (text, style) pieces: with rich colours on a terminal, plain text elsewhere."""

    def __init__(self, out: TextIO | None, width: int | None) -> None:
        self.file = out or sys.stdout
        self.tty = self.file.isatty() if hasattr(self.file, "isatty") else False
        self.width = width or (shutil.get_terminal_size((100, 40)).columns if self.tty else 200)
        self.console = None
        if self.tty:
            try:
                from rich.console import Console

                self.console = Console(file=self.file, highlight=False, width=self.width)
            except ImportError:  # pragma: no cover - rich is a dependency
                self.console = None

    def line(self, *pieces: str) -> None:
        """pieces: text, style, text, style, ..."""
        if self.console is None:
            self.file.write("".join(pieces[0::2]).rstrip() + "\n")
            return
        from rich.text import Text

        t = Text()
        for text, style in zip(pieces[0::2], pieces[1::2]):
            t.append(text, style=STYLES.get(style, style))
        self.console.print(t, soft_wrap=True)

    def table(self, headers: list[str], rows: list[list[str]], title: str) -> None:
        if self.console is not None:
            from rich.table import Table

            tab = Table(title=title, title_justify="left", header_style="bold")
            for i, h in enumerate(headers):
                tab.add_column(h, justify="left" if i == 0 else "right")
            for r in rows:
                tab.add_row(*r)
            self.console.print(tab)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        self.file.write(title + "\n")
        fmt = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])  # noqa: E731
                                  for i, c in enumerate(r))
        self.file.write(fmt(headers) + "\n")
        self.file.write("  ".join("-" * w for w in widths) + "\n")
        for r in rows:
            self.file.write(fmt(r) + "\n")


def print_report(analysis: Analysis, out: TextIO | None = None, ladders: int = 1,
                 width: int | None = None) -> None:
    """Ladders for the first conversations of each protocol, the comparison table and findings."""
    o = _Out(out, width)
    o.line(f"{analysis.path}: {analysis.packets} packet{'' if analysis.packets == 1 else 's'}, "
           f"{analysis.bytes} bytes "
           f"({analysis.info.format}, {', '.join(analysis.linktype_names) or '?'}); "
           f"{analysis.tcp_count} TCP and {analysis.udp_count} UDP conversations", "title")
    tcp_shown = analysis.shown("tcp", ladders)
    udp_shown = analysis.shown("udp", ladders)
    blocks_t = [conversation_ladder(c) for c in tcp_shown]
    blocks_u = [conversation_ladder(c) for c in udp_shown]
    wide = max((len(t) for b in blocks_t for t, _ in b), default=0)
    wide_u = max((len(t) for b in blocks_u for t, _ in b), default=0)
    for i in range(max(len(blocks_t), len(blocks_u))):
        lt = blocks_t[i] if i < len(blocks_t) else []
        lu = blocks_u[i] if i < len(blocks_u) else []
        o.line("")
        if lt and lu and wide + wide_u + 4 <= o.width:
            for a, sa, b, sb in side_by_side(lt, lu):
                o.line(a, sa, b, sb)
        else:
            for block in (lt, lu):
                for text, style in block:
                    o.line(text, style)
                if block:
                    o.line("")
    if not analysis.tcp_count and not analysis.udp_count:
        o.line("")
        o.line("No TCP or UDP conversations in this capture. Was tcpdump listening on the server's "
               "interface with a filter that matches the port (e.g. 'port 8080'), and did the clients "
               "run while it was capturing?", "warn")
        if analysis.builder.skipped:
            o.line("Not analysed: " + "; ".join(f"{n} {why}" for why, n in
                                                sorted(analysis.builder.skipped.items())), "lane")
        return
    tcp, udp = summaries(analysis)
    o.line("")
    headers, rows = comparison_rows(tcp, udp)
    o.table(headers, rows, "TCP vs UDP in this capture")
    o.line("")
    for sentence in findings(analysis, tcp, udp):
        o.line("• " + sentence, "text")
    if analysis.builder.skipped:
        o.line("")
        o.line("Not analysed: " + "; ".join(f"{n} {why}" for why, n in
                                            sorted(analysis.builder.skipped.items())), "lane")
