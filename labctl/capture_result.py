"""What a capture hands back: per capture point what tcpdump counted, what came home, its clock."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.capture_clock import ClockNote
from labctl.tcpdump import TcpdumpStats

if TYPE_CHECKING:  # types only
    from labctl.analyse.model import Analysis
    from labctl.run import RunResult

STOPPED = {"run": "the run ended", "duration": "--duration elapsed", "ctrl-c": "stopped by Ctrl-C",
           "size": "the size bound was reached", "reader": "the reader of stdout went away",
           "vanished": "a tcpdump ended by itself"}


@dataclass
class NodeResult:
    """What one capture point saw: tcpdump's counts, the packets that came home, its clock."""

    node: str
    address: str
    interface: str
    stats: TcpdumpStats | None
    packets: int
    clock: ClockNote
    remote_file: str
    kept_remote: bool = False     # the node's copy is still there (home does not hold all of it)

    def to_json(self) -> dict:
        s = self.stats
        return {"node": self.node, "address": self.address, "interface": self.interface,
                "packets": self.packets, "remote_file": self.remote_file if self.kept_remote else None,
                "stats": None if s is None else {"captured": s.captured, "received": s.received,
                                                 "dropped": s.dropped},
                "clock": self.clock.to_json()}


@dataclass
class CaptureResult:
    """A finished capture: where it is, what each tcpdump counted, what the analysis read back."""

    path: Path
    nodes: list[NodeResult]
    ports: list[int]
    seconds: float
    stopped_by: str = "run"
    run: RunResult | None = None         # what ``during`` returned: the triggered run (capture --run)
    analysis: Analysis | None = None     # what ``analyse`` made of the file
    summary: dict = field(default_factory=dict)
    arm_seconds: float = 0.0             # from the first exec to the last "listening on"
    notes: list[str] = field(default_factory=list)   # what the user should know (not failures)

    @property
    def interrupted(self) -> bool:
        return self.stopped_by == "ctrl-c"

    @property
    def node(self) -> str:
        return ", ".join(n.node for n in self.nodes)

    @property
    def interface(self) -> str:
        return self.nodes[0].interface

    @property
    def stats(self) -> TcpdumpStats | None:
        """One node: tcpdump's counts. Several: their sums."""
        got = [n.stats for n in self.nodes if n.stats is not None]
        if len(got) != len(self.nodes):
            return None
        return TcpdumpStats(*(sum(getattr(s, k) for s in got) for k in ("captured", "received", "dropped")))

    def to_json(self) -> dict:
        s = self.stats
        return {"path": str(self.path), "node": self.node, "interface": self.interface, "ports": self.ports,
                "stats": None if s is None else {"captured": s.captured, "received": s.received,
                                                 "dropped": s.dropped},
                "nodes": [n.to_json() for n in self.nodes],
                "seconds": round(self.seconds, 3), "arm_seconds": round(self.arm_seconds, 3),
                "interrupted": self.interrupted, "stopped_by": self.stopped_by, "notes": self.notes,
                "summary": self.summary,
                "run": self.run.to_json() if self.run is not None else None}
