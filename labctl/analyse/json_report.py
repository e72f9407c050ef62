"""``--json``: every conversation and the summary, as one document. This is the only place it is written.

    {"conversations":[LINE,\\nLINE, ...],\\n"summary":{...}}

A conversation's line is its endpoints, its start and "the rest", which is a function of its figures
(``figures.py``) and of the clock that turns their times into milliseconds (``milliseconds.py``).
Figures repeat across conversations, so each distinct one is read once and the totals add up
figures x count. With exact microseconds (``MicroClock``: a microsecond capture, what tcpdump writes)
the rest does not depend on the start either, so its text is cached with the figures: a capture of
many similar exchanges formats each distinct one once. With float seconds (``FloatClock``:
nanosecond captures, pcapng) the times and the rest are computed for each conversation. Both clocks
write the same text (see ``milliseconds.py``).
"""
from __future__ import annotations

import gc
import json
from collections.abc import Callable

from labctl.analyse.clients import Clients, exchange_counts, see, udp_clients
from labctl.analyse.figures import (
    TCP_CLIENT,
    TcpFigures,
    UdpFigures,
    tcp_figures,
    tcp_rows,
    tcp_times,
    udp_figures,
    udp_rows,
    udp_times,
)
from labctl.analyse.milliseconds import FloatClock, MicroClock
from labctl.analyse.model import Analysis
from labctl.analyse.summary import Facts, ProtoSummary, Totals, float_resolver
from labctl.analyse.wire import M32

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import TextIO

    from labctl.analyse.conversations import Builder

CACHE_MAX = 16384        # distinct texts kept at a time
BATCH = 4096             # lines handed over at a time

_TCP_REST = ('"packets":%d,"bytes":%d,"payload_bytes":%d,"client_payload_bytes":%d,"server_payload_bytes":%d,'
             '"header_bytes":%d,"overhead_pct":%.1f,"duration_ms":%s,"rtt_ms":%s,"ttfb_ms":%s,'
             '"retransmissions":%d,"fast_retransmissions":%d,"spurious_retransmissions":%d,'
             '"out_of_order":%d,"dup_acks":%d,"syn":%d,"synack":%d,"fin":%d,"rst":%d,"closed_by":%s,'
             '"handshake":%s,"refused":%s,"exchanges":[%s]}')
_UDP_REST = ('"packets":%d,"bytes":%d,"payload_bytes":%d,"client_payload_bytes":%d,"server_payload_bytes":%d,'
             '"header_bytes":%d,"overhead_pct":%.1f,"duration_ms":%s,"rtt_ms":%s,"ttfb_ms":%s,'
             '"requests":%d,"unanswered":%d,"exchanges":[%s]}')
_EXCHANGE = '{"request_ms":%s,"request_bytes":%d,"reply_ms":%s,"reply_bytes":%d,"answered":%s%s}'
_TF = ("false", "true")

Batch = Callable[[list[str]], None]


def clock_for(b: Builder) -> FloatClock | MicroClock:
    """Exact microseconds for a microsecond capture, floats otherwise."""
    return (MicroClock if b.times.units == 1_000_000 else FloatClock)(b.times)


def _overhead(nbytes: int, pay: int) -> float:
    return 100.0 * (nbytes - pay) / nbytes if nbytes else 0.0


def tcp_rest(fig: TcpFigures, times: tuple, clock: FloatClock | MicroClock, t0: int) -> str:
    """A TCP line after its start: counts, times (``summary.tcp_times``), flags, exchanges."""
    text, since = clock.text, clock.since
    exchanges = ",".join(
        _EXCHANGE % (text(None if rq is None else since(t0, rq)), rqb,
                     text(None if rp is None else since(t0, rp)), rpb, _TF[rp is not None], "")
        for rq, rqb, rp, rpb in fig.exchanges)
    pay = fig.client_payload + fig.server_payload
    rtt, ttfb, dur = times
    closed = "null" if fig.closed_by is None else f'"{fig.closed_by}"'
    return _TCP_REST % (
        fig.packets, fig.bytes, pay, fig.client_payload, fig.server_payload, fig.bytes - pay,
        _overhead(fig.bytes, pay), text(dur), text(rtt), text(ttfb), fig.retransmissions,
        fig.fast_retransmissions, fig.spurious_retransmissions, fig.out_of_order, fig.dup_acks, fig.syn,
        fig.synack, fig.fin, fig.rst, closed, _TF[fig.handshake], _TF[fig.refused], exchanges)


