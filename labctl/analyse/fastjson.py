"""``--json`` rows of a microsecond capture, formatted fast (the common case: tcpdump writes microseconds).

Same text as ``report.emit_rows`` (tests and the benchmark compare them byte for byte), computed with
less work:

- Times stay integers (see ``conversations``: seconds + microseconds << 32; the differences of two are
  decoded by ``us``). Every millisecond figure the document shows is ``"%.3f"`` of a float
  difference of two timestamps (``(t1 - t0) * 1000.0``, t = seconds + micros * 1e-6): such a float is
  within 0.000477 ms of the exact ``k / 1000`` ms (k = the integer difference in microseconds: each
  timestamp below 2**32 s is within half a unit in the last place, 2.4e-7 s, of its exact value), so
  its three decimals are exactly those of ``k / 1000``: ``"%.3f" % (k / 1000)`` writes them (the double
  nearest a 3-decimal number is far from any rounding boundary).
- A conversation's line is the endpoints, the start time and "the rest"; the rest is a function of a
  handful of integers (counts, byte sums, microsecond offsets), so its text is cached under that tuple:
  captures of many similar exchanges format each distinct rest once. The cache is bounded.
- The summary adds up the cache entries (value x count) instead of every conversation, and the medians
  are taken over microsecond counts. When a median is the mean of two middle values an odd number of
  microseconds apart, its third decimal depends on the floats' last bits: those two floats are then
  computed exactly as ``report.emit_rows`` does.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from labctl.analyse import tcp as cv
from labctl.analyse import udp
from labctl.analyse.report import BATCH, ProtoSummary, _Endpoints
from labctl.analyse.wire import HALF, M32

CACHE_MAX = 16384

_TCP_REST = ('"packets":%d,"bytes":%d,"payload_bytes":%d,"client_payload_bytes":%d,"server_payload_bytes":%d,'
             '"header_bytes":%d,"overhead_pct":%.1f,"duration_ms":%s,"rtt_ms":%s,"ttfb_ms":%s,'
             '"retransmissions":%d,"fast_retransmissions":%d,"spurious_retransmissions":%d,'
             '"out_of_order":%d,"dup_acks":%d,"syn":%d,"synack":%d,"fin":%d,"rst":%d,"closed_by":%s,'
             '"handshake":%s,"refused":%s,"exchanges":[%s]}')
_UDP_REST = ('"packets":%d,"bytes":%d,"payload_bytes":%d,"client_payload_bytes":%d,"server_payload_bytes":%d,'
             '"header_bytes":%d,"overhead_pct":%.1f,"duration_ms":%s,"rtt_ms":%s,"ttfb_ms":%s,'
             '"requests":%d,"unanswered":%d,"exchanges":[%s]}')
_EX = '{"request_ms":%s,"request_bytes":%d,"reply_ms":%s,"reply_bytes":%d,"answered":%s%s}'
_CLOSED = ("null", '"client"', '"server"', '"client (RST)"', '"server (RST)"')
_TF = ("false", "true")
_V4 = struct.Struct("!4s4sHH").unpack


def us(d: int | None) -> int | None:
    """The difference of two times (seconds + micros << 32) in microseconds."""
    if d is None:
        return None
    secs = ((d + HALF) & M32) - HALF
    return secs * 1_000_000 + ((d - secs) >> 32)


def ms(d: int | None) -> str:
    """The difference of two times as '%.3f' milliseconds ("null" for None)."""
    if d is None:
        return "null"
    secs = ((d + HALF) & M32) - HALF
    return "%.3f" % ((secs * 1_000_000 + ((d - secs) >> 32)) / 1000)   # k / 1000: exact to 3 places


def _start(t0: int, b) -> str:
    """'%.6f' of the time t0 (seconds + micros << 32)."""
    frac = t0 >> 32
    if frac < 1_000_000:
        return f"{t0 & M32}.{frac:06d}"
    return "%.6f" % b.seconds(t0)  # noqa: UP031 (same as report)


def _ip4(addr: bytes) -> str:
    return "%d.%d.%d.%d" % (addr[0], addr[1], addr[2], addr[3])  # noqa: UP031 (as inet_ntop writes it)


def _overhead(nbytes: int, pay: int) -> float:
    return 100.0 * (nbytes - pay) / nbytes if nbytes else 0.0


class _Totals:
    """One protocol's sums and microsecond histograms (value -> count) for the medians."""

    def __init__(self, proto: str) -> None:
        self.s = ProtoSummary(proto)
        self.rtt: dict[int, int] = {}
        self.ttfb: dict[int, int] = {}
        self.dur: dict[int, int] = {}


