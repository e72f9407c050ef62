"""What TCP's retransmissions cost: per conversation, the segments it sent again and the time they took.

``tcp.TcpConversations.resent`` notes, for every segment sent again, when its original was sent (or
that this capture did not see it), when its last copy was sent and how many copies went out. A
segment's cost is the time from its first transmission to the one that got through (the last copy:
the sender stopped there); a spurious retransmission costs nothing (the original had arrived, only
its acknowledgement was late or lost). A conversation's cost is the union of its segments' intervals
(two segments resent over the same 200 ms cost 200 ms, not 400): how much longer the exchange took
than the clean one. The original's time comes from the conversation's state alone: the last segment
that way when it was resent (``tcp.resend``: a SYN, a FIN, a tail segment), or the first segment of a
burst of data (``burst_start``). A segment inside a burst is "unknown"; counted, never guessed.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from labctl.analyse import tcp as T
from labctl.analyse.figures import TCP_CLIENT, tcp_rows

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from labctl.analyse.conversations import Builder


@dataclass
class Resent:
    """One segment sent more than once."""

    from_client: bool
    seq: int                    # relative to its direction's first sequence number
    copies: int                 # retransmissions of it (the original not counted)
    first_ms: float | None      # its original, since the conversation's first packet (None: not captured)
    last_ms: float              # its last copy, the same way
    spurious: bool              # the original had arrived already
    length: int = 0             # its payload bytes (0: a SYN, SYN-ACK or FIN)

    @property
    def cost_ms(self) -> float | None:
        """First transmission to the one that got through; 0 when spurious; None when not known."""
        if self.spurious:
            return 0.0
        return None if self.first_ms is None else self.last_ms - self.first_ms

    def to_json(self) -> dict:
        cost = self.cost_ms
        return {"from": "client" if self.from_client else "server", "seq": self.seq, "copies": self.copies,
                "first_ms": None if self.first_ms is None else round(self.first_ms, 3),
                "last_ms": round(self.last_ms, 3), "spurious": self.spurious, "bytes": self.length,
                "cost_ms": None if cost is None else round(cost, 3)}


def segments(b: Builder, i: int, client_dir: int, t0: int) -> list[Resent]:
    """The i-th TCP conversation's segments sent again, in order of their last copy."""
    segs = b.tcp.resent.get(i)
    if not segs:
        return []
    f = b.tcp.flat(i)
    ticks, units = b.times.ticks, b.times.units
    start = ticks(t0)

    def ms(t: int) -> float:
        return (ticks(t) - start) * 1000.0 / units

    out = []
    for (d, seq), (first, last, copies, spurious, plen) in segs.items():
        isn = f[T.F_ISN + 12 * d]
        rel = (seq - isn) & T.M32 if isn >= 0 else seq
        if first < 0 and plen and isn >= 0:
            first = burst_start(f, d, rel - 1)
        out.append(Resent(d == client_dir, rel, copies, None if first < 0 else ms(first), ms(last),
                          bool(spurious), plen))
    out.sort(key=lambda r: r.last_ms)
    return out


def burst_start(f, d: int, pos: int) -> int:
    """The time of the burst of data direction ``d`` began with its byte ``pos`` (counted from 0), or -1:
    a segment that began a burst was first sent then (the bursts are in the conversation's flat form)."""
    at = 0
    for i in range(T.F_SIZE, len(f), 3):
        if f[i] == d:
            if at == pos:
                return f[i + 1]
            at += f[i + 2]
            if at > pos:
                break
    return -1


def cost_ms(segs: list[Resent]) -> float | None:
    """The time the retransmissions added: the union of the known segments' intervals (None: none known,
    or nothing resent)."""
    spans = sorted((r.first_ms, r.last_ms) for r in segs if not r.spurious and r.first_ms is not None)
    if not spans:
        return 0.0 if segs and all(r.spurious for r in segs) else None
    total, (lo, hi) = 0.0, spans[0]
    for a, z in spans[1:]:
        if a > hi:
            total, lo, hi = total + hi - lo, a, z
        else:
            hi = max(hi, z)
    return total + hi - lo


def unknown(segs: list[Resent]) -> int:
    """Segments whose original this capture did not see (their cost is not known)."""
    return sum(1 for r in segs if not r.spurious and r.first_ms is None)


def _what(r: Resent, handshake: bool) -> str:
    who = "client" if r.from_client else "server"
    if r.seq == 0 and handshake and not r.length:
        return f"the {who}'s {'SYN' if r.from_client else 'SYN-ACK'}"
    if not r.length:
        return f"the {who}'s FIN"
    return f"the {who}'s {r.length} bytes at seq {r.seq}"


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def explain(segs: list[Resent], handshake: bool = True) -> str:
    """One sentence: "2 retransmissions, 210.0 ms more than the clean exchange (the client's SYN sent
    again 2 times: 203.1 ms from the first copy to the last)"."""
    if not segs:
        return "no retransmissions"
    n = sum(r.copies for r in segs)
    cost = cost_ms(segs)
    head = f"{n} retransmission{'' if n == 1 else 's'}, "
    head += "cost not known" if cost is None else f"{cost:.1f} ms more than the clean exchange"
    parts = []
    for r in segs:
        what = f"{_what(r, handshake)} sent again {_times(r.copies)}"
        if r.spurious:
            parts.append(what + ": spurious, it had arrived")
        elif r.first_ms is None:
            parts.append(what + ": its original is not in this capture")
        else:
            parts.append(what + f": {r.cost_ms:.1f} ms from the first copy to the last")
    return head + " (" + "; ".join(parts) + ")"


def conversations(b: Builder) -> Iterator[tuple[str, str, list[Resent]]]:
    """(client, server, segments sent again) of every TCP conversation that resent something."""
    if not b.tcp.resent:
        return
    for i, (ca, cp, sa, sp, t0, k) in enumerate(tcp_rows(b, exact=False)):
        if i in b.tcp.resent:
            yield f"{ca}:{cp}", f"{sa}:{sp}", segments(b, i, k[TCP_CLIENT], t0)


def totals(b: Builder) -> tuple[int, float, int]:
    """(conversations that resent something, the time it cost them all in ms, segments of unknown cost)."""
    convs, total, unknown_n = 0, 0.0, 0
    for _c, _s, segs in conversations(b):
        convs += 1
        total += cost_ms(segs) or 0.0
        unknown_n += unknown(segs)
    return convs, total, unknown_n


def stories(b: Builder, limit: int) -> tuple[list[str], int]:
    """One line per TCP conversation that resent something (the first ``limit``), and how many did."""
    lines, n = [], 0
    for client, server, segs in conversations(b):
        n += 1
        if len(lines) < limit:
            lines.append(f"{client} → {server}: {explain(segs)}")
    return lines, n
