"""The terminal report: ladder diagrams, the TCP-vs-UDP table and what this capture shows, from a Summary.

``ladder_lines`` draws a ladder's rows (``ladder.py``) as plain text, lanes and arrows (the picture a
teacher draws on the board); each line comes with a style name, so ``render`` colours it with rich on
a terminal and prints it as is into a file or pipe.
"""
from __future__ import annotations

import shutil
import sys

from labctl.analyse.ladder import Row, conversation_rows
from labctl.analyse.model import Conversation
from labctl.analyse.story import comparison_rows, findings
from labctl.analyse.summary import Summary

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import TextIO

    from labctl.analyse.multinode import NodeReport, OneWay

ARROW_R, ARROW_L, LANE, LINE, LOST = "▶", "◀", "│", "─", "✗"


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
        if r.label and r.stub:      # seen leaving, never arriving: a stub from the sender, ending in ✗
            reach = (hi - lo) * 2 // 3
            lo, hi = (a, a + reach) if b > a else (a - reach, a)
            for x in range(lo + 1, hi):
                line[x] = LINE
            line[hi - 1 if b > a else lo + 1] = LOST
        elif r.label:
            for x in range(lo + 1, hi):
                line[x] = LINE if line[x] == " " or line[x] == LANE else line[x]
            if b > a:
                line[hi - 1] = ARROW_R
            else:
                line[lo + 1] = ARROW_L
        if r.label:
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
    if conv.crossings is not None:
        lines.append((crossing_line(conv), "text"))
    lanes = [conv.client_node or "client", conv.server_node or "server"]
    lines += ladder_lines(lanes, conversation_rows(conv))
    return lines


def crossing_line(conv: Conversation) -> str:
    """One line under a ladder's title: each way's one-way time, the packets lost."""
    cr = conv.crossings
    assert cr is not None
    c, s = cr.client_node or "client", cr.server_node or "server"
    bits = [f"{c} → {s}: {cr.to_server.text}", f"{s} → {c}: {cr.to_client.text}"]
    if cr.lost:
        bits.append(f"{len(cr.lost)} lost")
    return "  " + "; ".join(bits)


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


def resent_lines(summary: Summary) -> list[str]:
    """What each TCP conversation's retransmissions cost, one line each (none when nothing was resent)."""
    if not summary.resent:
        return []
    out = ["", "TCP retransmissions, per conversation (first copy to the one that got through):"]
    out += ["  " + line for line in summary.resent]
    if summary.resent_total > len(summary.resent):
        out.append(f"  (the first {len(summary.resent)} of {summary.resent_total}; --json lists them all)")
    return out


def client_lines(summary: Summary) -> list[str]:
    """Per UDP client: whether it got an answer, and from what that is known."""
    clients = summary.clients
    if clients is None or not clients.listed:
        return []
    out = ["", "UDP clients:"] + ["  " + c.sentence() for c in clients.listed]
    return out + (["  " + clients.note()] if clients.note() else [])


def render(summary: Summary, out: TextIO | None = None, ladders: int = 1, width: int | None = None) -> None:
    """Ladders for the first conversations of each protocol (``ladders`` each), the comparison table and
    the findings, to ``out`` (stdout)."""
    o = _Out(out, width)
    f = summary.facts
    o.line(f"{f.path}: {f.packets} packet{'' if f.packets == 1 else 's'}, {f.bytes} bytes "
           f"({f.format}, {', '.join(f.link_types) or '?'}); "
           f"{f.tcp_conversations} TCP and {f.udp_conversations} UDP conversations", "title")
    nodes = summary.nodes
    if nodes is not None:
        for p in nodes.points:
            o.line(f"  capture point {p.name} ({p.node} {p.address or 'address unknown'}, "
                   f"{p.file}): {p.packets} packets, {p.bytes} bytes", "lane")
    blocks_t = [conversation_ladder(c) for c in summary.shown("tcp", ladders)]
    blocks_u = [conversation_ladder(c) for c in summary.shown("udp", ladders)]
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
    not_analysed = "Not analysed: " + "; ".join(f"{n} {why}" for why, n in f.not_analysed.items())
    if not f.tcp_conversations and not f.udp_conversations:
        o.line("")
        o.line("No TCP or UDP conversations in this capture. Was tcpdump listening on the server's "
               "interface with a filter that matches the port (e.g. 'port 8080'), and did the clients "
               "run while it was capturing?", "warn")
        if f.not_analysed:
            o.line(not_analysed, "lane")
        return
    o.line("")
    headers, rows = comparison_rows(summary.tcp, summary.udp)
    o.table(headers, rows, "TCP vs UDP in this capture")
    o.line("")
    for sentence in findings(summary.tcp, summary.udp):
        o.line("• " + sentence, "text")
    for line in resent_lines(summary) + client_lines(summary):
        o.line(line, "text")
    if nodes is not None:
        render_nodes(o, nodes)
    if f.not_analysed:
        o.line("")
        o.line(not_analysed, "lane")


PER_CONVERSATION = 20    # conversations listed one by one under "Between the nodes"


def render_nodes(o: _Out, nodes: NodeReport) -> None:
    """Between the nodes: how many packets crossed, their one-way times, and where the lost were."""
    o.line("")
    o.line("Between the nodes", "head")
    for sentence in nodes.lines():
        o.line("• " + sentence, "text")
    for conv, lost in nodes.lost_packets:
        o.line(f"✗ {conv}: {lost.text}", "lost")
    shown = nodes.conversations[:PER_CONVERSATION]
    if shown:
        rows = [[name, f"{cr.client_node or '?'} → {cr.server_node or '?'}", _ow(cr.to_server),
                 _ow(cr.to_client), str(len(cr.lost))] for name, cr in shown]
        o.line("")
        o.table(["conversation", "nodes", "one-way to server ms", "one-way to client ms", "lost"], rows,
                "One-way times per conversation (median, packets seen at both ends)")
        if len(nodes.conversations) > len(shown):
            o.line(f"(first {len(shown)} of {len(nodes.conversations)}; --json lists every one)", "lane")


def _ow(ow: OneWay) -> str:
    return "–" if ow.median_ms is None else f"{ow.median_ms:.3f} ({ow.packets})"
