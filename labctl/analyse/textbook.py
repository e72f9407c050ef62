"""The textbook picture beside the measured one (Go in Practice, technique 24: a TCP time server that
writes the time and closes; the UDP one that answers one datagram with one datagram), and the
differences in this capture told in plain sentences with numbers.
"""
from __future__ import annotations

from dataclasses import replace

from labctl.analyse.model import Conversation, Packet


def _p(from_client: bool, label: str, length: int = 0) -> Packet:
    return Packet(None, from_client, label, None, None, length, 0)  # type: ignore[arg-type]


TCP_TEXTBOOK = [_p(True, "SYN"), _p(False, "SYN-ACK"), _p(True, "ACK"), _p(False, "PSH-ACK", 1),
                _p(True, "ACK"), _p(False, "FIN-ACK"), _p(True, "ACK"), _p(True, "FIN-ACK"), _p(False, "ACK")]
UDP_TEXTBOOK = [_p(True, "UDP", 1), _p(False, "UDP", 1)]


def textbook_conversation(measured: Conversation) -> Conversation:
    """The textbook's conversation for ``measured``'s protocol, drawn with the same ladder code."""
    ladder = TCP_TEXTBOOK if measured.proto == "tcp" else UDP_TEXTBOOK
    return replace(measured, packets=len(ladder), bytes=0, payload_bytes=0, ladder=list(ladder),
                   client="client", server="server", retransmissions=0,
                   refused=False, rst=0)


SLOW_MS = 150.0   # a step this much slower than the lab's sub-millisecond ones is a timer, not the wire


def late_clients(convs: list[Conversation], names: dict[str, str] | None = None) -> list[str]:
    """Sentences for clients whose first packet came far after the first client's (a lost first packet)."""
    names = names or {}
    first: dict[str, float] = {}
    for c in convs:
        ip = c.client.rsplit(":", 1)[0].strip("[]")
        first[ip] = min(first.get(ip, c.start), c.start)
    if len(first) < 2:
        return []
    t0 = min(first.values())
    out = []
    for ip, t in sorted(first.items(), key=lambda kv: kv[1]):
        late = (t - t0) * 1000.0
        if late > SLOW_MS:
            proto = next(c.proto for c in convs if c.client.startswith(ip + ":"))
            why = ("its SYN was most likely lost and sent again when TCP's first retransmission timer "
                   "(1 s) ran out" if proto == "tcp" and late > 900 else
                   "its first packet was most likely lost, and it tried again")
            out.append(f"{names.get(ip, ip)}'s first packet reached the server {late:.0f} ms after the first "
                       f"client's: {why}. This capture on the server sees only what arrived.")
    return out


def _flags(label: str) -> set[str]:
    return set(label.split("-"))


def differences(conv: Conversation) -> list[str]:
    """What this conversation did that the textbook picture does not show, or did differently."""
    lad = conv.ladder or []
    out: list[str] = []
    book = TCP_TEXTBOOK if conv.proto == "tcp" else UDP_TEXTBOOK
    if len(lad) != len(book):
        out.append(f"The textbook draws {len(book)} packets; this conversation took {len(lad)}.")
    else:
        out.append(f"Like the textbook: {len(lad)} packets.")
    if conv.proto == "udp":
        requests = sum(1 for p in lad if p.from_client)
        replies = len(lad) - requests
        if requests > 1:
            out.append(f"The client sent its request {requests} times: it timed out and asked again "
                       "(UDP itself never resends; the application did).")
        if replies == 0:
            out.append("No reply came back: the datagram or its answer was lost, and nothing on the wire "
                       "noticed.")
        elif conv.rtt_ms is not None:
            out.append(f"The reply came {conv.rtt_ms:.3f} ms after the request, with no handshake "
                       "before it and no acknowledgement after it.")
        return out
    server_data = [p for p in lad if not p.from_client and p.length]
    if server_data and "FIN" in _flags(server_data[-1].label):
        out.append(f"The server sent the time and its FIN in one segment ({server_data[-1].label}, "
                   f"{server_data[-1].length} bytes): it closes as soon as it has written, so data and "
                   "close travel together instead of as two packets.")
    elif server_data and server_data[0].length:
        out.append(f"The time came in {len(server_data)} segment(s) of {server_data[0].length} bytes "
                   "(the textbook draws it as one arrow without a size).")
    client_fin = [i for i, p in enumerate(lad) if p.from_client and "FIN" in _flags(p.label)]
    server_fin = [i for i, p in enumerate(lad) if not p.from_client and "FIN" in _flags(p.label)]
    if client_fin and server_fin:
        if client_fin[0] < server_fin[0]:
            out.append("The client closed first (its FIN came before the server's).")
        else:
            gap = (lad[client_fin[0]].t_ms or 0) - (lad[server_fin[0]].t_ms or 0)
            between = [p for p in lad[server_fin[0] + 1:client_fin[0]] if p.from_client]
            if not between:
                out.append(f"The client acknowledged the server's FIN with its own FIN in the same segment, "
                           f"{gap:.3f} ms later: no separate ACK as in the textbook.")
            if gap > SLOW_MS:
                out.append(f"That FIN came {gap:.0f} ms late: its first copy was most likely lost on the way "
                           "and sent again when TCP's retransmission timer (at least 200 ms) ran out; a "
                           "capture on the server sees only the copy that arrived.")
            else:
                out.append(f"The client's FIN came {gap:.3f} ms after the server's, after a separate ACK.")
    elif server_fin and not client_fin:
        out.append("The client never sent a FIN in this capture (it reset, or the capture stopped first).")
    data_acks = [p for p in lad if p.from_client and p.label == "ACK" and not p.length]
    if server_data and len(data_acks) < 2:
        out.append("The client did not send a separate ACK for every segment of the server: "
                   "acknowledgements were combined (delayed ACK, or piggy-backed on the FIN).")
    if conv.retransmissions:
        out.append(f"{conv.retransmissions} segment(s) were sent again (retransmission): a packet or its "
                   "acknowledgement was lost, and TCP repaired it" +
                   (f"; the conversation took {conv.duration_ms:.0f} ms" if conv.duration_ms else "") + ".")
    if conv.refused or conv.rst:
        out.append("The connection ended with a RST, not the FIN/ACK close: nothing was listening, or a "
                   "side gave up.")
    if conv.rtt_ms is not None:
        out.append(f"The handshake took {conv.rtt_ms:.3f} ms; the first byte of the time came "
                   f"{conv.ttfb_ms or 0:.3f} ms after the SYN.")
    return out
