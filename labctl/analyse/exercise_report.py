"""The exercise's report: one self-contained HTML file (inline SVG and CSS, no scripts, fonts or links to
fetch) beside the pcaps it was drawn from. Takes the run as plain data (the ``run.json`` document) and
reads every figure from the pcaps themselves.
"""
from __future__ import annotations

import datetime as dt
from html import escape
from pathlib import Path

from labctl.analyse import analyse_file
from labctl.analyse.html import CSS as BASE_CSS
from labctl.analyse.html import _table
from labctl.analyse.labdrawing import lab_svg
from labctl.analyse.model import Analysis, Conversation
from labctl.analyse.one_point import at_point, points
from labctl.analyse.story import LossyRound, comparison_rows, findings, lossy_round, reflection
from labctl.analyse.summary import ProtoSummary, summarise, totals
from labctl.analyse.svg import ladder_group, svg_document
from labctl.analyse.textbook import SLOW_MS, differences, late_clients, textbook_conversation
from labctl.analyse.timeline import spread_ms, timeline_svg
from labctl.errors import LabctlError

CSS = BASE_CSS + """
body{font-size:17px;max-width:1240px}
.ok{color:#0a6b16;font-weight:bold}.bad{color:#b00020;font-weight:bold}
.figure{overflow-x:auto;margin:10px 0 20px 0}.figure svg{max-width:100%;height:auto}
.side{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}.side>div{flex:1 1 420px}
pre{background:#f4f4f4;border:1px solid #ccc;padding:8px 12px;font-size:14px;white-space:pre-wrap}
td.reply{text-align:left;font-family:"DejaVu Sans Mono",monospace;font-size:13px}
@media print{.figure,.side{page-break-inside:avoid}a{color:#000}}
"""


def _first(analysis: Analysis | None, proto: str) -> Conversation | None:
    shown = summarise(analysis).shown(proto, 1) if analysis is not None else []
    return shown[0] if shown else None


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _run_rows(run: dict | None) -> list[list[str]]:
    rows = []
    for r in (run or {}).get("results", []):
        t = r.get("timings") or {}
        reply = (r.get("reply") or "").replace("\n", " | ") if r.get("ok") else f"FAILED: {r.get('error')}"
        total = t.get("total_ms")
        if total is None and "exec" in t and "end" in t:  # a program of yours: from the instant to its exit
            total = (t["end"] - t["exec"]) * 1000.0
        rows.append([r.get("node", ""), r.get("address", ""), reply, _ms(t.get("connect_ms")),
                     _ms(t.get("first_byte_ms")), _ms(total), str(r.get("attempts", "unknown")),
                     str(r.get("timeouts", "unknown"))])
    return rows


def _own_program(hour: dict) -> list[str]:
    """Whose program this hour ran: the lab file's, with its commands."""
    own = hour.get("program")
    if not own:
        return []
    return [f'<p class="meta">Your program <b>{escape(own["name"])}</b>, from the lab file\'s '
            f"<code>programs:</code> (not labctl's): server <code>{escape(own['server'])}</code>, client "
            f"<code>{escape(own['client'])}</code>; its packets say it speaks "
            f"{escape(hour['protocol'].upper())}.</p>"]


def _read(hour: dict, directory: Path, server: str, out: list[str]) -> Analysis | None:
    """The hour's capture, counted at the server's capture point when the file holds several."""
    try:
        source, point = at_point(directory / hour["pcap"], server)
        analysis = analyse_file(source)
        counts = points(directory / hour["pcap"]) if point else {}
    except LabctlError as exc:
        out.append(f'<p class="warn">{escape(hour["pcap"])} does not read back: {escape(str(exc))}</p>')
        return None
    if point:
        each = ", ".join(f"{escape(n)} {c}" for n, c in counts.items())
        out.append(f"<p>The capture holds {len(counts)} capture points, one per node ({each} packets): a "
                   f"packet seen at two nodes is in it twice. Every figure of this hour is counted at "
                   f"one point, <b>{escape(point)}</b>, the only one that sees every client.</p>")
    return analysis


