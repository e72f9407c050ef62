"""The lab drawing: the bridge as a line, every node a box hanging from it, with its name, address,
role and the programs deployed there; the backend and subnet in the caption. From plain data only."""
from __future__ import annotations

from xml.sax.saxutils import escape

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Consolas, monospace"
BOX_W, BOX_H, GAP = 230, 100, 26


def _t(x: float, y: float, text: str, size: int = 13, weight: str = "normal", family: str = FONT,
       fill: str = "#000") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-family="{family}" font-size="{size}" text-anchor="middle" '
            f'font-weight="{weight}" fill="{fill}">{escape(text)}</text>')


def _wrap(words: list[str], width: int) -> list[str]:
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 2 + len(w) <= width:
            lines[-1] += ", " + w
        else:
            lines.append(w)
    return lines


def lab_svg(lab: dict) -> str:
    """``lab``: {"name", "backend", "subnet", "ports", "nodes": [{"name", "role", "address", "programs"}]}."""
    nodes = lab.get("nodes", [])
    width = max(len(nodes), 1) * (BOX_W + GAP) + GAP
    height = 250
    bus = 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" class="labdrawing">',
             '<rect width="100%" height="100%" fill="#fff"/>',
             _t(width / 2, 24, f"lab {lab.get('name', '?')} — {lab.get('backend', '?')} backend, "
                f"subnet {lab.get('subnet', '?')}, isolated (no route out)", 15, "bold"),
             f'<line x1="{GAP}" y1="{bus}" x2="{width - GAP}" y2="{bus}" stroke="#000" stroke-width="4"/>',
             _t(width / 2, bus - 10, "lab bridge", 12, fill="#444")]
    for i, n in enumerate(nodes):
        x = GAP + i * (BOX_W + GAP)
        cx = x + BOX_W / 2
        server = n.get("role") == "server"
        parts.append(f'<line x1="{cx}" y1="{bus}" x2="{cx}" y2="{bus + 40}" stroke="#000" stroke-width="2"/>')
        parts.append(f'<rect x="{x}" y="{bus + 40}" width="{BOX_W}" height="{BOX_H}" rx="8" '
                     f'fill="{"#fff3c4" if server else "#e8f0fb"}" stroke="#000" stroke-width="1.6"/>')
        parts.append(_t(cx, bus + 62, f"{n.get('name')} ({n.get('role')})", 14, "bold"))
        parts.append(_t(cx, bus + 82, str(n.get("address")), 13, family=MONO))
        lines = _wrap(n.get("programs", []) or ["no programs"], 30)
        if server:
            p = lab.get("ports", {})
            lines.append(f"TCP+UDP {p.get('tcp')}, line protocol {p.get('proto')}")
        for k, line in enumerate(lines[:3]):
            parts.append(_t(cx, bus + 100 + 14 * k, line, 11, fill="#333"))
    parts.append(_t(width / 2, height - 12, "every client calls the server at the same instant; tcpdump "
                    "captures on the server's lab interface", 12, fill="#333"))
    return "\n".join(parts) + "</svg>\n"
