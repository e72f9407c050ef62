"""What a triggered run brings back: one :class:`ClientResult` per client node, in a :class:`RunResult`.

Every client is started by ``startat.py``, whose last stderr line is ``startat-timings: {json}``
(launcher start, ready, exec, end, exit, timed_out, ...; see scripts/startat.py); its own error is a
``startat: ...`` line. The client's stdout is its reply. The built-in client (``timeclient.py
--json``) also reports its own timings (connected, first byte, done), and its reply as JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

LATE_MS = 100.0  # the built-in client's wake-up delay above which it counts as not asleep in time
SAFETY = 1.3     # (shown in the late message; run.py's lead factor)
TIMING_KEYS = ("start", "ready", "execve", "exec", "end", "late_ms")  # kept from startat's timings
MAX_TEXT = 1 << 20  # characters of a client's stdout/stderr kept


@dataclass
class ClientResult:
    """One client node's outcome: its reply, or why it has none."""

    node: str
    address: str
    ok: bool
    reply: str | None = None
    error: str | None = None
    stderr: str = ""
    exit: int | None = None
    timings: dict[str, float] = field(default_factory=dict)   # epoch seconds (and *_ms)
    late_ms: float | None = None
    timed_out: bool = False
    attempts: int | None = None      # attempts the client made (None: unknown: a program not labctl's)
    timeouts: int | None = None      # of them, how many timed out (None: unknown)
    attempt_log: list[str] | None = None  # how each attempt ended: ok, timeout, refused, ... (built-in only)
    woke_late: bool = False          # the built-in client was not asleep at the instant (see ``warning``)
    warning: str | None = None       # answered, but not as asked: e.g. it woke after the instant

    @property
    def retries(self) -> int | None:
        """Attempts after the first (None: unknown)."""
        return None if self.attempts is None else max(0, self.attempts - 1)

    def ms(self, what: str) -> float | None:
        """Milliseconds from the program's start at the instant (``exec``) to ``what``."""
        start, t = self.timings.get("exec"), self.timings.get(what)
        if start is None or t is None:
            return None
        return (t - start) * 1000.0

    def to_json(self) -> dict:
        timings = dict(self.timings)
        for what, key in (("connected", "connect_ms"), ("first_byte", "first_byte_ms"), ("done", "total_ms")):
            value = self.ms(what)
            if value is not None:
                timings[key] = round(value, 3)
        if self.late_ms is not None:
            timings["late_ms"] = round(self.late_ms, 3)
        if "ready" in self.timings and "execve" in self.timings:  # what exec costs: to its first network call
            timings["startup_ms"] = round((self.timings["ready"] - self.timings["execve"]) * 1000.0, 3)
        unknown = "unknown"   # a program labctl did not write: it does not say, and labctl does not guess
        return {"node": self.node, "address": self.address, "ok": self.ok, "reply": self.reply,
                "stderr": self.stderr, "exit": self.exit, "timings": timings, "error": self.error,
                "warning": self.warning,
                "attempts": unknown if self.attempts is None else self.attempts,
                "retries": unknown if self.retries is None else self.retries,
                "timeouts": unknown if self.timeouts is None else self.timeouts,
                "attempt_log": unknown if self.attempt_log is None else list(self.attempt_log)}


@dataclass
class RunResult:
    """One triggered run over all client nodes."""

    program: str
    server: str
    port: int
    start_at: float
    lead: float
    results: list[ClientResult]
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def protocol(self) -> str:
        """(the name older callers use: the built-in programs are named for their protocol)"""
        return self.program

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results) and not self.interrupted

    @property
    def spread_ms(self) -> float | None:
        """First to last client start (``exec``: let go at the instant), by the nodes' clocks."""
        starts = [r.timings["exec"] for r in self.results if "exec" in r.timings]
        if len(starts) < 2:
            return 0.0 if starts else None
        return (max(starts) - min(starts)) * 1000.0

    def to_json(self) -> dict:
        spread = self.spread_ms
        return {"program": self.program, "protocol": self.program, "server": self.server, "port": self.port,
                "results": [r.to_json() for r in self.results],
                "spread_ms": None if spread is None else round(spread, 3),
                "start_at": round(self.start_at, 6), "lead_ms": round(self.lead * 1000.0, 1),
                "interrupted": self.interrupted}


def split_launcher(stderr: str) -> tuple[dict, str | None, str]:
    """(startat's timings, startat's own error line, the program's stderr) from the launcher's stderr."""
    timings: dict = {}
    error = None
    kept = []
    for line in stderr.splitlines():
        if line.startswith("startat-timings: "):
            try:
                value = json.loads(line.split(": ", 1)[1])
                timings = value if isinstance(value, dict) else {}
            except ValueError:
                pass
        elif line.startswith("startat: ") and error is None:
            error = line[len("startat: "):].strip()
        else:
            kept.append(line)
    return timings, error, "\n".join(kept)


