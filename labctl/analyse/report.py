"""The measured comparison: per-protocol summary, and the JSON document (streamed, one conversation at a
time, so a capture of 100,000 conversations is never held as one big string)."""
from __future__ import annotations

import json
from array import array
from dataclasses import dataclass

from labctl.analyse.model import Analysis, ByteCounts, Conversation, median

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from typing import TextIO


@dataclass
class ProtoSummary(ByteCounts):
    proto: str
    conversations: int = 0
    packets: int = 0
    bytes: int = 0
    payload_bytes: int = 0
    retransmissions: int = 0
    out_of_order: int = 0
    dup_acks: int = 0
    requests: int = 0            # UDP requests / TCP conversations opened by a client
    answered: int = 0            # UDP requests answered / TCP conversations where the server sent data
    refused: int = 0             # TCP connections refused with RST
    rtt_ms: float | None = None          # median handshake (TCP) / request-reply (UDP) time
    ttfb_ms: float | None = None         # median time to the first byte of the answer
    duration_ms: float | None = None     # median conversation duration
    packets_per_conversation: float | None = None
    bytes_per_conversation: float | None = None

    @property
    def unanswered(self) -> int:
        return self.requests - self.answered

    def as_dict(self) -> dict:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {"conversations": self.conversations, "packets": self.packets, "bytes": self.bytes,
                "payload_bytes": self.payload_bytes, "header_bytes": self.header_bytes,
                "overhead_pct": round(self.overhead_pct, 1), "retransmissions": self.retransmissions,
                "out_of_order": self.out_of_order, "dup_acks": self.dup_acks,
                "requests": self.requests, "answered": self.answered, "unanswered": self.unanswered,
                "refused": self.refused, "rtt_ms_median": r(self.rtt_ms),
                "ttfb_ms_median": r(self.ttfb_ms), "duration_ms_median": r(self.duration_ms),
                "packets_per_conversation": r(self.packets_per_conversation),
                "bytes_per_conversation": r(self.bytes_per_conversation)}


def summarise(convs: list[Conversation] | None, proto: str, analysis: Analysis | None = None
              ) -> ProtoSummary:
    """Add up one protocol's conversations (from ``convs``, or streamed from ``analysis``)."""
    s = ProtoSummary(proto)
    rtts, ttfbs, durs = [], [], []
    source = convs if convs is not None else (analysis.tcp() if proto == "tcp" else analysis.udp())
    for c in source:
        if c.proto != proto:
            continue
        _add(s, c)
        rtts.append(c.rtt_ms)
        ttfbs.append(c.ttfb_ms)
        durs.append(c.duration_ms)
    s.rtt_ms, s.ttfb_ms, s.duration_ms = median(rtts), median(ttfbs), median(durs)
    if s.conversations:
        s.packets_per_conversation = s.packets / s.conversations
        s.bytes_per_conversation = s.bytes / s.conversations
    return s


def summary_dict(analysis: Analysis, tcp: ProtoSummary, udp: ProtoSummary) -> dict:
    return {"file": analysis.path, "format": analysis.info.format,
            "link_types": analysis.linktype_names, "packets": analysis.packets,
            "bytes": analysis.bytes, "tcp": tcp.as_dict(), "udp": udp.as_dict(),
            "not_analysed": dict(sorted(analysis.builder.skipped.items())),
            "ipv6_packets": analysis.builder.ipv6, "warnings": analysis.warnings}


