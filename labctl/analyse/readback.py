"""What ``labctl capture`` says about the pcap it brought home: read back, per protocol and per client."""
from __future__ import annotations

import os
from pathlib import Path

from labctl.analyse.conversations import DEFAULT_DETAIL, build
from labctl.analyse.figures import tcp_figures, tcp_rows, udp_figures, udp_rows
from labctl.analyse.model import Analysis
from labctl.analyse.points import count_points


def read_back(path: Path, detail: int = DEFAULT_DETAIL) -> tuple[Analysis, dict]:
    """Read the pcap back: its analysis, and ``{"packets", "protocols": {proto: packets}, "clients":
    {ip: {proto: conversations}}, "spread_ms", "open", "warnings"}``.

    ``spread_ms``: first to last client's first packet (its SYN, or its first datagram): the spread
    of a triggered run as the wire saw it. ``open``: TCP conversations that did not close. The counts
    are per sighting (a packet counts once at every capture point that saw it); the analysis of a
    capture of several points is that of ``multinode.analyse_captures`` (each packet once).
    Raises ``CaptureFileError`` (a ``LabctlError``) when the file does not read back.
    """
    builder, info = build(path, detail)
    analysis = Analysis(str(path), info, builder)
    seconds = builder.times.seconds
    protocols: dict[str, int] = {}
    clients: dict[str, dict[str, int]] = {}
    first: dict[str, float] = {}
    still_open = 0
    for proto, rows, read in (("tcp", tcp_rows(builder, exact=False), tcp_figures),
                              ("udp", udp_rows(builder), udp_figures)):
        for ip, _port, _sip, _sport, t0, k in rows:
            fig = read(k)
            protocols[proto] = protocols.get(proto, 0) + fig.packets
            ip = ip.strip("[]")
            per = clients.setdefault(ip, {})
            per[proto] = per.get(proto, 0) + 1
            start = seconds(t0)
            first[ip] = min(first.get(ip, start), start)
            if proto == "tcp" and fig.closed_by is None:
                still_open += 1
    other = analysis.packets - sum(protocols.values())
    if other:
        protocols["other"] = other
    spread = (max(first.values()) - min(first.values())) * 1000.0 if len(first) > 1 else None
    summary = {"packets": analysis.packets, "protocols": protocols, "clients": clients,
               "spread_ms": None if spread is None else round(spread, 3), "open": still_open,
               "warnings": list(analysis.warnings)}
    if isinstance(path, (str, os.PathLike)) and count_points(path) > 1:  # several nodes: each packet once
        from labctl.analyse.multinode import analyse_captures

        analysis = analyse_captures([path], detail)
    return analysis, summary