def _numbers(data: dict, keys=None) -> dict[str, float]:
    return {k: float(v) for k, v in data.items()
            if (keys is None or k in keys) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def parse_client(node: str, address: str, stdout: str, stderr: str, exited: int | None, *,
                 start_at: float, builtin: bool, timeout: float) -> ClientResult:
    """One client's outcome from what came back over SSH: the launcher's stderr, the program's output."""
    launch, launcher_error, program_stderr = split_launcher(stderr)
    timings = _numbers(launch, TIMING_KEYS)
    code = launch.get("exit") if isinstance(launch.get("exit"), int) else exited
    timed_out = bool(launch.get("timed_out")) or code == 124
    res = ClientResult(node, address, False, stderr=program_stderr[-MAX_TEXT:], exit=code, timings=timings,
                       timed_out=timed_out)
    reply = stdout.rstrip("\n")
    if builtin:
        return _builtin(res, reply, start_at, launcher_error, timeout)
    res.reply = reply[-MAX_TEXT:] if reply else None
    if "exec" in timings:  # (after the instant when its first network call came later: shown, not failed)
        res.late_ms = (timings["exec"] - start_at) * 1000.0
    if launcher_error and not timed_out:
        res.error = launcher_error
    elif timed_out:
        res.error = f"timed out: still running {timeout:g} s after the instant, killed (its process group)"
    elif code is None:
        res.error = "no exit status came back"
    elif code != 0:
        last = (program_stderr.strip().splitlines() or [""])[-1]
        res.error = f"exited with status {code}" + (f": {last}" if last else "")
    elif not launch:
        res.error = "the launcher reported nothing (startat-timings missing)"
    else:
        res.ok = True
    return res


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _attempts(data: dict) -> tuple[int | None, int | None, list[str] | None]:
    """(attempts, timeouts, how each attempt ended) from the built-in client's ``--json``; an older
    client that gave attempts but no log: timeouts unknown."""
    attempts = _count(data.get("attempts"))
    log = data.get("attempt_log")
    log = [str(x) for x in log] if isinstance(log, list) else None
    timeouts = _count(data.get("timeouts"))
    if timeouts is None and log is not None:
        timeouts = log.count("timeout")
    return attempts, timeouts, log


def _builtin(res: ClientResult, reply: str, start_at: float, launcher_error: str | None,
             timeout: float) -> ClientResult:
    """The built-in client's ``--json`` line: its reply, its timings, its own idea of late."""
    data = None
    for line in reversed(reply.splitlines()):
        try:
            data = json.loads(line)
            break
        except ValueError:
            continue
    launch = dict(res.timings)
    if not isinstance(data, dict):
        why = launcher_error or (f"timed out after {timeout:g} s, killed" if res.timed_out else None) or \
            (res.stderr.strip().splitlines() or reply.strip().splitlines() or [f"exit status {res.exit}"])[-1]
        res.error = f"client gave no result: {why}"
        return res
    own = _numbers(data.get("timings") or {})
    res.timings = {**{k: v for k, v in launch.items() if k in ("start", "execve", "end")},
                   **{k: v for k, v in own.items() if k != "start"}}
    first = own.pop("first_start", None)
    if isinstance(data.get("first_start"), (int, float)):
        first = float(data["first_start"])
    if first is not None or "start" in own:     # let go at the instant by its own --start-at: the first
        res.timings["exec"] = first if first is not None else own["start"]   # attempt's start
    res.attempts, res.timeouts, res.attempt_log = _attempts(data)
    late = data.get("late_ms")
    res.late_ms = float(late) if isinstance(late, (int, float)) else None
    ready = own.get("ready", data.get("ready"))
    if isinstance(ready, (int, float)):
        res.timings["ready"] = float(ready)
        is_late = ready > start_at
    else:
        is_late = data.get("late") if isinstance(data.get("late"), bool) else \
            res.late_ms is not None and res.late_ms > LATE_MS
    text = data.get("reply")
    if isinstance(text, list):
        text = " | ".join(str(r) for r in text)
    res.reply = None if text is None else str(text).rstrip("\n")
    res.ok = bool(data.get("ok")) and res.exit == 0
    if not res.ok:
        res.error = str(data.get("error") or launcher_error or f"client exited {res.exit}")
    elif is_late:  # its answer is real and kept; that it was not simultaneous is said, not hidden
        res.woke_late = True
        res.warning = (f"woke up {res.late_ms or 0:.1f} ms after the start instant (it was not asleep in "
                       f"time, so it did not start with the others; on a busy machine set "
                       f"LABCTL_LEAD_SAFETY above {SAFETY})")
    return res