def write_json(analysis: Analysis, out: TextIO) -> None:
    """``{"conversations": [...], "summary": {...}}``, written conversation by conversation."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    tcp = ProtoSummary("tcp")
    udp = ProtoSummary("udp")
    acc = {"tcp": ([], [], [], tcp), "udp": ([], [], [], udp)}
    out.write('{"conversations":[')
    first = True
    for c in analysis.conversations():
        rtts, ttfbs, durs, s = acc[c.proto]
        _add(s, c)
        rtts.append(c.rtt_ms)
        ttfbs.append(c.ttfb_ms)
        durs.append(c.duration_ms)
        if not first:
            out.write(",\n")
        first = False
        out.write(dumps(c.as_dict()))
    for rtts, ttfbs, durs, s in acc.values():
        s.rtt_ms, s.ttfb_ms, s.duration_ms = median(rtts), median(ttfbs), median(durs)
        if s.conversations:
            s.packets_per_conversation = s.packets / s.conversations
            s.bytes_per_conversation = s.bytes / s.conversations
    out.write('],\n"summary":')
    out.write(json.dumps(summary_dict(analysis, tcp, udp), indent=1))
    out.write("}\n")


def _add(s: ProtoSummary, c: Conversation) -> None:
    s.conversations += 1
    s.packets += c.packets
    s.bytes += c.bytes
    s.payload_bytes += c.payload_bytes
    s.retransmissions += c.retransmissions
    s.out_of_order += c.out_of_order
    s.dup_acks += c.dup_acks
    if c.proto == "tcp":
        s.requests += 1
        s.answered += 1 if c.got_answer else 0
        s.refused += 1 if c.refused else 0
    else:
        for e in c.exchanges:
            if e.request_ms is not None:
                s.requests += 1
                s.answered += 1 if e.answered else 0


# --- the fast JSON path: straight from the builder's compact state ------------------------------------
# The dataclass path above costs ~40 us a conversation; this one a few, which is what lets a
# 200,000-conversation capture be written in well under a second. Both give the same document
# (tests compare them).

def _f(x: float | None) -> str:
    return "null" if x is None else "%.3f" % x  # noqa: UP031 (fast path)


class _Endpoints:
    """Cache of 'IP:PORT' texts for keys (addresses repeat a lot; formatting them does not have to)."""

    def __init__(self) -> None:
        self.ips: dict[bytes, str] = {}

    def pair(self, key: bytes) -> tuple[str, str]:
        ips = self.ips
        if len(key) == 12:
            a = ips.get(key[:4])
            if a is None:
                a = ips[key[:4]] = _ip_text(key[:4])
            b = ips.get(key[4:8])
            if b is None:
                b = ips[key[4:8]] = _ip_text(key[4:8])
            return f"{a}:{key[8] << 8 | key[9]}", f"{b}:{key[10] << 8 | key[11]}"
        a, b = _ip_text(key[:16]), _ip_text(key[16:32])
        return f"{a}:{key[32] << 8 | key[33]}", f"{b}:{key[34] << 8 | key[35]}"


def _ip_text(addr: bytes) -> str:
    import socket
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    return "[" + socket.inet_ntop(socket.AF_INET6, addr) + "]"


_TCP_FMT = ('{"proto":"tcp","client":"%s","server":"%s","start":%.6f,"packets":%d,"bytes":%d,'
            '"payload_bytes":%d,"client_payload_bytes":%d,"server_payload_bytes":%d,"header_bytes":%d,'
            '"overhead_pct":%.1f,"duration_ms":%.3f,"rtt_ms":%s,"ttfb_ms":%s,"retransmissions":%d,'
            '"fast_retransmissions":%d,"spurious_retransmissions":%d,"out_of_order":%d,"dup_acks":%d,'
            '"syn":%d,"synack":%d,"fin":%d,"rst":%d,"closed_by":%s,"handshake":%s,"refused":%s,'
            '"exchanges":[%s]}')
_UDP_FMT = ('{"proto":"udp","client":"%s","server":"%s","start":%.6f,"packets":%d,"bytes":%d,'
            '"payload_bytes":%d,"client_payload_bytes":%d,"server_payload_bytes":%d,"header_bytes":%d,'
            '"overhead_pct":%.1f,"duration_ms":%.3f,"rtt_ms":%s,"ttfb_ms":%s,"requests":%d,'
            '"unanswered":%d,"exchanges":[%s]}')
_EX_FMT = '{"request_ms":%s,"request_bytes":%d,"reply_ms":%s,"reply_bytes":%d,"answered":%s%s}'
_TF = ("false", "true")
_NAN = float("nan")


@dataclass
class Partial:
    """Summary numbers of some conversations, plus what the medians need (mergeable across workers)."""

    tcp: ProtoSummary
    udp: ProtoSummary
    medians: dict

    @classmethod
    def empty(cls) -> Partial:
        return cls(ProtoSummary("tcp"), ProtoSummary("udp"),
                   {k: array("d") for k in ("t_rtt", "t_ttfb", "t_dur", "u_rtt", "u_ttfb", "u_dur")})

    def merge(self, other: Partial) -> None:
        for mine, theirs in ((self.tcp, other.tcp), (self.udp, other.udp)):
            for f in ("conversations", "packets", "bytes", "payload_bytes", "retransmissions",
                      "out_of_order", "dup_acks", "requests", "answered", "refused"):
                setattr(mine, f, getattr(mine, f) + getattr(theirs, f))
        for k, v in other.medians.items():
            self.medians[k].extend(v)

    def finish(self) -> tuple[ProtoSummary, ProtoSummary]:
        m = self.medians
        for s, p in ((self.tcp, "t_"), (self.udp, "u_")):
            s.rtt_ms, s.ttfb_ms, s.duration_ms = median(m[p + "rtt"]), median(m[p + "ttfb"]), median(
                m[p + "dur"])
            if s.conversations:
                s.packets_per_conversation = s.packets / s.conversations
                s.bytes_per_conversation = s.bytes / s.conversations
        return self.tcp, self.udp


BATCH = 4096


def emit_rows(b, tcp_batch=None, udp_batch=None) -> Partial:
    """Walk the builder's conversations: add them up, and hand their JSON texts, a list at a time,
    to ``tcp_batch``/``udp_batch`` when given (no formatting at all otherwise)."""
    from labctl.analyse import tcp as cv

    lines: list[str] = []
    tcp_line = lines.append if tcp_batch is not None else None

    part = Partial.empty()
    tcp, udp, m = part.tcp, part.udp, part.medians
    t_rtt, t_ttfb, t_dur = m["t_rtt"], m["t_ttfb"], m["t_dur"]
    u_rtt, u_ttfb, u_dur = m["u_rtt"], m["u_ttfb"], m["u_dur"]
    eps = _Endpoints()
    fmt = tcp_line is not None
    n_conv = n_pkts = n_bytes = n_pay = n_retr = n_ooo = n_dup = n_ans = n_ref = 0
    secs = b.seconds
    keys = b.tcp.keys
    for idx in range(len(b.tcp.convs)):
        c = b.tcp.flat(idx)
        key = keys[idx]
        syn_a, syn_b = c[cv.F_SYN], c[cv.F_SYN + 12]
        if syn_a or syn_b:
            cd = 0 if syn_a >= syn_b else 1
        elif c[cv.F_SYNACK] or c[cv.F_SYNACK + 12]:
            cd = 1 if c[cv.F_SYNACK] else 0
        else:
            a, z = eps.pair(key)
            cd = 0 if int(a.rsplit(":", 1)[1]) >= int(z.rsplit(":", 1)[1]) else 1
        sd = 1 - cd
        t0 = secs(c[cv.F_FIRST])
        exs = []
        ttfb = None
        open_req = None
        for i in range(cv.F_SIZE, len(c), 3):
            d, first, nb = c[i], secs(c[i + 1]), c[i + 2]
            ms = (first - t0) * 1000.0
            if d == cd:
                if open_req is not None and fmt:
                    exs.append(_EX_FMT % ("%.3f" % open_req[0], open_req[1], "null", 0, "false", ""))  # noqa: UP031 (fast path)
                open_req = (ms, nb)
            else:
                if ttfb is None:
                    ttfb = ms
                if fmt:
                    if open_req is not None:
                        exs.append(_EX_FMT % ("%.3f" % open_req[0], open_req[1], "%.3f" % ms, nb, "true", ""))  # noqa: UP031 (fast path)
                    else:
                        exs.append(_EX_FMT % ("null", 0, "%.3f" % ms, nb, "true", ""))  # noqa: UP031 (fast path)
                open_req = None
        if open_req is not None and fmt:
            exs.append(_EX_FMT % ("%.3f" % open_req[0], open_req[1], "null", 0, "false", ""))  # noqa: UP031 (fast path)
        c_, s_ = 12 * cd, 12 * sd
        rst_c, rst_s = c[cv.F_RST + c_], c[cv.F_RST + s_]
        refused = bool(rst_s) and not c[cv.F_SYNACK + s_] and bool(c[cv.F_SYN + c_])
        rtt = None if c[cv.F_IRTT] < 0 else (secs(c[cv.F_IRTT]) - secs(c[cv.F_IRTT0])) * 1000.0
        pay = c[cv.F_PAY] + c[cv.F_PAY + 12]
        nbytes = c[cv.F_BYTES]
        dur = (secs(c[cv.F_LAST]) - t0) * 1000.0
        if fmt:
            a, z = eps.pair(key)
            fin_c, fin_s = c[cv.F_FIN + c_], c[cv.F_FIN + s_]
            fin_c = None if fin_c < 0 else secs(fin_c)
            fin_s = None if fin_s < 0 else secs(fin_s)
            if fin_c is not None or fin_s is not None:
                closed = ('"client"' if fin_s is None or (fin_c is not None and fin_c <= fin_s)
                          else '"server"')
            elif rst_c or rst_s:
                closed = '"client (RST)"' if rst_c and not rst_s else '"server (RST)"'
            else:
                closed = "null"
            handshake = bool(c[cv.F_SYN + c_] and c[cv.F_SYNACK + s_] and rtt is not None)
            tcp_line(_TCP_FMT % (
                (a, z)[cd], (a, z)[sd], t0, c[cv.F_PKTS], nbytes, pay, c[cv.F_PAY + c_], c[cv.F_PAY + s_],
                nbytes - pay, 100.0 * (nbytes - pay) / nbytes if nbytes else 0.0, dur, _f(rtt), _f(ttfb),
                c[cv.F_RETRANS], c[cv.F_FASTRT], c[cv.F_SPURIOUS], c[cv.F_OOO], c[cv.F_DUPACK],
                syn_a + syn_b, c[cv.F_SYNACK] + c[cv.F_SYNACK + 12],
                (fin_c is not None) + (fin_s is not None), rst_c + rst_s, closed, _TF[handshake],
                _TF[refused], ",".join(exs)))
            if len(lines) >= BATCH:
                tcp_batch(lines)
                lines.clear()
        n_conv += 1
        n_pkts += c[cv.F_PKTS]
        n_bytes += nbytes
        n_pay += pay
        n_retr += c[cv.F_RETRANS]
        n_ooo += c[cv.F_OOO]
        n_dup += c[cv.F_DUPACK]
        if c[cv.F_PAY + s_]:
            n_ans += 1
        if refused:
            n_ref += 1
        if rtt is not None:
            t_rtt.append(rtt)
        if ttfb is not None:
            t_ttfb.append(ttfb)
        t_dur.append(dur)
    tcp.conversations, tcp.packets, tcp.bytes, tcp.payload_bytes = n_conv, n_pkts, n_bytes, n_pay
    tcp.retransmissions, tcp.out_of_order, tcp.dup_acks = n_retr, n_ooo, n_dup
    tcp.requests, tcp.answered, tcp.refused = n_conv, n_ans, n_ref
    if fmt and lines:
        tcp_batch(lines)
        lines.clear()
    fmt = udp_batch is not None
    udp_line = lines.append
    n_conv = n_pkts = n_bytes = n_pay = n_req = n_ans = 0
    for c in b.udp.convs:
        t0 = secs(c[0])
        notes = None
        if b.udp.icmp:
            icmp = b.udp.icmp.get(c[6])
            notes = {n: t for n, _, t in icmp} if icmp else None
        exs = []
        rtt = ttfb = None
        requests = unanswered = 0
        for k, i in enumerate(range(8, len(c), 5)):
            rq, rqb, rp, rpb = c[i], c[i + 1], c[i + 2], c[i + 3]
            rq_ms = None if rq < 0 else (secs(rq) - t0) * 1000.0
            rp_ms = None if rp < 0 else (secs(rp) - t0) * 1000.0
            if rq >= 0:
                requests += 1
                if rp < 0:
                    unanswered += 1
                elif rtt is None:
                    rtt = rp_ms - rq_ms
            if rp_ms is not None and ttfb is None:
                ttfb = rp_ms
            if fmt:
                note = ',"note":"%s"' % notes[k] if notes and k in notes else ""  # noqa: UP031 (fast path)
                exs.append(_EX_FMT % (_f(rq_ms), rqb, _f(rp_ms), rpb, _TF[rp >= 0], note))
        pay = c[4] + c[5]
        nbytes = c[3]
        dur = (secs(c[1]) - t0) * 1000.0
        if fmt:
            a, z = eps.pair(c[6])
            udp_line(_UDP_FMT % (a, z, t0, c[2], nbytes, pay, c[4], c[5], nbytes - pay,
                                 100.0 * (nbytes - pay) / nbytes if nbytes else 0.0, dur, _f(rtt),
                                 _f(ttfb), requests, unanswered, ",".join(exs)))
            if len(lines) >= BATCH:
                udp_batch(lines)
                lines.clear()
        n_conv += 1
        n_pkts += c[2]
        n_bytes += nbytes
        n_pay += pay
        n_req += requests
        n_ans += requests - unanswered
        if rtt is not None:
            u_rtt.append(rtt)
        if ttfb is not None:
            u_ttfb.append(ttfb)
        u_dur.append(dur)
    udp.conversations, udp.packets, udp.bytes, udp.payload_bytes = n_conv, n_pkts, n_bytes, n_pay
    udp.requests, udp.answered = n_req, n_ans
    if fmt and lines:
        udp_batch(lines)
    return part


def summaries(analysis: Analysis) -> tuple[ProtoSummary, ProtoSummary]:
    """TCP and UDP summaries straight from the compact state (fast, for any size of capture)."""
    return emit_rows(analysis.builder).finish()


def write_json_fast(analysis: Analysis, out: TextIO) -> None:
    """Same document as ``write_json``, formatted straight from the compact state (fast)."""
    write = out.write
    write('{"conversations":[')
    sep = [""]

    def batch(lines: list[str]) -> None:
        write(sep[0])
        write(",\n".join(lines))
        sep[0] = ",\n"

    b = analysis.builder
    import gc

    was = gc.isenabled()
    gc.disable()     # many short-lived tuples and strings, no cycles: no need to look for any
    try:
        if b.clock.units == 1_000_000:
            from labctl.analyse.fastjson import emit_rows_us

            tcp, udp = emit_rows_us(b, batch, batch)
        else:
            tcp, udp = emit_rows(b, batch, batch).finish()
    finally:
        if was:
            gc.enable()
    write('],\n"summary":')
    write(json.dumps(summary_dict(analysis, tcp, udp), indent=1))
    write("}\n")