def _count(hist: dict, d: int | None, n: int) -> None:
    if d is not None:
        k = us(d)
        hist[k] = hist.get(k, 0) + n


# --- TCP ----------------------------------------------------------------------------------------------
# key: (client is direction 1?, packets, bytes, payload 0, payload 1, duration, rtt or None,
#       retransmissions, out-of-order, dup ACKs, spurious, fast, SYNs 0, SYNs 1, SYN-ACKs 0, SYN-ACKs 1,
#       FIN 0?, FIN 1?, client's FIN not after the server's?, RSTs 0, RSTs 1,
#       bursts: (direction, offset, bytes) flattened)

def _tcp_exchanges(cd: int, bursts: tuple) -> tuple[list[str], int | None]:
    exs = []
    ttfb = None
    open_req = None
    for i in range(0, len(bursts), 3):
        d, k, nb = bursts[i], bursts[i + 1], bursts[i + 2]
        if d == cd:
            if open_req is not None:
                exs.append(_EX % (ms(open_req[0]), open_req[1], "null", 0, "false", ""))
            open_req = (k, nb)
        else:
            if ttfb is None:
                ttfb = k
            if open_req is not None:
                exs.append(_EX % (ms(open_req[0]), open_req[1], ms(k), nb, "true", ""))
            else:
                exs.append(_EX % ("null", 0, ms(k), nb, "true", ""))
            open_req = None
    if open_req is not None:
        exs.append(_EX % (ms(open_req[0]), open_req[1], "null", 0, "false", ""))
    return exs, ttfb


def _tcp_key(k: tuple) -> tuple:
    """A key with its bursts as one tuple (the rows loop flattens a single burst into the key)."""
    return k if len(k) == 22 else (*k[:21], k[21:])


def _tcp_fields(k: tuple) -> tuple:
    """(client payload, server payload, closed_by index, handshake, refused) of a key."""
    (cd, _pk, _nb, pay0, pay1, _dur, rtt, _re, _oo, _du, _sp, _fa, syn0, syn1, sa0, sa1, fin0, fin1,
     fin_order, rst0, rst1, _bursts) = k
    if cd:
        pay_c, pay_s, syn_c, synack_s = pay1, pay0, syn1, sa0
        rst_c, rst_s, fin_c, fin_s = rst1, rst0, fin1, fin0
    else:
        pay_c, pay_s, syn_c, synack_s = pay0, pay1, syn0, sa1
        rst_c, rst_s, fin_c, fin_s = rst0, rst1, fin0, fin1
    if fin_c:
        closed = 1 if not fin_s or fin_order else 2
    elif fin_s:
        closed = 2
    elif rst_c or rst_s:
        closed = 3 if rst_c and not rst_s else 4
    else:
        closed = 0
    return (pay_c, pay_s, closed, bool(syn_c and synack_s and rtt is not None),
            bool(rst_s and not synack_s and syn_c))


def _tcp_entry(k: tuple) -> list:
    """A cache entry: [the rest of the line, count, ttfb, answered?, refused?]."""
    k = _tcp_key(k)
    pay_c, pay_s, closed, handshake, refused = _tcp_fields(k)
    exs, ttfb = _tcp_exchanges(k[0], k[21])
    nbytes = k[2]
    pay = pay_c + pay_s
    rest = _TCP_REST % (k[1], nbytes, pay, pay_c, pay_s, nbytes - pay, _overhead(nbytes, pay), ms(k[5]),
                        ms(k[6]), ms(ttfb), k[7], k[11], k[10], k[8], k[9], k[12] + k[13], k[14] + k[15],
                        k[16] + k[17], k[19] + k[20], _CLOSED[closed], _TF[handshake], _TF[refused],
                        ",".join(exs))
    return [rest, 0, ttfb, pay_s > 0, refused]


def _tcp_flush(cache: dict, tot: _Totals) -> None:
    s = tot.s
    for k, (_, n, ttfb, answered, refused) in cache.items():
        s.conversations += n
        s.packets += k[1] * n
        s.bytes += k[2] * n
        s.payload_bytes += (k[3] + k[4]) * n
        s.retransmissions += k[7] * n
        s.out_of_order += k[8] * n
        s.dup_acks += k[9] * n
        s.requests += n
        if answered:
            s.answered += n
        if refused:
            s.refused += n
        _count(tot.rtt, k[6], n)
        _count(tot.ttfb, ttfb, n)
        _count(tot.dur, k[5], n)
    cache.clear()


