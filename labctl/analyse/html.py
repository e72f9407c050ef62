"""A self-contained HTML report: ladders inline as SVG, the TCP-vs-UDP table, findings and the exercise's
reflection questions answered from this capture. No scripts, fonts or links to fetch: one file to hand
out or print."""
from __future__ import annotations

import datetime as dt
from html import escape
from pathlib import Path

from labctl.analyse.model import Conversation
from labctl.analyse.story import comparison_rows, findings, reflection
from labctl.analyse.summary import Summary
from labctl.analyse.svg import ladder_group, svg_document

TYPE_CHECKING = False
if TYPE_CHECKING:
    from labctl.analyse.multinode import NodeReport, OneWay

LISTED = 200     # conversations in the table of every conversation (summarise(analysis, listed=LISTED))

CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;color:#111;background:#fff;margin:24px auto;
max-width:1180px;line-height:1.45;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:2px solid #111;padding-bottom:3px;
margin-top:34px}h3{font-size:16px;margin-bottom:4px}
.meta{color:#444;font-size:13px}
table{border-collapse:collapse;margin:10px 0;font-size:14px}
th,td{border:1px solid #999;padding:4px 10px;text-align:right}th:first-child,td:first-child{text-align:left}
thead th{background:#eee}
.ladder{overflow-x:auto;margin:8px 0 18px 0}.ladder svg{max-width:100%;height:auto}
.findings li{margin:4px 0}.q{font-weight:bold;margin-top:18px}
.warn{background:#fff4d6;border:1px solid #d9a400;padding:6px 10px}
.small{font-size:12px;color:#444}
@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}.ladder{page-break-inside:avoid}}
"""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _conv_rows(convs: list[Conversation]) -> list[list[str]]:
    rows = []
    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    for c in convs:
        extra = []
        if c.retransmissions:
            extra.append(f"{c.retransmissions} retransmitted" + (
                "" if c.retransmission_ms is None else f" (+{c.retransmission_ms:.1f} ms)"))
        if c.refused:
            extra.append("refused")
        if c.proto == "udp" and c.unanswered:
            extra.append(f"{c.unanswered} unanswered")
        if c.closed_by:
            extra.append(f"closed by {c.closed_by}")
        rows.append([c.proto.upper(), c.client, c.server, str(c.packets), str(c.bytes),
                     str(c.payload_bytes), f"{c.overhead_pct:.0f} %", f(c.rtt_ms), f(c.ttfb_ms),
                     f(c.duration_ms), ", ".join(extra)])
    return rows


def nodes_section(nodes: NodeReport) -> list[str]:
    """Between the nodes: the capture points, one-way times, where lost packets were last seen."""
    def ow(x: OneWay) -> str:
        return "–" if x.median_ms is None else f"{x.median_ms:.3f} ({x.packets})"

    out = ["<h2>Between the nodes</h2>",
           "<p>The capture was taken at several points at once. A packet seen leaving one node and "
           "arriving at another is drawn as one arrow, slanted by the time it took when that is large "
           "enough to see; a packet that left and never arrived is a red stub ending in ✗.</p>",
           _table(["capture point", "node", "address", "file", "packets", "bytes"],
                  [[p.name, p.node, p.address or "?", p.file, str(p.packets), str(p.bytes)]
                   for p in nodes.points])]
    out.append('<ul class="findings">' + "".join(f"<li>{escape(s)}</li>" for s in nodes.lines()) + "</ul>")
    if nodes.lost_packets:
        out.append("<h3>Lost on the way</h3>")
        out.append('<ul class="findings">' + "".join(f"<li><b>{escape(c)}</b>: {escape(x.text)}</li>"
                                                     for c, x in nodes.lost_packets) + "</ul>")
    rows = [[name, f"{cr.client_node or '?'} → {cr.server_node or '?'}", ow(cr.to_server), ow(cr.to_client),
             str(len(cr.lost)), ", ".join(cr.files)] for name, cr in nodes.conversations[:LISTED]]
    out.append("<h3>One-way time per conversation (median ms, packets seen at both ends)</h3>")
    out.append(_table(["conversation", "nodes", "to the server", "to the client", "lost", "file"], rows))
    return out


def render_html(summary: Summary) -> str:
    f = summary.facts
    tcp, udp = summary.tcp, summary.udp
    tcp_shown = summary.shown("tcp", 2)
    udp_shown = summary.shown("udp", 2)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>TCP vs UDP — {escape(Path(f.path).name)}</title>",
           f"<style>{CSS}</style></head><body>",
           "<h1>TCP vs UDP, seen on the wire</h1>",
           f'<p class="meta">Capture <b>{escape(f.path)}</b>: {f.packets} packets, '
           f"{f.bytes} bytes ({escape(f.format)}, "
           f"{escape(', '.join(f.link_types))}); {f.tcp_conversations} TCP and "
           f"{f.udp_conversations} UDP conversations. Report made by labctl on "
           f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"]
    for w in f.warnings:
        out.append(f'<p class="warn">Warning: {escape(w)}</p>')
    out.append("<h2>The ladders</h2>")
    out.append("<p>Time runs down. Each arrow is one packet, labelled with its TCP flags, relative "
               "sequence and acknowledgement numbers and payload length; the left column is the time "
               "in milliseconds since that conversation's first packet. Dashed red arrows were sent "
               "again (retransmissions); a dashed stub means an answer that never came.</p>")
    if tcp_shown and udp_shown:
        out.append("<h3>The same question asked with TCP and with UDP</h3>")
        out.append('<div class="ladder">' + svg_document(
            [ladder_group(tcp_shown[0]), ladder_group(udp_shown[0])],
            "TCP (left) and UDP (right), from this capture") + "</div>")
    rest = tcp_shown[1:] + udp_shown[1:] if tcp_shown and udp_shown else tcp_shown + udp_shown
    for conv in rest:
        out.append(f"<h3>{conv.proto.upper()} {escape(conv.client)} → {escape(conv.server)}</h3>")
        out.append('<div class="ladder">' + svg_document([ladder_group(conv)]) + "</div>")
    if summary.nodes is not None:
        out.extend(nodes_section(summary.nodes))
    out.append("<h2>Comparison</h2>")
    headers, rows = comparison_rows(tcp, udp)
    out.append(_table(headers, rows))
    out.append('<ul class="findings">' + "".join(f"<li>{escape(s)}</li>"
                                                 for s in findings(tcp, udp)) + "</ul>")
    out.append("<h2>Reflection</h2>")
    for question, answers in reflection(tcp, udp):
        out.append(f'<p class="q">{escape(question)}</p>')
        out.extend(f"<p>{escape(a)}</p>" for a in answers)
    if summary.resent:
        out.append("<h2>Retransmissions</h2>")
        out.append("<p>Per TCP conversation that sent something again: how often, and how much longer "
                   "the exchange took than the clean one (from a segment's first transmission to the "
                   "one that got through).</p>")
        out.append('<ul class="findings">' + "".join(f"<li>{escape(s)}</li>" for s in summary.resent)
                   + "</ul>")
        if summary.resent_total > len(summary.resent):
            out.append(f'<p class="small">The first {len(summary.resent)} of {summary.resent_total}; '
                       "'labctl analyse FILE --json' lists them all.</p>")
    if summary.clients is not None and summary.clients.listed:
        out.append("<h2>UDP clients</h2>")
        out.append("<p>Whether each UDP client got an answer: from its own side of the capture when it was "
                   "captured, else from the run's results (a capture on the server alone cannot show a "
                   "datagram lost before it).</p>")
        out.append('<ul class="findings">' + "".join(f"<li>{escape(c.sentence())}</li>"
                                                     for c in summary.clients.listed) + "</ul>")
        if summary.clients.note():
            out.append(f'<p class="small">{escape(summary.clients.note())}</p>')
    out.append("<h2>Every conversation</h2>")
    convs = summary.listed
    total = f.tcp_conversations + f.udp_conversations
    out.append(_table(["", "client", "server", "packets", "bytes", "payload", "overhead", "RTT ms",
                       "first byte ms", "duration ms", ""], _conv_rows(convs)))
    if total > len(convs):
        out.append(f'<p class="small">First {len(convs)} of {total} conversations; '
                   "'labctl analyse FILE --json' lists them all.</p>")
    if f.not_analysed:
        out.append('<p class="small">Not analysed: ' + escape("; ".join(
            f"{n} {why}" for why, n in f.not_analysed.items())) + "</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_html(summary: Summary, path: str | Path) -> Path:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(summary), encoding="utf-8")
    return p
