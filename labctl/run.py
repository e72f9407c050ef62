"""Run: start the time client on every client node at the same instant, gather replies and timings.

Why a start time and not a fast fan-out: whatever starts the clients (Fabric threads, a barrier, a
bash loop of ``ssh … &``) pays an SSH exec plus a Python start per node *after* the trigger, and those
costs vary by tens of milliseconds. Instead every client gets ``--start-at T``: it starts, resolves the
server's address, creates its socket, then sleeps until ``T`` and only then sends. All that is needed
is a lead long enough for every client to be asleep before ``T``; it is derived from a measurement
taken just before (one round trip per node that also times a Python start there, all nodes at once,
so it sees the same contention the real start will), never a constant.

Written against :class:`~labctl.remote.Group` and the inventory only.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labctl.deploy import CLIENT_PROGRAM, REMOTE_DIR, NodeDeploy, ensure, ports_of
from labctl.errors import LabctlError
from labctl.inventory import Host, Inventory
from labctl.lab import Ports
from labctl.remote import Connection, Group, reason

PROTOCOLS = ("tcp", "udp", "proto", "time")
DEFAULT_SEND = {"proto": ("GET TIME", "SAY HI")}

# The lead: SAFETY x the slowest node's measured (exec + Python start) + MARGIN. Both are slack for
# jitter, not the cost itself: the cost is measured on every run, under the same contention (all
# nodes at once). The measurement starts the client program itself (``--help``: Python's start, the
# script compiled, its imports); the real start also resolves the address and makes a socket, within a
# few ms of that. (A bare ``python3 -c 'import ...'`` measures too little: under bursty load clients
# then woke up late.)
SAFETY = 1.3
MARGIN = 0.02          # s
MAX_LEAD = 30.0        # s: beyond this something is wrong with a node; refuse rather than wait
# A client is "late" (a failure) when it was not yet asleep when the start instant came. If the client
# reports when it went to sleep (timings.ready) that decides. Otherwise its wake-up delay does, above
# LATE_MS: clients asleep in time were seen to wake up to ~13 ms late with 3 clients and ~76 ms with
# 31 on this loaded 2-core machine (every one of them asleep >= 220 ms before the instant), which is
# scheduling noise, not a failure; the table still shows any delay >= 1 ms.
LATE_MS = 100.0



class RunError(LabctlError):
    """The run could not be started at all (no client reachable, bad options)."""


def port_for(protocol: str, ports: Ports) -> int:
    return {"tcp": ports.tcp, "udp": ports.tcp, "proto": ports.proto, "time": ports.time}[protocol]


@dataclass
class ClientResult:
    """One client node's outcome: its reply, or why it has none."""

    node: str
    address: str
    ok: bool
    reply: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)   # the client's own epoch timestamps
    late_ms: float | None = None

    def ms(self, what: str) -> float | None:
        """Milliseconds from the client's start to ``what`` (connected, first_byte, done)."""
        start, t = self.timings.get("start"), self.timings.get(what)
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
        return {"node": self.node, "address": self.address, "ok": self.ok, "reply": self.reply,
                "error": self.error, "timings": timings}


@dataclass
class RunResult:
    """One triggered run over all client nodes."""

    protocol: str
    server: str
    port: int
    start_at: float
    lead: float
    results: list[ClientResult]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def spread_ms(self) -> float | None:
        """First to last client start, from the clients' own timestamps (a pcap gives the wire's)."""
        starts = [r.timings["start"] for r in self.results if r.ok and "start" in r.timings]
        if len(starts) < 2:
            return 0.0 if starts else None
        return (max(starts) - min(starts)) * 1000.0

    def to_json(self) -> dict:
        spread = self.spread_ms
        return {"protocol": self.protocol, "server": self.server, "port": self.port,
                "results": [r.to_json() for r in self.results],
                "spread_ms": None if spread is None else round(spread, 3),
                "start_at": round(self.start_at, 6), "lead_ms": round(self.lead * 1000.0, 1)}




def measure_script(remote_dir: str = REMOTE_DIR) -> str:
    """What a client node runs to be measured: its clock, then a start of the client program."""
    return f"date +%s.%N; python3 {remote_dir}/{CLIENT_PROGRAM} --help > /dev/null 2>&1; true"


