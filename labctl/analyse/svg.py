"""Printable SVG ladder diagrams: black on white, readable fonts, one per conversation or a pair.

Retransmissions and unanswered requests are drawn dashed (not only red), so they still show on a
black-and-white printout.
"""
from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from labctl.analyse.ladder import conversation_rows, packet_label
from labctl.analyse.model import Conversation
from labctl.analyse.summary import Summary

ROW = 34          # px per packet
TOP = 92          # first arrow's y
LANE_GAP = 330    # px between client and server lanes
LEFT = 86         # x of the client lane (time labels to its left)
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Consolas, monospace"

_DEFS = """<defs>
<marker id="ah" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="11" markerHeight="9"
 markerUnits="userSpaceOnUse" orient="auto-start-reverse">
<path d="M0,0 L10,5 L0,10 z" fill="#000"/></marker>
<marker id="ahr" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="11" markerHeight="9"
 markerUnits="userSpaceOnUse" orient="auto-start-reverse">
<path d="M0,0 L10,5 L0,10 z" fill="#b00"/></marker>
</defs>"""


def _t(x: float, y: float, text: str, size: int = 13, anchor: str = "middle", weight: str = "normal",
       fill: str = "#000", family: str = FONT, style: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-family="{family}" font-size="{size}" '
            f'text-anchor="{anchor}" font-weight="{weight}" font-style="{style}" fill="{fill}">'
            f"{escape(text)}</text>")


