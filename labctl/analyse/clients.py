"""Per UDP client: did it get an answer, and how do we know.

Where a capture was taken decides what it can tell. On the client's own interface (``capture --nodes
all``) every datagram it sent is there, answered or not. On the server's only, a datagram lost before
the server is simply absent: the capture cannot tell "lost on the way in" from "never sent". Then the
run's results (``run.json``, ``labctl run --json``, ``labctl capture --run --json``) say what the client
itself saw: how many attempts, how many timed out, whether it got its reply. Combining the two tells
where an answer went missing: fewer datagrams at the server than the client sent (lost on the way in),
or the server's reply in the capture and none at the client (lost on the way back).
Plain data in, plain data out (analyse/ never imports the run's code).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from labctl.analyse.figures import UdpFigures, udp_figures, udp_rows
from labctl.errors import LabctlError

TYPE_CHECKING = False   # (typing is not imported at run time: it costs start-up time)
if TYPE_CHECKING:
    from labctl.analyse.conversations import Builder

KNOWN_MAX = 16384        # distinct figures remembered while counting
LISTED = 64              # clients the reports list one by one (of thousands: these, and counts)
MAX_RESULTS = 64 << 20   # bytes of a --results file read at most (a run of many clients is far smaller)
CLIENT_SIDE, RESULTS, CAPTURE_ONLY = "its own side of the capture", "the run's results", "the capture only"


class ResultsError(LabctlError):
    """A --results file that cannot be read as a run's results."""


@dataclass(slots=True)
class Seen:
    """What the capture holds of one client's UDP conversations."""

    requests: int = 0     # datagrams from the client (each opens an exchange)
    replies: int = 0      # exchanges the server answered


@dataclass
class Clients:
    """Every UDP client's verdict: the first ``LISTED`` one by one, and the counts over all of them."""

    listed: list[UdpClient]
    total: int = 0
    answered: int = 0

    def note(self) -> str:
        """What the reports say after the listed ones (empty when all are listed)."""
        if self.total <= len(self.listed):
            return ""
        return (f"(the first {len(self.listed)} of {self.total} UDP clients; {self.answered} of all "
                f"{self.total} got an answer; --json counts them)")


@dataclass
class UdpClient:
    """One UDP client's verdict."""

    address: str
    node: str | None
    answered: bool
    source: str                    # CLIENT_SIDE, RESULTS or CAPTURE_ONLY
    requests_seen: int
    replies_seen: int
    attempts: int | None = None    # from the run's results (None: not given, or a program that does not say)
    timeouts: int | None = None
    why: str = ""

    def sentence(self) -> str:
        who = f"{self.node} {self.address}" if self.node else self.address
        verdict = "got an answer" if self.answered else "got NO answer"
        if self.source == CAPTURE_ONLY and 0 < self.replies_seen < self.requests_seen:
            verdict = f"got answers to {self.replies_seen} of its {self.requests_seen} requests"
        return f"{who}: {verdict}" + (f" ({self.why})" if self.why else "") + f" [from {self.source}]"

    def to_json(self) -> dict:
        return {"address": self.address, "node": self.node, "answered": self.answered, "source": self.source,
                "requests_seen": self.requests_seen, "replies_seen": self.replies_seen,
                "attempts": "unknown" if self.attempts is None else self.attempts,
                "timeouts": "unknown" if self.timeouts is None else self.timeouts, "why": self.why}


def exchange_counts(fig: UdpFigures) -> tuple[int, int]:
    """(requests, answered exchanges) of one conversation's figures."""
    ex = fig.exchanges
    return sum(e[0] is not None for e in ex), sum(e[2] is not None for e in ex)


def see(seen: dict[str, Seen], client: str, counts: tuple[int, int]) -> None:
    """Add one conversation's ``exchange_counts`` to its client's."""
    s = seen.get(client)
    if s is None:
        s = seen[client] = Seen()
    s.requests += counts[0]
    s.replies += counts[1]


def seen_per_client(b: Builder) -> dict[str, Seen]:
    """Client address -> what the capture holds of its UDP conversations (``summary.totals`` and
    ``json_report.write_lines`` count the same on their way through the conversations)."""
    out: dict[str, Seen] = {}
    known: dict[tuple, tuple[int, int]] = {}     # figures repeat: read each distinct one once
    for ca, _cp, _sa, _sp, _t0, k in udp_rows(b):
        counts = known.get(k)
        if counts is None:
            if len(known) >= KNOWN_MAX:
                known.clear()
            counts = known[k] = exchange_counts(udp_figures(k))
        see(out, ca, counts)
    return out


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _order(addr: str) -> tuple:
    """IPv4 first, then IPv6, each in numeric order."""
    import socket

    for n, family in ((0, socket.AF_INET), (1, socket.AF_INET6)):
        try:
            return (n, socket.inet_pton(family, addr.strip("[]")), addr)
        except OSError:
            continue
    return (2, b"", addr)