def client_argv(protocol: str, server: str, port: int, start_at: float, *, remote_dir: str = REMOTE_DIR,
                send: Sequence[str] = (), timeout: float | None = None,
                retries: int | None = None) -> list[str]:
    """The client's command line on a node."""
    if protocol not in PROTOCOLS:
        raise RunError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    argv = ["python3", f"{remote_dir}/{CLIENT_PROGRAM}", protocol, server, "--port", str(port),
            "--start-at", f"{start_at:.6f}", "--late-tolerance-ms", f"{LATE_MS:g}", "--json"]
    for line in send:
        argv += ["--send", line]
    if timeout is not None:
        argv += ["--timeout", f"{timeout:g}"]
    if retries is not None:
        argv += ["--retries", str(retries)]
    return argv


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
    """The lead before the start instant, from each node's measured exec + Python start (seconds)."""
    if not costs:
        raise RunError("no client node could be measured")
    lead = safety() * max(costs) + MARGIN
    if lead > MAX_LEAD:
        raise RunError(f"starting a client takes {max(costs):.1f} s on the slowest node: too slow to "
                       "trigger at one instant (is a node overloaded?)")
    return lead


def clock_offset(before: float, after: float, remote: float | None) -> float:
    """The node clock's offset from ours, or 0.0 when the probe cannot tell it from zero.

    ``remote`` was read on the node somewhere between ``before`` and ``after`` (our clock), so the
    true offset lies in ``[remote - after, remote - before]``. Only when that interval excludes zero
    (a VM whose clock is off by more than the round trip) is a correction applied; the namespaces
    share one clock and never get one.
    """
    if remote is None:
        return 0.0
    low, high = remote - after, remote - before
    if low <= 0.0 <= high:
        return 0.0
    return (low + high) / 2.0


def parse_client_output(host: Host, stdout: str, stderr: str, exited: int,
                        start_at: float) -> ClientResult:
    """Turn the client's ``--json`` line (or its absence) into a :class:`ClientResult`."""
    data = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
            break
        except ValueError:
            continue
    if not isinstance(data, dict):
        why = (stderr.strip().splitlines() or stdout.strip().splitlines() or [f"exit status {exited}"])[-1]
        return ClientResult(host.name, host.address, False, error=f"client gave no result: {why}")
    timings = {k: float(v) for k, v in (data.get("timings") or {}).items() if isinstance(v, (int, float))}
    late = data.get("late_ms")
    late = float(late) if isinstance(late, (int, float)) else None
    ready = timings.get("ready", data.get("ready"))
    ready = float(ready) if isinstance(ready, (int, float)) else None
    if ready is not None:
        is_late = ready > start_at
    else:
        is_late = data.get("late")
        if not isinstance(is_late, bool):
            is_late = late is not None and late > LATE_MS
    ok = bool(data.get("ok")) and exited == 0
    error = data.get("error") or (None if ok else f"client exited {exited}")
    if ok and is_late:
        ok, error = False, (f"woke up {late or 0:.1f} ms after the start instant (it was not asleep in "
                            f"time; on a busy machine set LABCTL_LEAD_SAFETY above {SAFETY})")
    reply = data.get("reply")
    if isinstance(reply, list):
        reply = " | ".join(str(r) for r in reply)
    return ClientResult(host.name, host.address, ok, None if reply is None else str(reply).rstrip("\n"),
                        None if ok else str(error), timings, late)


@dataclass
class Prepared:
    """What :meth:`Runner.prepare` found: who is reachable, what it cost, what deploy changed."""

    costs: dict[str, float] = field(default_factory=dict)      # node -> seconds (exec + Python start)
    offsets: dict[str, float] = field(default_factory=dict)    # node -> clock offset applied (s)
    unreachable: dict[str, str] = field(default_factory=dict)  # node -> reason
    deployed: list[NodeDeploy] = field(default_factory=list)
    lead: float = 0.0