def udp_rest(fig: UdpFigures, times: tuple, clock: FloatClock | MicroClock, t0: int) -> str:
    """A UDP line after its start."""
    text, since = clock.text, clock.since
    exchanges = ",".join(
        _EXCHANGE % (text(None if rq is None else since(t0, rq)), rqb,
                     text(None if rp is None else since(t0, rp)), rpb, _TF[rp is not None],
                     "" if note is None else f',"note":"{note}"')
        for rq, rqb, rp, rpb, note in fig.exchanges)
    pay = fig.client_payload + fig.server_payload
    rtt, ttfb, dur = times
    return _UDP_REST % (fig.packets, fig.bytes, pay, fig.client_payload, fig.server_payload, fig.bytes - pay,
                        _overhead(fig.bytes, pay), text(dur), text(rtt), text(ttfb), fig.requests,
                        fig.unanswered, exchanges)


def _flush(cache: dict, tot: Totals) -> None:
    for fig, n, times, *_ in cache.values():
        tot.add(fig, n)
        if times is not None:
            tot.count_times(times, n)
    cache.clear()


def write_lines(b: Builder, clock: FloatClock | MicroClock, tcp_batch: Batch, udp_batch: Batch
                ) -> tuple[Totals, Totals]:
    """Hand every conversation's line, a list at a time, to ``tcp_batch``/``udp_batch``; return the
    totals (``Totals.finish`` gives the summaries)."""
    exact = clock.exact
    start = clock.start_text
    m32 = M32
    tcp, udp = Totals("tcp"), Totals("udp")
    for proto, rows, read, times_of, rest_of, tot, batch in (
            ("tcp", tcp_rows(b, exact), tcp_figures, tcp_times, tcp_rest, tcp, tcp_batch),
            ("udp", udp_rows(b), udp_figures, udp_times, udp_rest, udp, udp_batch)):
        head = f'{{"proto":"{proto}","client":"'
        count_times = tot.count_times
        cache: dict[tuple, list] = {}    # figures -> [figures read, count, times, rest] (times, rest: exact)
        lines: list[str] = []
        line = lines.append
        resent = b.tcp.resent if proto == "tcp" else {}
        seen = tot.seen if proto == "udp" else None
        for i, (ca, cp, sa, sp, t0, k) in enumerate(rows):
            e = cache.get(k)
            if e is None:
                if len(cache) >= CACHE_MAX:
                    _flush(cache, tot)
                e = cache[k] = [read(k), 0, None, None]
                if seen is not None:
                    e.append(exchange_counts(e[0]))
                if exact:                # the times and the rest do not depend on the start
                    e[2] = times_of(e[0], clock, t0)
                    e[3] = rest_of(e[0], e[2], clock, t0)
            e[1] += 1
            if exact:
                rest = e[3]
            else:
                times = times_of(e[0], clock, t0)
                count_times(times, 1)
                rest = rest_of(e[0], times, clock, t0)
            frac = t0 >> 32
            if exact and frac < 1_000_000:      # the start's digits as they are, no float
                line(f'{head}{ca}:{cp}","server":"{sa}:{sp}","start":{t0 & m32}.{str(frac + 1_000_000)[1:]},'
                     f'{rest}')
            else:
                line(f'{head}{ca}:{cp}","server":"{sa}:{sp}","start":{start(t0)},{rest}')
            if seen is not None:
                see(seen, ca, e[4])
            if i in resent:                     # (only conversations that resent something)
                lines[-1] = lines[-1][:-1] + "," + resent_field(b, i, k, t0, tot.s) + "}"
            if len(lines) >= BATCH:
                batch(lines)
                lines.clear()
        if lines:
            batch(lines)
        _flush(cache, tot)
    return tcp, udp