def _hour_section(hour: dict, directory: Path, names: dict[str, str],
                  server: str = "server") -> tuple[list[str], Analysis | None]:
    out = [f'<h2 id="{escape(hour.get("name") or hour["protocol"])}">{escape(hour["title"])}</h2>']
    out.extend(_own_program(hour))
    status = '<span class="ok">worked</span>' if hour["ok"] else '<span class="bad">FAILED</span>'
    out.append(f"<p>Status: {status}; {hour['seconds']:.2f} s.</p>")
    for f in hour.get("failures", []):
        out.append(f'<p class="warn">{escape(f)}</p>')
    analysis = _read(hour, directory, server, out) if hour.get("pcap") else None
    if analysis is None:
        out.append("<p>No capture for this hour.</p>")
        return out, None
    convs = [c for c in analysis.conversations() if c.ladder is not None]
    sp = spread_ms(convs)
    out.append(f'<p>Capture <a href="{escape(hour["pcap"])}">{escape(hour["pcap"])}</a>: '
               f"{analysis.packets} packets, {analysis.tcp_count} TCP and {analysis.udp_count} UDP "
               f"conversations; spread on the wire {_ms(sp)} ms.</p>")
    out.append("<h3>All clients at once</h3>")
    out.append('<div class="figure">' + timeline_svg(analysis, names, f"{hour['protocol'].upper()}: every "
                                                     "packet of every client on one time axis") + "</div>")
    late = late_clients(convs, names)
    if late:
        out.append('<ul class="findings">' + "".join(f"<li>{escape(s)}</li>" for s in late) + "</ul>")
    rows = _run_rows(hour.get("run"))
    if rows:
        out.append(_table(["node", "address", "reply", "connected ms", "first byte ms", "total ms",
                           "attempts", "timeouts"], rows)
                   .replace("<td>FAILED", '<td class="reply bad">FAILED'))
        if hour.get("program"):
            out.append("<p>labctl sees only when your client was let go and when it ended: total ms is "
                       "from the instant to its exit; its connection and first byte are on the wire "
                       "above.</p>")
    out.extend(_explained(analysis, hour))
    conv = _first(analysis, "tcp") or _first(analysis, "udp")
    if conv is not None and hour["protocol"] == "proto":
        out.append("<h3>The line protocol: several requests on one connection</h3>")
        out.append('<div class="figure">' + svg_document([ladder_group(conv)]) + "</div>")
    own = _first(analysis, hour["protocol"]) if hour.get("program") else None
    if own is not None:  # the textbook exchange of its protocol beside its first conversation
        out.extend(_textbook(own, hour["protocol"]))
    for w in analysis.warnings:
        out.append(f'<p class="warn">Warning: {escape(w)}</p>')
    return out, analysis


def _explained(analysis: Analysis, hour: dict) -> list[str]:
    """The hour's TCP retransmissions and what they cost, and each UDP client's verdict (with the hour's
    results: the capture on the server cannot see a datagram lost before it)."""
    cap = hour.get("capture") or {}
    summary = summarise(analysis, run=hour.get("run"), captured={cap["node"]} if cap.get("node") else None)
    items = list(summary.resent)
    if summary.resent_total > len(summary.resent):
        items.append(f"(the first {len(summary.resent)} of {summary.resent_total})")
    if hour.get("protocol") == "udp" and summary.clients is not None:
        items += [c.sentence() for c in summary.clients.listed]
    if not items:
        return []
    return ['<ul class="findings">' + "".join(f"<li>{escape(s)}</li>" for s in items) + "</ul>"]