class Runner:
    """Open connections to the lab once, then trigger as many runs as asked on them."""

    def __init__(self, inventory: Inventory, *, group: Group | None = None, remote_dir: str = REMOTE_DIR,
                 deploy: bool = True, progress: Callable[[str], None] | None = None) -> None:
        self.inventory = inventory
        self.server = inventory.server
        self.ports = ports_of(inventory)
        self.group = group if group is not None else Group(inventory.hosts)
        self.remote_dir = remote_dir
        self.deploy = deploy
        self.progress = progress or (lambda _msg: None)
        self.prepared: Prepared | None = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.group.close()

    def connection(self, name: str) -> Connection:
        return self.group[name]

    @property
    def client_names(self) -> list[str]:
        return [c.host.name for c in self.group if c.host.role == "client"]

    def prepare(self) -> Prepared:
        """Bring the nodes up to date (:func:`labctl.deploy.ensure`), then measure every client's start.

        One after the other: measured while deploy's probes still run, the clients' Python starts
        would compete with them for the CPU and the lead would come out longer than the start needs.
        """
        prep = Prepared()
        if self.deploy:
            report = ensure(self.group, self.ports, remote_dir=self.remote_dir)
            prep.deployed = [n for n in report.nodes if n.ok and n.changed]
            prep.unreachable = {n.node: str(n.error) for n in report.nodes if not n.ok}
            if prep.deployed:
                self.progress(f"deployed to {', '.join(n.node for n in prep.deployed)}")
            if self.server.name in prep.unreachable:  # the clients will say what that means
                self.progress(f"server {self.server.address}: {prep.unreachable[self.server.name]}")
        clients = [n for n in self.client_names if n not in prep.unreachable]
        measured = self.group.subset(clients).map(self._measure)
        for name, exc in measured.failures.items():
            prep.unreachable[name] = reason(exc)
        for name, (cost, offset) in measured.results.items():
            prep.costs[name], prep.offsets[name] = cost, offset
        if prep.costs:
            prep.lead = choose_lead(list(prep.costs.values()))
        self.prepared = prep
        return prep

    def _measure(self, conn: Connection) -> tuple[float, float]:
        """One client node's (exec + Python start) in seconds, and its clock's offset from ours."""
        conn.open()
        before, t0 = time.time(), time.perf_counter()
        stdout = conn.run(measure_script(self.remote_dir), timeout=30).stdout
        cost, after = time.perf_counter() - t0, time.time()
        lines = stdout.strip().splitlines()  # `date +%s.%N` is the first line
        remote = float(lines[0]) if lines and _is_float(lines[0]) else None
        return cost, clock_offset(before, after, remote)

    def trigger(self, protocol: str, *, send: Sequence[str] | None = None, timeout: float | None = None,
                retries: int | None = None, lead: float | None = None) -> RunResult:
        """Start the client on every reachable client node at one instant; gather every outcome."""
        if protocol not in PROTOCOLS:
            raise RunError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
        prep = self.prepared or self.prepare()
        port = port_for(protocol, self.ports)
        if port == 0:
            raise RunError(f"the lab turns {protocol} off (port 0 in the lab file)")
        send = DEFAULT_SEND.get(protocol, ()) if send is None else send
        names = [n for n in self.client_names if n in prep.costs]
        if not names and not self.client_names:
            raise RunError("the inventory has no client nodes")
        lead = prep.lead if lead is None else lead
        wait = lead + (timeout or 3.0) * (1 + (retries or 2)) + 10.0
        t0 = time.perf_counter()
        start_at = time.time() + lead

        def go(conn: Connection):
            at = start_at + prep.offsets.get(conn.host.name, 0.0)
            argv = client_argv(protocol, self.server.address, port, at, remote_dir=self.remote_dir,
                               send=send, timeout=timeout, retries=retries)
            return conn.run(argv, timeout=wait, check=False)

        outcome = self.group.subset(names).map(go) if names else None
        results = []
        for name in self.client_names:
            host = self.connection(name).host
            if name in prep.unreachable:
                results.append(ClientResult(name, host.address, False, error=prep.unreachable[name]))
            elif outcome is not None and name in outcome.results:
                r = outcome.results[name]
                off = prep.offsets.get(name, 0.0)  # the client's clock is ours + off
                res = parse_client_output(host, r.stdout, r.stderr, r.exited, start_at + off)
                if off:
                    res.timings = {k: v - off for k, v in res.timings.items()}
                results.append(res)
            elif outcome is not None and name in outcome.failures:
                results.append(ClientResult(name, host.address, False, error=reason(outcome.failures[name])))
        late = [r.late_ms for r in results if r.late_ms is not None and not r.ok
                and r.error and "not asleep in time" in r.error]
        if late:  # the node got slower since it was measured: give the next run (--repeat) more lead
            prep.lead = min(MAX_LEAD, max(prep.lead, lead + safety() * max(late) / 1000.0))
        return RunResult(protocol, self.server.address, port, start_at, lead, results,
                         time.perf_counter() - t0)


def _is_float(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def median_spread(runs: Sequence[RunResult]) -> float | None:
    spreads = [r.spread_ms for r in runs if r.spread_ms is not None]
    return statistics.median(spreads) if spreads else None