def udp_clients(seen: dict[str, Seen], run: dict | None = None, captured: set[str] | None = None,
                limit: int = LISTED) -> Clients:
    """Every UDP client's verdict (``seen``: ``seen_per_client``): from its own side of the capture when
    it was captured (``captured``: the node names a ``capture --nodes`` covered), else from the run's
    results (``run``: a RunResult's JSON) when given, else from the capture as it is."""
    seen = dict(seen)
    results = [r for r in (run or {}).get("results", []) if isinstance(r, dict) and r.get("address")]
    udp_run = (run or {}).get("protocol") == "udp" or any(r["address"] in seen for r in results)
    out: list[UdpClient] = []
    for r in results if udp_run else []:
        addr, node = str(r["address"]), r.get("node")
        s = seen.pop(addr, Seen())
        attempts, timeouts = _count(r.get("attempts")), _count(r.get("timeouts"))
        tries = ("" if attempts is None else _plural(attempts, "attempt")) + \
            ("" if not timeouts else f", {timeouts} timed out")
        if captured is not None and node in captured:
            answered, source = s.replies > 0, CLIENT_SIDE
            # (a capture of several nodes holds a datagram once per node that saw it: no counts here)
            why = ("its own interface saw the reply" if answered else "no reply reached its own interface") \
                + (f"; {tries}" if tries else "")
            if answered != bool(r.get("ok")):
                why += f"; its own result says {'ok' if r.get('ok') else r.get('error')}"
        else:
            answered, source = bool(r.get("ok")), RESULTS
            why = tries
            if not answered:
                why = _lost_where(s, attempts, why, r.get("error"))
        out.append(UdpClient(addr, node, answered, source, s.requests, s.replies, attempts, timeouts,
                             why.strip(", ")))
    total = len(out) + len(seen)
    answered = sum(c.answered for c in out) + sum(s.replies > 0 for s in seen.values())
    out = out[:limit]
    import heapq

    for addr in heapq.nsmallest(max(0, limit - len(out)), seen, key=_order):
        s = seen[addr]
        why = f"{_plural(s.requests, 'datagram')} seen, {s.replies} answered"
        if s.replies < s.requests:
            why += ("; a datagram lost before the capture point is not in it: --results RUN.json "
                    "tells what the client saw")
        out.append(UdpClient(addr, None, s.replies > 0, CAPTURE_ONLY, s.requests, s.replies, why=why))
    return Clients(out, total, answered)


def _lost_where(s: Seen, attempts: int | None, tries: str, error: object) -> str:
    """Why a client got no answer, as far as the server's capture and the client's attempts tell."""
    if attempts is not None and s.requests < attempts:
        where = (f"the server's capture holds {s.requests} of its {attempts} datagrams: "
                 f"{attempts - s.requests} lost on the way to the server")
    elif s.replies:
        where = f"the server answered {s.replies}: the answer was lost on the way back"
    else:
        where = str(error or "no reply")
    return f"{tries}; {where}; nobody but the client's timeout noticed" if tries else where


def load_results(path: Path, pcap: str | None = None) -> tuple[dict | None, set[str] | None]:
    """(the run's results, the nodes captured or None) from a ``labctl run --json`` line, a ``labctl
    capture --json`` document or an exercise's run.json (the hour whose pcap is ``pcap``)."""
    try:
        if not path.is_file():   # (a device or FIFO could be read for ever: /dev/zero)
            raise ResultsError(f"--results {path}: not a file" if path.exists() else
                               f"--results {path}: no such file")
        with path.open("rb") as f:
            raw = f.read(MAX_RESULTS + 1)
        if len(raw) > MAX_RESULTS:
            raise ResultsError(f"--results {path}: more than {MAX_RESULTS >> 20} MiB: not a run's results")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"--results {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines):
            raise ResultsError(f"--results {path}: {len(lines)} runs (labctl run --repeat); keep the "
                               "line of the run this capture saw") from None
        raise ResultsError(f"--results {path}: not JSON (give the output of labctl run --json, labctl "
                           "capture --run --json, or an exercise's run.json)") from None
    if isinstance(doc, dict) and isinstance(doc.get("hours"), list):
        name = Path(pcap).name if pcap else None
        hours = [h for h in doc["hours"] if isinstance(h, dict) and h.get("pcap")
                 and Path(str(h["pcap"])).name == name]
        if not hours:
            raise ResultsError(f"--results {path}: no hour of this exercise captured {name}")
        hour = hours[0]
        cap = hour.get("capture") or {}
        return hour.get("run"), {cap["node"]} if cap.get("node") else None
    if isinstance(doc, dict) and "results" in doc:
        return doc, None
    if isinstance(doc, dict) and "nodes" in doc and "run" in doc:
        nodes = {n.get("node") for n in doc.get("nodes") or [] if isinstance(n, dict)}
        return doc.get("run"), nodes or None
    raise ResultsError(f"--results {path}: neither a run's results nor a capture's or an exercise's JSON")