def _textbook(conv: Conversation, proto: str) -> list[str]:
    book = textbook_conversation(conv)
    markup, w, h = ladder_group(book)
    markup = markup.replace(f"{book.packets} packets, 0 bytes on the wire, 0 bytes of payload",
                            f"the textbook: {book.packets} packets")
    out = [f"<h3>{proto.upper()}: the textbook (left) and this capture (right)</h3>",
           '<div class="figure">' + svg_document([(markup, w, h), ladder_group(conv)],
                                                 "Go in Practice, technique 24 (left); measured (right)")
           + "</div>", "<ul class='findings'>"]
    out.extend(f"<li>{escape(s)}</li>" for s in differences(conv))
    out.append("</ul>")
    return out


def _pair(analyses: dict[str, Analysis], tcp_key: str, udp_key: str) -> tuple[ProtoSummary, ProtoSummary]:
    tcp = totals(analyses[tcp_key].builder)[0] if tcp_key in analyses else ProtoSummary("tcp")
    udp = totals(analyses[udp_key].builder)[1] if udp_key in analyses else ProtoSummary("udp")
    return tcp, udp


def _hour(data: dict, name: str) -> dict:
    return next((h for h in data.get("hours", []) if (h.get("name") or h.get("protocol")) == name), {})


def lossy_figures(data: dict, analyses: dict[str, Analysis]) -> LossyRound | None:
    """The lossy round's figures, from this run's captures (``analyses``, by hour) and results (``data``:
    run.json); None when the run had no lossy TCP hour that was captured."""
    if "tcp-lossy" not in analyses:
        return None
    tcp_lossy = totals(analyses["tcp-lossy"].builder)[0]
    tcp_clean = totals(analyses["tcp"].builder)[0] if "tcp" in analyses else None
    return lossy_round(float(data.get("loss") or _hour(data, "tcp-lossy").get("loss") or 0), tcp_lossy,
                       tcp_clean, _hour(data, "tcp-lossy").get("run"), _hour(data, "udp-lossy").get("run"))


def lossy_sentence(data: dict, analyses: dict[str, Analysis]) -> str | None:
    """"With 30 % loss, TCP needed 1.8 extra packets and 210 ms more per client ...", or None."""
    figures = lossy_figures(data, analyses)
    return figures.sentence() if figures is not None else None