def resent_field(b: Builder, i: int, k: tuple, t0: int, s: ProtoSummary) -> str:
    """``"resent":{...}`` for the i-th TCP conversation (``resent.py``), added up into ``s``."""
    from labctl.analyse.resent import cost_ms, explain, segments, unknown

    segs = segments(b, i, k[TCP_CLIENT], t0)
    cost = cost_ms(segs)
    s.retransmitted += 1
    s.retransmission_ms += cost or 0.0
    s.retransmission_unknown += unknown(segs)
    return '"resent":' + json.dumps({"cost_ms": None if cost is None else round(cost, 3),
                                     "unknown": unknown(segs), "explained": explain(segs),
                                     "segments": [r.to_json() for r in segs]}, separators=(",", ":"))


def summary_dict(facts: Facts, tcp: ProtoSummary, udp: ProtoSummary, clients: Clients | None = None) -> dict:
    d = {"file": facts.path, "format": facts.format, "link_types": facts.link_types,
         "packets": facts.packets, "bytes": facts.bytes, "tcp": tcp.as_dict(), "udp": udp.as_dict(),
         "not_analysed": facts.not_analysed, "ipv6_packets": facts.ipv6_packets,
         "warnings": facts.warnings}
    if clients is not None:
        d["udp_clients"] = [c.to_json() for c in clients.listed]
        d["udp_clients_total"] = clients.total
        d["udp_clients_answered"] = clients.answered
    return d


def write_json(analysis: Analysis, out: TextIO, run: dict | None = None,
               captured: set[str] | None = None) -> None:
    """``{"conversations": [...], "summary": {...}}``, written a batch of lines at a time."""
    write = out.write
    write('{"conversations":[')
    sep = [""]

    def batch(lines: list[str]) -> None:
        write(sep[0])
        write(",\n".join(lines))
        sep[0] = ",\n"

    b = analysis.builder
    clock = clock_for(b)
    if analysis.multi is not None:       # several capture points: what they saw of each conversation
        batch = _with_crossings(analysis, batch)
    was = gc.isenabled()
    gc.disable()     # many short-lived tuples and strings, no cycles: no need to look for any
    try:
        tcp, udp = write_lines(b, clock, batch, batch)
    finally:
        if was:
            gc.enable()
    exact = clock.exact
    tcp_s = tcp.finish(clock, float_resolver(b, "tcp") if exact else None)
    udp_s = udp.finish(clock, float_resolver(b, "udp") if exact else None)
    write('],\n"summary":')
    clients = udp_clients(udp.seen, run, captured)
    summary = summary_dict(Facts.of(analysis), tcp_s, udp_s, clients)
    if analysis.multi is not None:
        summary["files"] = analysis.multi.captures.files
        summary["nodes"] = analysis.multi.report().as_dict()
    write(json.dumps(summary, indent=1))
    write("}\n")


def _with_crossings(analysis: Analysis, batch: Batch) -> Batch:
    """``batch`` with each line given the files and capture points it was seen in, its nodes, its
    one-way times each way and its lost packets (``multinode.Crossings``)."""
    multi = analysis.multi
    assert multi is not None

    head = len('{"proto":"tcp","client":"')
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def add(lines: list[str]) -> None:
        out = []
        for line in lines:     # (the line's own text gives its endpoints, start and duration)
            i = line.index('","server":"', head)
            j = line.index('","start":', i)
            k = line.index(",", j + 10)
            d = line.index('"duration_ms":', k) + 14
            duration = line[d:line.index(",", d)]
            cr = multi.crossings(line[10:13], line[head:i], line[i + 12:j], float(line[j + 10:k]),
                                 0.0 if duration == "null" else float(duration))
            out.append(line[:-1] + "," + dumps(cr.as_dict())[1:])
        batch(out)

    return add