def _tcp_rows(b, batch: Callable[[list[str]], None], tot: _Totals) -> None:
    ticks = b.clock.ticks
    eps = _Endpoints()
    ips = eps.ips
    cache: dict[tuple, list] = {}
    lines: list[str] = []
    add = lines.append
    keys = b.tcp.keys
    for idx, c in enumerate(b.tcp.convs):
        f = c if type(c) is not list else c[4:16] + c[1][4:16] + c[17:]
        key = keys[idx]
        if len(key) == 12:
            ip_a, ip_b, port_a, port_b = _V4(key)
            a = ips.get(ip_a)
            if a is None:
                a = ips[ip_a] = _ip4(ip_a)
            b_ = ips.get(ip_b)
            if b_ is None:
                b_ = ips[ip_b] = _ip4(ip_b)
        else:
            a, b_ = eps.pair(key)
            a, port_a = a.rsplit(":", 1)
            b_, port_b = b_.rsplit(":", 1)
            port_a, port_b = int(port_a), int(port_b)
        # who is the client: whoever sent the SYN; without one, the side with the higher port
        syn0, syn1, sa0, sa1 = f[7], f[19], f[8], f[20]
        if syn0 or syn1:
            cd = syn0 < syn1
        elif sa0 or sa1:
            cd = sa0 != 0
        else:
            cd = port_a < port_b
        t0 = f[24]
        n = len(f)
        irtt = f[29]
        fin0, fin1 = f[9], f[21]
        if fin0 < 0 or fin1 < 0:
            fin_order = True
        elif (fin0 ^ fin1) & M32:     # different seconds
            fin_order = ticks(fin1) <= ticks(fin0) if cd else ticks(fin0) <= ticks(fin1)
        else:
            fin_order = fin1 <= fin0 if cd else fin0 <= fin1
        if n == 42:     # one burst: flattened into the key (see _tcp_key)
            k = (cd, f[26], f[27], f[6], f[18], f[25] - t0, irtt - f[30] if irtt >= 0 else None, f[32],
                 f[33], f[34], f[35], f[36], syn0, syn1, sa0, sa1, fin0 >= 0, fin1 >= 0, fin_order, f[10],
                 f[22], f[39], f[40] - t0, f[41])
        else:
            k = (cd, f[26], f[27], f[6], f[18], f[25] - t0, irtt - f[30] if irtt >= 0 else None, f[32],
                 f[33], f[34], f[35], f[36], syn0, syn1, sa0, sa1, fin0 >= 0, fin1 >= 0, fin_order, f[10],
                 f[22], tuple(x for i in range(39, n, 3) for x in (f[i], f[i + 1] - t0, f[i + 2])))
        e = cache.get(k)
        if e is None:
            if len(cache) >= CACHE_MAX:
                _tcp_flush(cache, tot)
            e = cache[k] = _tcp_entry(k)
        e[1] += 1
        if cd:
            a, b_, port_a, port_b = b_, a, port_b, port_a
        frac = t0 >> 32
        if frac < 1_000_000:
            add(f'{{"proto":"tcp","client":"{a}:{port_a}","server":"{b_}:{port_b}","start":{t0 & M32}.'
                f'{str(frac + 1_000_000)[1:]},{e[0]}')
        else:
            add(f'{{"proto":"tcp","client":"{a}:{port_a}","server":"{b_}:{port_b}","start":{_start(t0, b)},'
                f'{e[0]}')
        if len(lines) >= BATCH:
            batch(lines)
            lines.clear()
    if lines:
        batch(lines)
    _tcp_flush(cache, tot)


# --- UDP ----------------------------------------------------------------------------------------------
# key: (packets, bytes, client payload, server payload, duration, exchanges: (request offset or None,
#       request bytes, reply offset or None, reply bytes, ICMP note or None) flattened)

def _udp_summary(ex: tuple) -> tuple[int, int, int | None, int | None]:
    """(requests, unanswered, rtt, ttfb) of an exchanges tuple."""
    requests = unanswered = 0
    rtt = ttfb = None
    for i in range(0, len(ex), 5):
        rq, rp = ex[i], ex[i + 2]
        if rq is not None:
            requests += 1
            if rp is None:
                unanswered += 1
            elif rtt is None:
                rtt = rp - rq
        if rp is not None and ttfb is None:
            ttfb = rp
    return requests, unanswered, rtt, ttfb


def _udp_key(k: tuple) -> tuple:
    """A key with its exchanges as one tuple (the rows loop flattens a single answered one: its request
    is the conversation's first packet, at offset 0)."""
    return k if len(k) == 6 else (*k[:5], (0, k[5], k[6], k[7], None))


