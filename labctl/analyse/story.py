"""The comparison in words: table rows, findings and the exercise's reflection answers, all from the
numbers of *this* capture (shared by the terminal report and the HTML report)."""
from __future__ import annotations

from dataclasses import dataclass

from labctl.analyse.summary import ProtoSummary


def _ms(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms")


def _n(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if not isinstance(x, float):
        return str(x)
    t = f"{x:.{digits}f}"
    return t.rstrip("0").rstrip(".") if "." in t else t


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _cost(tcp: ProtoSummary) -> str:
    """", which made N conversations X ms longer in all (Y ms each)": what the retransmissions cost."""
    if not tcp.retransmitted or not tcp.retransmission_ms:
        return ""
    unknown = tcp.retransmission_unknown
    known = f"; {_plural(unknown, 'segment')} of unknown cost: its original is not in the capture" \
        if unknown else ""
    per = tcp.retransmission_ms / tcp.retransmitted
    return (f", which made {_plural(tcp.retransmitted, 'conversation')} {tcp.retransmission_ms:.0f} ms "
            f"longer in all ({per:.0f} ms each{known})")


def comparison_rows(tcp: ProtoSummary, udp: ProtoSummary) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the TCP-vs-UDP table."""
    rows = [
        ["conversations", str(tcp.conversations), str(udp.conversations)],
        ["requests (answered)", f"{tcp.requests} ({tcp.answered})", f"{udp.requests} ({udp.answered})"],
        ["packets", str(tcp.packets), str(udp.packets)],
        ["packets per conversation", _n(tcp.packets_per_conversation), _n(udp.packets_per_conversation)],
        ["bytes on the wire", str(tcp.bytes), str(udp.bytes)],
        ["payload bytes", str(tcp.payload_bytes), str(udp.payload_bytes)],
        ["header overhead", f"{tcp.overhead_pct:.1f} %", f"{udp.overhead_pct:.1f} %"],
        ["handshake / request→reply (median)", _ms(tcp.rtt_ms), _ms(udp.rtt_ms)],
        ["time to first byte of answer (median)", _ms(tcp.ttfb_ms), _ms(udp.ttfb_ms)],
        ["duration (median)", _ms(tcp.duration_ms), _ms(udp.duration_ms)],
        ["retransmissions", str(tcp.retransmissions), "– (none: UDP never resends)"],
        ["time retransmissions added", f"{tcp.retransmission_ms:.1f} ms" if tcp.retransmitted else "–", "–"],
        ["unanswered requests", str(tcp.unanswered), str(udp.unanswered)],
        ["refused connections (RST)", str(tcp.refused), "–"],
    ]
    return ["", "TCP", "UDP"], rows


def findings(tcp: ProtoSummary, udp: ProtoSummary) -> list[str]:
    """Short sentences stating what this capture shows."""
    out: list[str] = []
    if tcp.conversations:
        per = tcp.packets / tcp.conversations
        pay = tcp.payload_bytes / tcp.conversations
        out.append(
            f"TCP needed {_n(per)} packets / {_n(tcp.bytes / tcp.conversations, 0)} bytes per conversation "
            f"to deliver {_n(pay, 0)} bytes of payload ({tcp.overhead_pct:.0f} % headers): handshake "
            f"(SYN, SYN-ACK, ACK), data, acknowledgements and the FIN/ACK close.")
    if udp.conversations:
        per_req = udp.packets / max(udp.requests, 1)
        out.append(
            f"UDP needed {_n(per_req)} packets / {_n(udp.bytes / max(udp.requests, 1), 0)} bytes per "
            f"request for {_n(udp.payload_bytes / max(udp.requests, 1), 0)} bytes of payload "
            f"({udp.overhead_pct:.0f} % headers): one datagram each way, nothing else.")
    if tcp.ttfb_ms is not None and udp.ttfb_ms is not None:
        out.append(f"The answer's first byte came after {_ms(tcp.ttfb_ms)} with TCP (the handshake "
                   f"comes first) and after {_ms(udp.ttfb_ms)} with UDP (median).")
    if tcp.conversations:
        spurious = tcp.spurious_retransmissions
        lost = tcp.retransmissions - spurious
        got = tcp.answered
        again = (f"{_plural(spurious, 'segment')} that had already arrived (spurious retransmissions: "
                 "an acknowledgement was late or lost, not the data)")
        if lost:
            out.append(f"TCP retransmitted {_plural(lost, 'segment')} that went missing"
                       + (f" (and sent {again})" if spurious else "")
                       + _cost(tcp) + f", and {got} of {tcp.conversations - tcp.refused} connected clients "
                       "got their answer.")
        elif spurious:
            out.append(f"TCP sent {again}; no data was lost: {got} of "
                       f"{tcp.conversations - tcp.refused} connected clients got their answer.")
        elif tcp.conversations - tcp.refused:
            out.append(f"No TCP retransmissions: {got} of {tcp.conversations - tcp.refused} connected "
                       "clients got their answer.")
        if tcp.refused:
            out.append(f"{_plural(tcp.refused, 'TCP connection')} was refused: the server host answered "
                       "the SYN with RST (nothing listening) and the client knew at once."
                       .replace("connections was", "connections were"))
    if udp.requests:
        if udp.unanswered:
            out.append(f"{udp.unanswered} of {udp.requests} UDP requests got no reply: UDP neither notices "
                       "nor resends; only a client timeout can tell.")
        else:
            out.append(f"All {udp.requests} UDP requests got a reply (nothing was lost on this run).")
    return out


def reflection(tcp: ProtoSummary, udp: ProtoSummary) -> list[tuple[str, list[str]]]:
    """The exercise's three reflection questions, answered with this capture's numbers."""
    t_per = tcp.packets / tcp.conversations if tcp.conversations else None
    u_per = udp.packets / udp.requests if udp.requests else None
    diff = [
        "TCP is a connection: before any data it takes a three-way handshake (SYN, SYN-ACK, ACK), every "
        "segment is numbered and acknowledged, and the connection is closed with FIN/ACK from both "
        "sides. UDP sends a datagram and that is all: no connection, no acknowledgement, no order, no "
        "resending.",
    ]
    if t_per is not None and u_per is not None:
        diff.append(
            f"In this capture that meant {_n(t_per)} packets and {_n(tcp.bytes / tcp.conversations, 0)} "
            f"bytes per TCP conversation against {_n(u_per)} packets and "
            f"{_n(udp.bytes / udp.requests, 0)} bytes per UDP request, for about the same payload; "
            f"headers were {tcp.overhead_pct:.0f} % of TCP's bytes and {udp.overhead_pct:.0f} % of UDP's.")
    lost = tcp.retransmissions - tcp.spurious_retransmissions
    if lost or udp.unanswered:
        t = (f"When packets went missing, TCP noticed and sent them again "
             f"({_plural(lost, 'retransmission')})")
        if udp.unanswered:
            t += (f"; UDP did not: {udp.unanswered} of {udp.requests} requests simply got no answer "
                  "and nobody on the wire tried again.")
        else:
            t += "; UDP has no such repair: a lost datagram stays lost unless the application asks again."
        diff.append(t)
    when = [
        "Choose TCP when every byte must arrive, in order, and the exchange is worth a round trip of "
        "set-up: file transfer, web and API calls, database sessions, anything transactional.",
        "Choose UDP when an answer that is late is worthless or can just be asked for again, when there "
        "are many small independent messages, or when the application wants its own rules for loss: "
        "time (NTP), DNS look-ups, telemetry, voice and video, games, discovery and broadcast.",
    ]
    if tcp.ttfb_ms is not None and udp.ttfb_ms is not None:
        when.append(
            f"Measured here: the first byte of the answer after {_ms(tcp.ttfb_ms)} with TCP and "
            f"{_ms(udp.ttfb_ms)} with UDP; a time service asked by many clients is a natural UDP job, a "
            "service that must never lose a request a TCP one.")
    integ = [
        "TCP gives an integration a reliable byte stream, so most integration protocols build on it "
        "(HTTP/REST, gRPC, AMQP and MQTT brokers, database drivers, SSH); the price is connection "
        "state on both ends, the handshake's latency and framing your own messages inside the stream "
        "(here: one line of text ended by a newline).",
        "UDP leaves reliability to the application: an integration over UDP needs time-outs, retries, "
        "idempotent requests and message sizes below the path MTU, and must accept lost or repeated "
        "datagrams. In return it is cheap, needs no connection and can send one message to many "
        "(broadcast/multicast): service discovery, metrics (StatsD), logs (syslog), NTP, DNS.",
    ]
    if udp.requests:
        if udp.unanswered:
            integ.append(
                f"This run shows why: {udp.unanswered} of {udp.requests} UDP requests went unanswered, "
                "so a UDP client in an integration must retry; the TCP clients needed no such code "
                f"because TCP retransmitted for them ({_plural(tcp.retransmissions, 'retransmission')}).")
        else:
            integ.append(
                f"On this run all {udp.requests} UDP requests were answered, but nothing in UDP "
                "guaranteed it; on a lossy network the same client would need a retry loop.")
    return [
        ("What is the difference between communication with TCP and UDP?", diff),
        ("When would you choose which protocol?", when),
        ("How can these two protocols be used with respect to system integration?", integ),
    ]


# --- the lossy round: TCP against UDP under loss, from the run's own packets and results ---------------

@dataclass
class LossyRound:
    """What the lossy round of an exercise cost each protocol (every figure from its captures and its
    results: ``lossy_round``)."""

    loss: float                          # percent, on every link
    tcp_clients: int                     # TCP clients of the lossy round ...
    tcp_answered: int                    # ... that got the time (their own result)
    extra_packets: float | None          # per TCP conversation, against the clean hour (None: none)
    resent_per_client: float             # TCP retransmissions per client (the server's capture)
    resent_ms_per_client: float          # the time they added per client (first copy to the last)
    tcp_gave_up: int                     # TCP clients that stopped at their own timeout (TCP still trying)
    udp_clients: int
    udp_lost: int                        # UDP clients that got no answer
    udp_timeouts: int | None             # timeouts the UDP clients counted (None: not known)
    udp_retries: int                     # attempts after the first, all UDP clients together

    def sentence(self) -> str:
        """"With 30 % loss, TCP needed 1.8 extra packets and 210 ms more per client and all 3 got the time;
        UDP lost 1 of 3 answers and nobody noticed but the client's timeout.\""""
        if self.extra_packets is not None:
            n = _n(self.extra_packets)
            packets = f"{n} extra packet{'' if n == '1' else 's'}"
        else:
            n = _n(self.resent_per_client)
            packets = f"{n} packet{'' if n == '1' else 's'} sent again"
        ms = f"{self.resent_ms_per_client:.0f} ms more per client"
        if self.tcp_answered == self.tcp_clients and self.tcp_clients > 1:
            got = "both" if self.tcp_clients == 2 else f"all {self.tcp_clients}"
        else:
            got = f"{self.tcp_answered} of {self.tcp_clients}"
        tcp = f"With {self.loss:g} % loss, TCP needed {packets} and {ms} and {got} got the time"
        if self.tcp_gave_up:
            tcp += (f" ({_plural(self.tcp_gave_up, 'client')} gave up at its own timeout while TCP was "
                    "still retransmitting)").replace("clients gave up at its", "clients gave up at their")
        if not self.udp_clients:
            return tcp + "."
        timeouts = "" if not self.udp_timeouts else f" ({_plural(self.udp_timeouts, 'timeout')})"
        if not self.udp_lost:
            udp = (f"UDP lost none of its {self.udp_clients} answers this time: luck, nothing in UDP would "
                   "have noticed a loss")
        elif self.udp_retries:
            udp = (f"UDP lost {self.udp_lost} of {self.udp_clients} answers; only the clients' own retries "
                   f"({_plural(self.udp_retries, 'attempt')} more) tried again{timeouts}")
        else:
            udp = (f"UDP lost {self.udp_lost} of {self.udp_clients} answers and nobody noticed but the "
                   f"client's timeout{timeouts}")
        return f"{tcp}; {udp}."


def _ints(results: list[dict], key: str) -> int | None:
    values = [r.get(key) for r in results]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    return sum(values)


def lossy_round(loss: float, tcp_lossy: ProtoSummary, tcp_clean: ProtoSummary | None,
                tcp_run: dict | None, udp_run: dict | None) -> LossyRound:
    """The lossy round's figures: ``tcp_lossy``/``tcp_clean`` from the captures of the lossy and the clean
    TCP hour, ``*_run`` the runs' results (run.json's ``run`` of each hour)."""
    tcp_results = (tcp_run or {}).get("results", [])
    clients = len(tcp_results) or tcp_lossy.conversations - tcp_lossy.refused
    answered = sum(1 for r in tcp_results if r.get("ok")) if tcp_results else tcp_lossy.answered
    per = max(clients, 1)
    extra = None
    if tcp_clean is not None and tcp_clean.conversations and tcp_lossy.conversations:
        extra = tcp_lossy.packets / tcp_lossy.conversations - tcp_clean.packets / tcp_clean.conversations
    gave_up = sum(1 for r in tcp_results if not r.get("ok") and "timed out" in str(r.get("error") or ""))
    udp_results = (udp_run or {}).get("results", [])
    attempts = _ints(udp_results, "attempts")
    return LossyRound(
        loss=loss, tcp_clients=clients, tcp_answered=answered, extra_packets=extra,
        resent_per_client=tcp_lossy.retransmissions / per,
        resent_ms_per_client=tcp_lossy.retransmission_ms / per,
        tcp_gave_up=gave_up, udp_clients=len(udp_results),
        udp_lost=sum(1 for r in udp_results if not r.get("ok")), udp_timeouts=_ints(udp_results, "timeouts"),
        udp_retries=0 if attempts is None else max(0, attempts - len(udp_results)))