def ladder_group(conv: Conversation, x0: float = 0, y0: float = 0) -> tuple[str, float, float]:
    """SVG elements for one conversation's ladder at (x0, y0); returns (markup, width, height)."""
    rows = conversation_rows(conv)
    cx, sx = x0 + LEFT, x0 + LEFT + LANE_GAP
    parts = []
    title = f"{conv.proto.upper()}: {conv.packets} packet{'s' if conv.packets != 1 else ''}, " \
            f"{conv.bytes} bytes on the wire, {conv.payload_bytes} bytes of payload"
    parts.append(_t(x0 + LEFT + LANE_GAP / 2, y0 + 20, title, 15, weight="bold"))
    for x, name, addr in ((cx, conv.client_node or "client", conv.client),
                          (sx, conv.server_node or "server", conv.server)):
        parts.append(f'<rect x="{x - 70:.1f}" y="{y0 + 32:.1f}" width="140" height="38" rx="5" '
                     f'fill="#fff" stroke="#000" stroke-width="1.5"/>')
        parts.append(_t(x, y0 + 48, name, 13, weight="bold"))
        parts.append(_t(x, y0 + 63, addr, 11, family=MONO))
    bottom = y0 + TOP + ROW * max(len(rows), 1)
    if conv.crossings is not None:     # the last arrow may slant below its row
        bottom += ROW * 0.5
    for x in (cx, sx):
        parts.append(f'<line x1="{x:.1f}" y1="{y0 + 70:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                     f'stroke="#000" stroke-width="2"/>')
    parts.append(_t(x0 + LEFT - 12, y0 + TOP - 4, "ms", 11, anchor="end", fill="#444", style="italic"))
    y_at = _time_axis(rows, y0)
    for i, r in enumerate(rows):
        y = y0 + TOP + ROW * i + ROW * 0.6
        a, b = (cx, sx) if r.src == 0 else (sx, cx)
        if r.t_ms is not None:
            parts.append(_t(x0 + LEFT - 12, y + 4, f"{r.t_ms:.3f}", 11, anchor="end", family=MONO,
                            fill="#444"))
        if r.style == "gap":
            parts.append(f'<rect x="{cx - 3:.1f}" y="{y - 12:.1f}" width="{sx - cx + 6:.1f}" height="20" '
                         'fill="#fff"/>')
            for x in (cx, sx):
                parts.append(f'<line x1="{x:.1f}" y1="{y - 12:.1f}" x2="{x:.1f}" y2="{y + 8:.1f}" '
                             'stroke="#000" stroke-width="2" stroke-dasharray="2 3"/>')
            parts.append(_t((cx + sx) / 2, y + 2, r.note, 12, fill="#333", style="italic"))
            continue
        bad = r.style in ("lost", "reset", "suspect")
        color = "#b00" if bad else "#000"
        if r.label and r.stub:   # left its sender, never reached the other end: a stub ending in ✗
            end = a + (b - a) * 0.55
            parts.append(f'<line x1="{a:.1f}" y1="{y:.1f}" x2="{end:.1f}" y2="{y:.1f}" stroke="#b00" '
                         'stroke-width="1.8" stroke-dasharray="7 4"/>')
            parts.append(_t(end + (8 if b > a else -8), y + 5, "✗", 16, weight="bold", fill="#b00"))
            parts.append(_t((a + end) / 2, y - 6, r.label, 12, weight="bold", fill="#b00", family=MONO))
        elif r.label:
            dash = ' stroke-dasharray="7 4"' if r.style == "lost" else ""
            marker = "ahr" if bad else "ah"
            y2 = y if r.arrive_ms is None else max(y, y_at(r.arrive_ms))
            if y2 - y < 2:       # a one-way time too short to see at this scale: drawn level
                y2 = y
            parts.append(f'<line x1="{a:.1f}" y1="{y:.1f}" x2="{b:.1f}" y2="{y2:.1f}" stroke="{color}" '
                         f'stroke-width="{2 if r.style in ("data", "handshake") else 1.4}"{dash} '
                         f'marker-end="url(#{marker})"/>')
            weight = "bold" if r.style in ("data", "handshake", "reset") else "normal"
            parts.append(_t((a + b) / 2, (y + y2) / 2 - 6, r.label, 12, weight=weight, fill=color,
                            family=MONO))
        else:   # an answer that never came
            parts.append(f'<line x1="{a:.1f}" y1="{y:.1f}" x2="{a + (b - a) * 0.35:.1f}" y2="{y:.1f}" '
                         f'stroke="#b00" stroke-width="1.4" stroke-dasharray="4 4"/>')
        if r.note and r.arrive_ms is not None and not bad:    # only a one-way time: not an alarm
            parts.append(_t(max(a, b) + 12, y + 4, r.note, 12, anchor="start", fill="#444", style="italic"))
        elif r.note:
            parts.append(_t(max(a, b) + 12, y + 4, r.note, 12, anchor="start", fill="#b00",
                            style="italic", weight="bold"))
    width = LEFT + LANE_GAP + 200
    if conv.crossings is not None:     # (one-way times and losses make longer notes: room for them)
        width = LEFT + LANE_GAP + max(200, 24 + 6.8 * max((len(r.note) for r in rows), default=0))
    return "\n".join(parts), width, bottom - y0 + 16


def _time_axis(rows: list, y0: float):
    """y of a time on the ladder: rows are evenly spaced, so a time between two rows' times lies that
    far between their y (an arrival after the last row: at the last rows' pace, at most 0.8 rows on)."""
    marks = [(r.t_ms, y0 + TOP + ROW * i + ROW * 0.6) for i, r in enumerate(rows) if r.t_ms is not None]

    def y_at(t: float) -> float:
        prev = None
        for tm, ym in marks:
            if tm >= t:
                if prev is None or tm == prev[0]:
                    return ym
                return prev[1] + (ym - prev[1]) * (t - prev[0]) / (tm - prev[0])
            prev = (tm, ym)
        if len(marks) >= 2 and marks[-1][0] > marks[-2][0]:     # after the last row: its pace, to a cap
            (ta, ya), (tb, yb) = marks[-2:]
            return yb + min((yb - ya) * (t - tb) / (tb - ta), ROW * 0.8)
        return marks[-1][1] + ROW * 0.5 if marks else y0 + TOP

    return y_at


def svg_document(groups: list[tuple[str, float, float]], caption: str = "") -> str:
    """Wrap ladder groups (laid out left to right) into one standalone SVG."""
    width = sum(w for _, w, _ in groups) + 20
    height = max((h for _, _, h in groups), default=100) + (36 if caption else 10)
    body = []
    x = 10
    for markup, w, _h in groups:
        body.append(f'<g transform="translate({x},10)">{markup}</g>')
        x += w
    if caption:
        body.append(_t(width / 2, height - 12, caption, 12, fill="#333"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">'
            f'<rect width="100%" height="100%" fill="#fff"/>{_DEFS}\n' + "\n".join(body) + "</svg>\n")


def conversation_svg(conv: Conversation) -> str:
    return svg_document([ladder_group(conv)], _caption(conv))


def pair_svg(tcp: Conversation, udp: Conversation) -> str:
    """The TCP-vs-UDP picture: the two ladders side by side."""
    return svg_document([ladder_group(tcp), ladder_group(udp)],
                        "TCP (left) and UDP (right), the same request for the time, from this capture")


def _caption(conv: Conversation) -> str:
    bits = [f"{conv.proto.upper()} {conv.client} → {conv.server}"]
    if conv.proto == "tcp":
        if conv.rtt_ms is not None:
            bits.append(f"handshake RTT {conv.rtt_ms:.3f} ms")
        if conv.retransmissions:
            bits.append(f"{conv.retransmissions} retransmission(s)")
        if conv.refused:
            bits.append("connection refused")
    elif conv.unanswered:
        bits.append(f"{conv.unanswered} request(s) without reply")
    if conv.ttfb_ms is not None:
        bits.append(f"first byte of the answer after {conv.ttfb_ms:.3f} ms")
    return "; ".join(bits)


def write_svgs(summary: Summary, directory: Path, per_proto: int = 2) -> list[Path]:
    """One SVG per shown conversation, plus tcp-vs-udp.svg when the capture has both."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    tcp = summary.shown("tcp", per_proto)
    udp = summary.shown("udp", per_proto)
    if tcp and udp:
        p = directory / "tcp-vs-udp.svg"
        p.write_text(pair_svg(tcp[0], udp[0]), encoding="utf-8")
        written.append(p)
    for conv in tcp + udp:
        name = f"{conv.proto}-{conv.index + 1:03d}-{conv.client.replace(':', '_').strip('[]')}.svg"
        p = directory / name
        p.write_text(conversation_svg(conv), encoding="utf-8")
        written.append(p)
    return written


__all__ = ["conversation_svg", "ladder_group", "packet_label", "pair_svg", "svg_document", "write_svgs"]
