"""How far a capture point's clock may be from labctl's, and whether its timestamps are corrected.

Each node's tcpdump exec first prints the node's clock and kernel boot id (:mod:`labctl.tcpdump`). A
node on this machine's kernel (a namespace) shares this machine's clock: nothing to measure. Elsewhere
(a VM, an SSH host) the node's clock was read somewhere between labctl sending the exec and receiving
the line, so its offset lies in an interval; only when that interval excludes zero is a correction
applied (its middle, as ``run`` does for start instants), and the output says so either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labctl.tcpdump import Clock

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def local_boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class ClockNote:
    """``same``: this machine's clock; ``within``: not told from ours, ±uncertainty; ``corrected``:
    off by ``offset_s`` (±uncertainty), timestamps shifted back by it; ``unknown``: not probed."""

    kind: str
    offset_s: float = 0.0
    uncertainty_s: float = 0.0

    @property
    def correction_ns(self) -> int:
        return -round(self.offset_s * 1e9) if self.kind == "corrected" else 0

    @property
    def comment(self) -> str:
        """The note on the node's pcapng interface."""
        return f"clock: {self.text}"

    @property
    def text(self) -> str:
        if self.kind == "same":
            return "this machine's (same kernel), no correction needed"
        if self.kind == "within":
            return f"within ±{self.uncertainty_s * 1000:.1f} ms of this machine's, not corrected"
        if self.kind == "corrected":
            way = "ahead of" if self.offset_s > 0 else "behind"
            return (f"{abs(self.offset_s):.6f} s {way} this machine's (±{self.uncertainty_s * 1000:.1f} ms): "
                    f"timestamps corrected by {-self.offset_s:+.6f} s")
        return "not probed: timestamps as the node gave them"

    def to_json(self) -> dict:
        return {"kind": self.kind, "offset_s": round(self.offset_s, 9),
                "uncertainty_ms": round(self.uncertainty_s * 1000, 3), "correction_ns": self.correction_ns}


def judge_clock(clock: Clock | None, local_boot: str | None) -> ClockNote:
    """What to say of (and do with) one node's clock."""
    if clock is None:
        return ClockNote("unknown")
    if local_boot and clock.boot_id == local_boot:
        return ClockNote("same")
    low, high = clock.offset_range
    if low <= 0.0 <= high:
        return ClockNote("within", 0.0, max(-low, high))
    return ClockNote("corrected", (low + high) / 2.0, (high - low) / 2.0)
