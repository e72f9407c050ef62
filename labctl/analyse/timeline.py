"""The timeline of all clients at once: one lane per client, the server's lane on top, every packet of the
capture on one time axis, and the measured spread (first to last client's first packet) marked.

Packets from a client are drawn as ▲ above its lane's line (towards the server), packets from the server
as ▼ below it; the server's lane repeats every packet, so the burst of the instant shows at a glance.
Shapes, not only colours, tell directions apart, so it prints in black and white.
"""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from labctl.analyse.model import Analysis, Conversation

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
LEFT = 190        # lane names to the left of the axis
RIGHT = 40
LANE = 62         # px per lane
TOP = 64
WIDTH = 1100
UP, DOWN = "#1f4e9a", "#a23b00"


@dataclass(frozen=True)
class Mark:
    """One packet on the timeline: absolute time, client address, direction, short label."""

    t: float
    client: str
    from_client: bool
    label: str


def _ip(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0].strip("[]")


def marks(convs: list[Conversation]) -> list[Mark]:
    """Every packet of ``convs`` that kept its ladder, on one absolute time axis."""
    out = []
    for c in convs:
        for p in c.ladder or []:
            out.append(Mark(c.start + p.t_ms / 1000.0, _ip(c.client), p.from_client, p.label))
    return sorted(out, key=lambda m: m.t)


def spread_ms(convs: list[Conversation]) -> float | None:
    """First to last client's first packet, in ms (None with fewer than two clients)."""
    first: dict[str, float] = {}
    for c in convs:
        ip = _ip(c.client)
        first[ip] = min(first.get(ip, c.start), c.start)
    return (max(first.values()) - min(first.values())) * 1000.0 if len(first) > 1 else None


def _t(x: float, y: float, text: str, size: int = 13, anchor: str = "middle", weight: str = "normal",
       fill: str = "#000") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-family="{FONT}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(text)}</text>')


def _nice_step(span_ms: float) -> float:
    for step in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if span_ms / step <= 10:
            return step
    return 10000.0


def timeline_svg(analysis: Analysis, names: dict[str, str] | None = None, title: str = "") -> str:
    """The SVG timeline of ``analysis`` (``names``: address -> node name for the lane labels)."""
    names = names or {}
    convs = [c for c in analysis.conversations() if c.ladder is not None]
    ms = marks(convs)
    clients = sorted({m.client for m in ms}, key=lambda ip: (names.get(ip, "~" + ip), ip))
    height = TOP + LANE * (len(clients) + 1) + 56
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" role="img" class="timeline">',
             '<rect width="100%" height="100%" fill="#fff"/>']
    if title:
        parts.append(_t(WIDTH / 2, 22, title, 16, weight="bold"))
    if not ms:
        parts.append(_t(WIDTH / 2, TOP + 20, "no packets in this capture", 14, fill="#a00"))
        return "\n".join(parts) + "</svg>\n"
    t0 = ms[0].t
    span = max((ms[-1].t - t0) * 1000.0, 0.05)
    plot = WIDTH - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + (t - t0) * 1000.0 / span * plot

    lanes = {"server": TOP + LANE * 0.5}
    for i, ip in enumerate(clients):
        lanes[ip] = TOP + LANE * (i + 1.5)
    bottom = TOP + LANE * (len(clients) + 1)
    step = _nice_step(span)
    k = 0
    while k * step <= span + 1e-9:
        gx = LEFT + k * step / span * plot
        parts.append(f'<line x1="{gx:.1f}" y1="{TOP - 6}" x2="{gx:.1f}" y2="{bottom}" stroke="#ddd"/>')
        parts.append(_t(gx, bottom + 18, f"{k * step:g}", 12, fill="#333"))
        k += 1
    parts.append(_t(LEFT + plot / 2, bottom + 38, "ms since the capture's first packet", 12, fill="#333"))
    server = names.get(_ip(convs[0].server), "server") if convs else "server"
    for key, y in lanes.items():
        label = f"{server} (server)" if key == "server" else f"{names.get(key, key)}  {key}"
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot}" y2="{y:.1f}" stroke="#000" '
                     f'stroke-width="{2 if key == "server" else 1.2}"/>')
        parts.append(_t(LEFT - 10, y + 4, label, 13, anchor="end",
                        weight="bold" if key == "server" else "normal"))
    for m in ms:
        for key in ("server", m.client):
            y, px = lanes[key], x(m.t)
            if m.from_client:
                pts = f"{px - 5:.1f},{y - 3:.1f} {px + 5:.1f},{y - 3:.1f} {px:.1f},{y - 13:.1f}"
                fill = UP
            else:
                pts = f"{px - 5:.1f},{y + 3:.1f} {px + 5:.1f},{y + 3:.1f} {px:.1f},{y + 13:.1f}"
                fill = DOWN
            parts.append(f'<polygon points="{pts}" fill="{fill}"><title>{escape(m.label)} '
                         f'{(m.t - t0) * 1000:.3f} ms</title></polygon>')
    # the first packet of each client: the instant as the wire saw it, and the spread between them
    first = {ip: min(m.t for m in ms if m.client == ip) for ip in clients}
    sp = spread_ms(convs)
    if sp is not None:
        a, b = x(min(first.values())), x(max(first.values()))
        y = TOP - 14
        parts.append(f'<rect x="{a:.1f}" y="{TOP - 4}" width="{max(b - a, 1.5):.1f}" '
                     f'height="{bottom - TOP + 4}" '
                     'fill="#ffd54f" fill-opacity="0.35"/>')
        parts.append(f'<line x1="{a:.1f}" y1="{y}" x2="{max(b, a + 1.5):.1f}" y2="{y}" stroke="#000" '
                     'stroke-width="2"/>')
        parts.append(_t(min(a + 6, LEFT + plot - 150), y - 6, f"spread {sp:.2f} ms (first packet of "
                        f"each client)", 13, anchor="start", weight="bold"))
    parts.append(_t(LEFT, height - 6, "▲ client → server    ▼ server → client", 12, anchor="start",
                    fill="#333"))
    return "\n".join(parts) + "</svg>\n"