def render_report(data: dict, directory: Path) -> str:
    """The report's HTML for the exercise ``data`` (run.json), its pcaps in ``directory``."""
    lab = data.get("lab") or {}
    names = {n["address"]: n["name"] for n in lab.get("nodes", [])}
    server = next((n["name"] for n in lab.get("nodes", []) if n.get("role") == "server"), "server")
    status = '<span class="ok">every hour worked</span>' if data.get("ok") else \
        '<span class="bad">something FAILED (see below)</span>'
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>labctl exercise — lab {escape(str(lab.get('name', '?')))}</title>",
           f"<style>{CSS}</style></head><body>",
           "<h1>TCP and UDP between machines: the exercise, measured</h1>",
           f'<p class="meta">Lab <b>{escape(str(lab.get("name", "?")))}</b> '
           f'({escape(str(lab.get("backend")))}'
           f" backend), report made by labctl on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. "
           f"Result: {status}.</p>"]
    if data.get("interrupted"):
        out.append('<p class="warn">The run was interrupted (Ctrl-C): what was done is kept below.</p>')
    summary_rows = []
    sections: list[str] = []
    analyses: dict[str, Analysis] = {}
    for hour in data.get("hours", []):
        part, analysis = _hour_section(hour, directory, names, server)
        sections.extend(part)
        if analysis is not None:
            analyses[hour.get("name") or hour["protocol"]] = analysis
        run = hour.get("run") or {}
        ok = sum(1 for r in run.get("results", []) if r.get("ok"))
        summ = (hour.get("capture") or {}).get("summary") or {}
        summary_rows.append([hour["title"], "worked" if hour["ok"] else "FAILED",
                             f"{ok} of {len(run.get('results', []))}", _ms(summ.get("spread_ms")),
                             str(summ.get("packets", "–")), hour.get("pcap") or "–"])
    head = ["hour", "status", "clients answered", "spread ms", "packets at the server", "pcap"]
    out.append(_table(head, summary_rows)
               .replace("<td>FAILED</td>", '<td class="bad">FAILED</td>'))
    if lab.get("nodes"):
        out.append("<h2>The lab</h2>")
        out.append('<div class="figure">' + lab_svg(lab) + "</div>")
    out.extend(sections)
    tcp_conv, udp_conv = _first(analyses.get("tcp"), "tcp"), _first(analyses.get("udp"), "udp")
    if tcp_conv is not None and udp_conv is not None:
        out.append("<h2>TCP beside UDP</h2>")
        pair = svg_document([ladder_group(tcp_conv), ladder_group(udp_conv)],
                            "the same request for the time: TCP (left), UDP (right)")
        out.append(f'<div class="figure">{pair}</div>')
    if tcp_conv is not None or udp_conv is not None:
        out.append("<h2>The textbook picture beside the measured one</h2>")
        for proto, conv in (("tcp", tcp_conv), ("udp", udp_conv)):
            if conv is not None:
                out.extend(_textbook(conv, proto))
    lossy = analyses.get("tcp-lossy")
    retransmitted = [c for c in lossy.tcp() if c.ladder and (c.retransmissions or c.duration_ms > SLOW_MS)
                     ] if lossy is not None else []
    lossy_tcp = retransmitted[0] if retransmitted else _first(lossy, "tcp")
    if lossy_tcp is not None:
        out.append(f"<h3>Under {data.get('loss', 0):g} % loss</h3>")
        out.extend(_textbook(lossy_tcp, "tcp")[1:])
    if analyses:
        tcp, udp = _pair(analyses, "tcp", "udp")
        out.append("<h2>Comparison (TCP hour against UDP hour)</h2>")
        out.append(_table(*comparison_rows(tcp, udp)))
        out.append('<ul class="findings">' + "".join(f"<li>{escape(s)}</li>"
                                                     for s in findings(tcp, udp)) + "</ul>")
        ltcp, ludp = _pair(analyses, "tcp-lossy", "udp-lossy")
        lossy_said = lossy_sentence(data, analyses)
        if ltcp.conversations or ludp.conversations:
            out.append(f"<h3>The lossy round: {data.get('loss', 0):g} % loss on every link</h3>")
            if lossy_said:
                out.append(f'<p class="lossy">{escape(lossy_said)}</p>')
            out.append(_table(*comparison_rows(ltcp, ludp)))
            out.append('<ul class="findings">' + "".join(f"<li>{escape(s)}</li>"
                                                         for s in findings(ltcp, ludp)) + "</ul>")
        out.append("<h2>Reflection, answered from this run</h2>")
        if lossy_said:
            out.append(f'<p class="lossy"><b>{escape(lossy_said)}</b></p>')
        lossy_round = ltcp.conversations or ludp.conversations
        lossy_answers = dict(reflection(ltcp, ludp)) if lossy_round else {}
        for question, answers in reflection(tcp, udp):
            out.append(f'<p class="q">{escape(question)}</p>')
            out.extend(f"<p>{escape(a)}</p>" for a in answers)
            if lossy_answers:
                lossy = [a for a in lossy_answers.get(question, []) if a not in answers]
                out.extend(f"<p><i>Under {data.get('loss', 0):g} % loss:</i> {escape(a)}</p>" for a in lossy)
    out.append("<h2>Reproduce it</h2>")
    out.append("<pre>" + escape("\n".join(data.get("commands") or ["labctl exercise"])) + "</pre>")
    links = " · ".join(f'<a href="{escape(h["pcap"])}">{escape(h["pcap"])}</a>'
                       for h in data.get("hours", []) if h.get("pcap"))
    out.append(f"<p>Captures (open in Wireshark, or <code>labctl analyse FILE</code>): {links or 'none'}; "
               'the run as JSON: <a href="run.json">run.json</a>.</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(path: Path, data: dict) -> Path:
    """Write ``report.html`` at ``path`` from ``data``; the pcaps are next to it."""
    path.write_text(render_report(data, path.parent), encoding="utf-8")
    return path