def _udp_entry(k: tuple) -> list:
    """A cache entry: [the rest of the line, count, requests, unanswered, rtt, ttfb]."""
    pkts, nbytes, pay_c, pay_s, dur, ex = _udp_key(k)
    requests, unanswered, rtt, ttfb = _udp_summary(ex)
    exs = []
    for i in range(0, len(ex), 5):
        rq, rqb, rp, rpb, note = ex[i:i + 5]
        exs.append(_EX % (ms(rq), rqb, ms(rp), rpb, _TF[rp is not None],
                          "" if note is None else f',"note":"{note}"'))
    pay = pay_c + pay_s
    rest = _UDP_REST % (pkts, nbytes, pay, pay_c, pay_s, nbytes - pay, _overhead(nbytes, pay), ms(dur),
                        ms(rtt), ms(ttfb), requests, unanswered, ",".join(exs))
    return [rest, 0, requests, unanswered, rtt, ttfb]


def _udp_flush(cache: dict, tot: _Totals) -> None:
    s = tot.s
    for k, (_, n, requests, unanswered, rtt, ttfb) in cache.items():
        s.conversations += n
        s.packets += k[0] * n
        s.bytes += k[1] * n
        s.payload_bytes += (k[2] + k[3]) * n
        s.requests += requests * n
        s.answered += (requests - unanswered) * n
        _count(tot.rtt, rtt, n)
        _count(tot.ttfb, ttfb, n)
        _count(tot.dur, k[4], n)
    cache.clear()


def _udp_rows(b, batch: Callable[[list[str]], None], tot: _Totals) -> None:
    eps = _Endpoints()
    ips = eps.ips
    cache: dict[tuple, list] = {}
    lines: list[str] = []
    add = lines.append
    icmp = b.udp.icmp
    for c in b.udp.convs:
        key = c[6]
        if len(key) == 12:
            ip_a, ip_b, port_a, port_b = _V4(key)
            a = ips.get(ip_a)
            if a is None:
                a = ips[ip_a] = _ip4(ip_a)
            b_ = ips.get(ip_b)
            if b_ is None:
                b_ = ips[ip_b] = _ip4(ip_b)
        else:
            a, b_ = eps.pair(key)
            a, port_a = a.rsplit(":", 1)
            b_, port_b = b_.rsplit(":", 1)
        t0 = c[0]
        n = len(c)
        notes = icmp.get(key) if icmp else None
        if n == 13 and not notes and c[10] >= 0:    # one answered exchange (see _udp_key)
            k = (c[2], c[3], c[4], c[5], c[1] - t0, c[9], c[10] - t0, c[11])
        else:
            texts = {num: text for num, _, text in notes} if notes else {}
            k = (c[2], c[3], c[4], c[5], c[1] - t0, tuple(x for j, i in enumerate(range(8, n, 5)) for x in (
                None if c[i] < 0 else c[i] - t0, c[i + 1], None if c[i + 2] < 0 else c[i + 2] - t0,
                c[i + 3], texts.get(j))))
        e = cache.get(k)
        if e is None:
            if len(cache) >= CACHE_MAX:
                _udp_flush(cache, tot)
            e = cache[k] = _udp_entry(k)
        e[1] += 1
        frac = t0 >> 32
        if frac < 1_000_000:
            add(f'{{"proto":"udp","client":"{a}:{port_a}","server":"{b_}:{port_b}","start":{t0 & M32}.'
                f'{str(frac + 1_000_000)[1:]},{e[0]}')
        else:
            add(f'{{"proto":"udp","client":"{a}:{port_a}","server":"{b_}:{port_b}","start":{_start(t0, b)},'
                f'{e[0]}')
        if len(lines) >= BATCH:
            batch(lines)
            lines.clear()
    if lines:
        batch(lines)
    _udp_flush(cache, tot)


# --- medians ------------------------------------------------------------------------------------------

def _median(hist: dict[int, int], floats: Callable[[int, int], tuple[float, float]]) -> float | None:
    """The median of a microsecond histogram, in ms, as a float that rounds (to 3 decimals) exactly as
    the median of the floats ``report.emit_rows`` computes. ``floats(lo, hi)``: the largest float of
    the values ``lo`` and the smallest of the values ``hi`` (needed only for a tie at half a
    microsecond)."""
    n = sum(hist.values())
    if not n:
        return None
    m = n // 2
    wanted = (m - 1, m) if n % 2 == 0 else (m,)
    found = []
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        while len(found) < len(wanted) and wanted[len(found)] < seen:
            found.append(k)
        if len(found) == len(wanted):
            break
    if len(found) == 1:
        return found[0] / 1000
    lo, hi = found
    if (lo + hi) % 2 == 0:
        return (lo + hi) // 2 / 1000
    x_lo, x_hi = floats(lo, hi)
    return (x_lo + x_hi) / 2


