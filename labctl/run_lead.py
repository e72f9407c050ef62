"""The lead of a run: how long before the start instant the clients are launched, from a measurement
of every client node taken just before (all nodes at once, under the contention the real start will
see), never a constant.

The measurement is one command per client node: its clock, a start of the launcher (a Python start:
what an interpreted client costs too), its clock again, and for the built-in client a start of it;
its round trip is the node's start cost. ``lead = SAFETY x slowest + MARGIN`` (SAFETY from
``LABCTL_LEAD_SAFETY`` on a machine whose load comes in bursts). The clocks read there also tell
whether a node's clock is off by more than the round trip (VMs without NTP).
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from labctl.deploy import CLIENT_PROGRAM, LAUNCHER, PYTHON, REMOTE_DIR
from labctl.errors import LabctlError
from labctl.run_result import SAFETY

MARGIN = 0.02          # s: slack for jitter, not the cost itself
MAX_LEAD = 30.0        # s: beyond this something is wrong with a node; refuse rather than wait
# What the launcher and the built-in client import: a start of either costs about this Python start
# when its file is not on the node yet (deploy copies it while the node is measured).
LAUNCHER_IMPORTS = "ctypes, fcntl, os, select, signal, struct, sys, time"
CLIENT_IMPORTS = "argparse, json, re, socket, struct, sys, time"


class RunError(LabctlError):
    """The run could not be started at all (no client reachable, bad options)."""


def measure_script(remote_dir: str = REMOTE_DIR, builtin: bool = False) -> str:
    """What a client node runs to be measured: its clock, a start of the launcher, its clock again;
    for the built-in client also a start of it; its clock at the end (what the script took there
    narrows when the first reading was taken). A file not there yet is stood in for by a Python
    start with its imports."""
    py = " ".join(PYTHON)

    def start(name: str, imports: str) -> str:
        path = shlex.quote(f"{remote_dir}/{name}")
        stand_in = shlex.quote("import " + imports)
        return f"if [ -f {path} ]; then {py} {path} --help; else {py} -c {stand_in}; fi > /dev/null 2>&1; "

    script = f"date +%s.%N; {start(LAUNCHER, LAUNCHER_IMPORTS)}date +%s.%N; "
    if builtin:
        script += start(CLIENT_PROGRAM, CLIENT_IMPORTS)
    return script + "date +%s.%N"


def parse_measure(stdout: str, cost: float) -> tuple[float | None, float, float]:
    """(the node's clock when it began, one Python start there, what the node spent after its first
    reading; seconds) from the script's output; a start it could not time is the whole ``cost``."""
    stamps = []
    for word in stdout.split():
        try:
            stamps.append(float(word))
        except ValueError:
            continue
    remote = stamps[0] if stamps else None
    python = stamps[1] - stamps[0] if len(stamps) > 1 else cost
    # the first reading was taken at least what the rest of the script took there before `after`:
    # on a slow VM that is seconds, which would hide a clock seconds off inside the probe's interval
    rest = stamps[-1] - stamps[0] if len(stamps) > 2 else 0.0
    return remote, max(python, 0.0), rest


def safety() -> float:
    """SAFETY, or ``LABCTL_LEAD_SAFETY`` from the environment (a machine shared with heavy jobs has
    load bursts that can triple a node's start time between the measurement and the run)."""
    raw = os.environ.get("LABCTL_LEAD_SAFETY")
    if not raw:
        return SAFETY
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 1.0 <= value <= 100.0:
        raise RunError(f"LABCTL_LEAD_SAFETY={raw!r}: use a factor between 1 and 100 (default {SAFETY})")
    return value


def choose_lead(costs: Sequence[float]) -> float:
    """The lead before the start instant, from each node's measured start (seconds)."""
    if not costs:
        raise RunError("no client node could be measured")
    lead = safety() * max(costs) + MARGIN
    if lead > MAX_LEAD:
        raise RunError(f"starting a client takes {max(costs):.1f} s on the slowest node: too slow to "
                       "trigger at one instant (is a node overloaded?)")
    return lead


def clock_offset(before: float, after: float, remote: float | None, rest: float = 0.0) -> float:
    """The node clock's offset from ours, or 0.0 when the probe cannot tell it from zero.

    ``remote`` was read on the node somewhere between ``before`` and ``after`` (our clock), and the
    node worked ``rest`` seconds more after reading it before it answered, so the true offset lies in
    ``[remote - (after - rest), remote - before]``. Only when that interval excludes zero (a VM whose
    clock is off by more than the round trip) is a correction applied.
    """
    if remote is None:
        return 0.0
    if not 0.0 <= rest <= after - before:  # a node clock that jumped or races: do not narrow
        rest = 0.0
    low, high = remote - (after - rest), remote - before
    if low <= 0.0 <= high:
        return 0.0
    return (low + high) / 2.0
