"""The time server's protocol and limits (scripts/timeserver_protocol.py, timeserver_limits.py) as pure
functions and small objects, with hypothesis."""
from __future__ import annotations

import struct
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # as the node runs them
import timeserver_limits
import timeserver_protocol

ts = types.SimpleNamespace(**{k: v for m in (timeserver_protocol, timeserver_limits)
                              for k, v in vars(m).items() if not k.startswith("_")})

CAP = 64
TIME = b"2026-11-25T09:39:51.123Z\n"
# request lines: any bytes but LF, not ending in CR (a CR before the LF belongs to the terminator)
lines_st = st.binary(max_size=CAP).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))


def feed(chunks: list[bytes], cap: int) -> list[bytes]:
    """Drive split_lines the way the server does: carry the tail into the next read."""
    got: list[bytes] = []
    rest = b""
    for chunk in chunks:
        lines, rest = ts.split_lines(rest + chunk, cap)
        got += lines
    return got


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(lines_st, st.sampled_from([b"\n", b"\r\n"])), max_size=20),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_split_of_the_stream_yields_the_same_lines(lines, cuts):
    data = b"".join(line + term for line, term in lines)
    assert feed(chunked(data, cuts), CAP) == [line for line, _ in lines]


@settings(max_examples=200, deadline=None)
@given(lines_st, st.integers(min_value=1, max_value=200),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=10), st.booleans())
def test_a_line_over_the_cap_is_refused_however_it_arrives(prefix, extra, cuts, terminated):
    long_line = (prefix + b"x" * (CAP + extra))[: CAP + extra]
    data = long_line + (b"\n" if terminated else b"")
    with pytest.raises(ts.LineTooLong):
        feed(chunked(data, cuts), CAP)


@given(st.binary(max_size=CAP))
def test_unterminated_tail_within_cap_is_kept(tail):
    tail = tail.replace(b"\n", b"")
    assert ts.split_lines(tail, CAP) == ([], tail)


@given(st.binary(max_size=300))
def test_every_request_gets_exactly_one_line(line):
    line = line.replace(b"\n", b"")
    reply = ts.answer(line, TIME)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    if line.startswith(b"GET TIME"):
        assert reply == TIME
    elif line.startswith(b"SAY HI"):
        assert reply == b"Hello, World!\n"
    else:
        assert reply.startswith(b"ERR ")


@given(st.integers(min_value=0, max_value=70_000))
def test_udp_replies_respect_three_times_bound(n):
    full, secs, four = b"2026-11-25T09:39:51.123Z", b"2026-11-25T09:39:51Z", b"\0\0\0\0"
    for reply in (ts.udp_reply(n, full, secs), ts.rfc868_reply(n, four)):
        assert reply is None or len(reply) <= 3 * n
    assert (ts.udp_reply(n, full, secs) == full) == (n >= 8)


def test_time_formats():
    assert ts.iso_ms(1795599591123) == "2026-11-25T09:39:51.123Z"
    assert len(ts.iso_ms(1795599591000).encode()) == 24
    assert struct.unpack("!I", ts.rfc868_bytes(0))[0] == 2208988800
    assert struct.unpack("!I", ts.rfc868_bytes(1795599591))[0] == 1795599591 + 2208988800


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 0.5)), max_size=300))
def test_token_buckets_cap_each_source_and_stay_bounded(events):
    rate, burst = 10.0, 5.0
    tb = ts.TokenBuckets(rate, burst, max_entries=8)
    now = 0.0
    allowed: dict[int, int] = {}
    for src, dt in events:
        now += dt
        if tb.allow(f"10.0.0.{src}", now):
            allowed[src] = allowed.get(src, 0) + 1
        assert len(tb.buckets) <= 8
    # sources beyond the table share the overflow bucket, so even all of them together are capped
    assert sum(allowed.values()) <= (burst + rate * now) * (8 + 1) + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 0.3)), max_size=300))
def test_token_bucket_per_source_never_beyond_burst_plus_rate(events):
    rate, burst = 10.0, 5.0
    tb = ts.TokenBuckets(rate, burst, max_entries=3)  # forces purges of full buckets too
    now = 0.0
    allowed: dict[int, int] = {}
    for src, dt in events:
        now += dt
        if tb.allow(f"10.0.0.{src}", now):
            allowed[src] = allowed.get(src, 0) + 1
    for src, n in allowed.items():
        # a source in the table is capped alone; one pushed to the overflow bucket shares it
        assert n <= 2 * (burst + rate * now) + 1e-9, (src, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=200))
def test_connection_limits_hold_in_total_and_per_source(events):
    limits = ts.ConnectionLimits(total=5, per_source=2)
    held: list[str] = []
    for source, opening in events:
        if opening:
            refusal = limits.take(source)
            if refusal is None:
                held.append(source)
            else:
                assert refusal.startswith(b"ERR busy")
                assert len(held) >= 5 or held.count(source) >= 2  # refused only at a cap
        elif source in held:
            held.remove(source)
            limits.give_back(source)
        assert len(held) <= 5 and all(held.count(x) <= 2 for x in "abc")
        assert limits.open == len(held) and sum(limits.by_source.values()) == len(held)


def test_log_budget_counts_what_it_leaves_out():
    out: list[str] = []
    log = ts.Log("udp", 3, out)
    clock = ts.Clock()
    clock.sec, clock.text = 100, "2026-11-25T09:39:51.000Z"
    for i in range(10):
        log.line(clock, ("10.0.0.1", 5000), b"anything", 8, 0 if i % 2 else 24,
                 "no reply: rate limit" if i % 2 else "")
    assert len(out) == 3 and all(" udp 10.0.0.1:5000 'anything' 8B -> " in x for x in out)
    clock.sec, clock.text = 101, "2026-11-25T09:39:52.000Z"
    log.roll(clock)
    assert out[-1] == ("2026-11-25T09:39:52.000Z udp - - 0B -> 0B not logged: 7 more lines "
                       "(4 no reply: rate limit, 3 answered)\n")
    log.roll(clock)
    assert len(out) == 4  # at most one summary a second
    clock.sec, clock.text = 102, "2026-11-25T09:39:53.000Z"
    log.roll(clock)
    assert len(out) == 4  # nothing more left out: no summary
    for _ in range(5):
        log.line(clock, "-", "-", 0, 0, "no reply: 3x bound")  # a new second: 3 logged, 2 counted
    clock.sec, clock.text = 103, "2026-11-25T09:39:54.000Z"
    log.roll(clock)
    assert len(out) == 8 and out[-1].endswith("not logged: 2 more lines (2 no reply: 3x bound)\n")