def _tcp_floats(b, metric: str) -> Callable[[int, int], tuple[float, float]]:
    secs = b.seconds

    def extremes(lo: int, hi: int) -> tuple[float, float]:
        x_lo = x_hi = None
        for i in range(len(b.tcp.convs)):
            f = b.tcp.flat(i)
            t0 = f[cv.F_FIRST]
            if metric == "rtt":
                if f[cv.F_IRTT] < 0:
                    continue
                a, z = f[cv.F_IRTT], f[cv.F_IRTT0]
            elif metric == "dur":
                a, z = f[cv.F_LAST], t0
            else:
                syn_a, syn_b = f[cv.F_SYN], f[cv.F_SYN + 12]
                if syn_a or syn_b:
                    cd = 0 if syn_a >= syn_b else 1
                elif f[cv.F_SYNACK] or f[cv.F_SYNACK + 12]:
                    cd = 1 if f[cv.F_SYNACK] else 0
                else:
                    key = b.tcp.keys[i]
                    n = (len(key) - 4) // 2
                    cd = 0 if key[2 * n:2 * n + 2] >= key[2 * n + 2:] else 1
                a = next((f[j + 1] for j in range(cv.F_SIZE, len(f), 3) if f[j] != cd), None)
                if a is None:
                    continue
                z = t0
            k = us(a - z)
            if k in (lo, hi):
                x_lo, x_hi = _keep(k, (secs(a) - secs(z)) * 1000.0, lo, x_lo, x_hi)
        return x_lo, x_hi

    return extremes


def _udp_floats(b, metric: str) -> Callable[[int, int], tuple[float, float]]:
    secs = b.seconds

    def extremes(lo: int, hi: int) -> tuple[float, float]:
        x_lo = x_hi = None
        for c in b.udp.convs:
            t0 = c[0]
            if metric == "dur":
                k = us(c[1] - t0)
                if k in (lo, hi):
                    x_lo, x_hi = _keep(k, (secs(c[1]) - secs(t0)) * 1000.0, lo, x_lo, x_hi)
                continue
            for i in range(udp.U_SIZE, len(c), 5):
                rq, rp = c[i], c[i + 2]
                if metric == "rtt" and rq >= 0 and rp >= 0:
                    k = us(rp - rq)
                    if k in (lo, hi):
                        t0f = secs(t0)
                        x_lo, x_hi = _keep(k, (secs(rp) - t0f) * 1000.0 - (secs(rq) - t0f) * 1000.0, lo,
                                           x_lo, x_hi)
                    break
                if metric == "ttfb" and rp >= 0:
                    k = us(rp - t0)
                    if k in (lo, hi):
                        x_lo, x_hi = _keep(k, (secs(rp) - secs(t0)) * 1000.0, lo, x_lo, x_hi)
                    break
        return x_lo, x_hi

    return extremes


def _keep(k: int, x: float, lo: int, x_lo: float | None, x_hi: float | None
          ) -> tuple[float | None, float | None]:
    """The largest float of the value ``lo`` and the smallest of the other one seen so far."""
    if k == lo:
        if x_lo is None or x > x_lo:
            x_lo = x
    elif x_hi is None or x < x_hi:
        x_hi = x
    return x_lo, x_hi


def emit_rows_us(b, tcp_batch: Callable[[list[str]], None], udp_batch: Callable[[list[str]], None]
                 ) -> tuple[ProtoSummary, ProtoSummary]:
    """Hand the JSON rows, a list at a time, to ``tcp_batch``/``udp_batch``; return the summaries
    (their medians are only good for rounding to 3 decimals, as the JSON does)."""
    tcp, udp = _Totals("tcp"), _Totals("udp")
    _tcp_rows(b, tcp_batch, tcp)
    _udp_rows(b, udp_batch, udp)
    for tot, floats in ((tcp, _tcp_floats), (udp, _udp_floats)):
        s = tot.s
        s.rtt_ms = _median(tot.rtt, floats(b, "rtt"))
        s.ttfb_ms = _median(tot.ttfb, floats(b, "ttfb"))
        s.duration_ms = _median(tot.dur, floats(b, "dur"))
        if s.conversations:
            s.packets_per_conversation = s.packets / s.conversations
            s.bytes_per_conversation = s.bytes / s.conversations
    return tcp.s, udp.s
