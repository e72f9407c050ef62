"""A ladder as rows: one per packet (time, from which lane to which, label, note, style), plus the rows
that say what did not happen (a gap in time, a reply that never came). The terminal (``terminal.py``)
and the SVG (``svg.py``) renderers draw the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass

from labctl.analyse.model import Conversation, Packet


@dataclass
class Row:
    """One arrow: time, from lane, to lane, label on the arrow, note beside it, style."""

    t_ms: float | None
    src: int
    dst: int
    label: str
    note: str = ""
    style: str = ""
    arrive_ms: float | None = None   # seen at both ends (several capture points): when it arrived
    stub: bool = False               # seen leaving, never arriving: drawn as a stub from the sender


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


def crossing_notes(conv: Conversation, p: Packet) -> list[str]:
    """What the capture points saw of a packet: its one-way time, or where it was lost."""
    if p.lost_to:
        sender = conv.client_node if p.from_client else conv.server_node
        where = f" (last seen at {p.last_seen})" if p.last_seen and not p.last_seen.startswith(
            f"{sender} at") else ""
        return [f"✗ never reached {p.lost_to}{where}"]
    if p.one_way_ms is not None:
        return [f"one-way {p.one_way_ms:.3f} ms"]
    return []


def conversation_rows(conv: Conversation) -> list[Row]:
    """Rows for a two-lane ladder: lane 0 the client, lane 1 the server."""
    rows: list[Row] = []
    for p in conv.ladder or []:
        src, dst = (0, 1) if p.from_client else (1, 0)
        rows.append(Row(p.t_ms, src, dst, packet_label(p), ", ".join(crossing_notes(conv, p) + p.notes),
                        "lost" if p.lost_to else packet_style(p), p.arrive_ms, bool(p.lost_to)))
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
