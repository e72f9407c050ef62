"""Run: start a program's client on every client node at one instant, gather replies and timings.

Why a start instant and not a fast fan-out: whatever starts the clients (Fabric threads, a barrier, a
bash loop of ``ssh … &``) pays an SSH exec plus the program's start-up per node *after* the trigger,
and those costs vary by tens of milliseconds. Instead every client is started ahead of one instant
``T`` by the launcher ``scripts/startat.py``: it checks the program, forks and execs it at once, and
holds its first network call until ``T`` (a seccomp filter; without one it sleeps and execs at
``T``). All that is needed is a lead long enough for every client to be waiting before ``T``; it is
derived from a measurement taken just before (one round trip per node that also times a Python start
there, all nodes at once, so it sees the same contention the real start will), never a constant.

The built-in client (``timeclient.py``) is launched by startat too, for the same timeout, clean-up
and timings, but keeps its own ``--start-at``: it makes its socket ahead and sleeps to the instant,
which measured tighter than a held Python program (bench/startat.py: 3 clients 2.1
vs 3.8 ms, 31 clients 4-12 vs 70-275 ms on the wire, on this loaded machine).

Each client runs inside a small shell that holds its stdin, the SSH channel's: EOF on it (labctl
hangs up on Ctrl-C, or its connection drops because labctl was killed) stops the client's launcher,
which stops the client's process group. So nothing is left running on a node, whatever happens here.
Written against :class:`~labctl.remote.Group` and the inventory only.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from labctl.deploy import (
    CLIENT_PROGRAM,
    LAUNCHER,
    PYTHON,
    REMOTE_DIR,
    NodeDeploy,
    ensure,
    ports_of,
    program_for,
)
from labctl.inventory import Inventory
from labctl.programs import BUILTIN_NAMES, MAX_TIMEOUT, Program, ProgramSpec
from labctl.remote import Connection, Group, reason
from labctl.remote_process import RemoteProcess, wait_all
from labctl.run_lead import (
    MARGIN,
    MAX_LEAD,
    RunError,
    choose_lead,
    clock_offset,
    measure_script,
    parse_measure,
    safety,
)
from labctl.run_result import LATE_MS, SAFETY, ClientResult, RunResult, parse_client

__all__ = ["LATE_MS", "MARGIN", "SAFETY", "ClientResult", "RunError", "RunResult", "Runner", "choose_lead",
           "clock_offset", "measure_script"]

PROTOCOLS = BUILTIN_NAMES
DEFAULT_SEND = {"proto": ("GET TIME", "SAY HI")}
BUILTIN_TIMEOUT = 3.0  # timeclient's own --timeout default (per attempt)
KILL_GRACE = 1.0       # s startat gives a client's group between SIGTERM and SIGKILL
NODE_SLACK = 5.0       # s past a client's timeout before labctl gives up on its node's answer
INTERRUPT_GRACE = 0.8  # s after Ctrl-C for the launchers to report what their clients did
MAX_STARTUP = 5.0      # s: a first network call later than this after exec is the program's design


def port_for(protocol: str, ports) -> int:
    return {"tcp": ports.tcp, "udp": ports.tcp, "proto": ports.proto, "time": ports.time}[protocol]


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise RunError(f"--timeout {timeout:g}: a client's timeout is more than 0 and at most "
                       f"{MAX_TIMEOUT:g} s (every client is killed when it runs past it)")


def launcher_argv(argv: Sequence[str], at: float, timeout: float, node: str,
                  remote_dir: str = REMOTE_DIR) -> list[str]:
    return [*PYTHON, f"{remote_dir}/{LAUNCHER}", "--at", f"{at:.6f}", "--timeout", f"{timeout:g}",
            "--node", node, "--", *argv]


# Runs the launcher with the client's stdin from $1 (or nothing), and stops it when our stdin (the
# SSH channel) ends: we hung up, or the connection dropped because labctl died.
TETHER = ('in=$1; shift; exec 3<&0; '
          'if [ -n "$in" ]; then printf %s "$in" | "$@" & else "$@" < /dev/null & fi; p=$!; '
          '( while read -r _ <&3; do :; done; kill -TERM $p 2>/dev/null ) & w=$!; '
          'wait $p; rc=$?; kill $w 2>/dev/null; exit $rc')


def tethered(argv: Sequence[str], stdin: str | None = None) -> list[str]:
    return ["sh", "-c", TETHER, "sh", stdin or "", *argv]


def builtin_client_argv(protocol: str, server: str, port: int, start_at: float, *,
                        remote_dir: str = REMOTE_DIR, send: Sequence[str] = (), timeout: float | None = None,
                        retries: int | None = None) -> list[str]:
    """The built-in client's command line on a node (its own --start-at)."""
    if protocol not in PROTOCOLS:
        raise RunError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    argv = [*PYTHON, f"{remote_dir}/{CLIENT_PROGRAM}", protocol, server, "--port", str(port),
            "--start-at", f"{start_at:.6f}", "--late-tolerance-ms", f"{LATE_MS:g}", "--json"]
    for line in send:
        argv += ["--send", line]
    if timeout is not None:
        argv += ["--timeout", f"{timeout:g}"]
    if retries is not None:
        argv += ["--retries", str(retries)]
    return argv


client_argv = builtin_client_argv  # (the name older callers use)


@dataclass
class Prepared:
    """What :meth:`Runner.prepare` found: who is reachable, what it cost, what deploy changed."""

    program: str = ""
    resolved: Program | None = None                            # what was deployed and measured
    costs: dict[str, float] = field(default_factory=dict)      # node -> seconds (exec + starts)
    python: dict[str, float] = field(default_factory=dict)     # node -> seconds of one Python start there
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
        self.startup: dict[tuple[str, str], float] = {}  # (program, node) -> its measured start-up (s)

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

    def program(self, program: Program | ProgramSpec | str | None) -> Program:
        return program if isinstance(program, Program) else program_for(self.inventory, program)

    def prepare(self, program: Program | ProgramSpec | str | None = None) -> Prepared:
        """Bring the nodes up to date with ``program`` (:func:`labctl.deploy.ensure`) and measure every
        client's start, both at once on the same connections (the measurement needs nothing deployed):
        one round trip of wall time where there were two. A client that got new files is measured
        again once deploy is done (a file being copied meanwhile starts faster than it will, and the
        first start compiles the launcher's modules; measured while the server starts, each start
        came out twice as long); a node deploy could not bring up to date is not measured."""
        program = self.program(program)
        prep = Prepared(program=program.name, resolved=program)
        builtin = program.client is None
        clients = self.group.subset(self.client_names)
        if not self.deploy:
            measured = clients.map(lambda c: self._measure(c, builtin))
        else:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="measure")
            try:
                measuring = pool.submit(clients.map, lambda c: self._measure(c, builtin))
                self._ensure(program, prep)
                measured = measuring.result()
            finally:
                pool.shutdown(wait=False)  # on Ctrl-C, do not wait for the measurement here
            again = [n.node for n in prep.deployed if n.role == "client"]
            if again:  # after deploy is done: measured while it starts the server, a start costs more
                remeasured = self.group.subset(again).map(lambda c: self._measure(c, builtin))
                measured.results.update(remeasured.results)
                measured.failures.update(remeasured.failures)
                for name in remeasured.results:
                    measured.failures.pop(name, None)
        for name, exc in measured.failures.items():
            prep.unreachable.setdefault(name, reason(exc))
        for name, (cost, python, offset) in measured.results.items():
            if name not in prep.unreachable:
                prep.costs[name], prep.python[name], prep.offsets[name] = cost, python, offset
        if prep.costs:
            prep.lead = choose_lead([self._start_cost(program, n, prep) for n in prep.costs])
        self.prepared = prep
        return prep

    def _ensure(self, program: Program, prep: Prepared) -> None:
        """deploy.ensure, its outcome in ``prep`` (deployed, unreachable) and said."""
        report = ensure(self.group, program, ports=self.ports, remote_dir=self.remote_dir)
        prep.deployed = [n for n in report.nodes if n.ok and n.changed]
        prep.unreachable.update({n.node: str(n.error) for n in report.nodes if not n.ok})
        for n in report.nodes:
            if n.ok and n.stopped:
                self.progress(f"{n.node}: stopped {', '.join(n.stopped)}: it held the ports of "
                              f"{program.name}")
        if prep.deployed:
            self.progress(f"deployed {program.name} to {', '.join(n.node for n in prep.deployed)}")
        if self.server.name in prep.unreachable:  # the clients will say what that means
            self.progress(f"server {self.server.address}: {prep.unreachable[self.server.name]}")

    def _switch(self, program: Program, prep: Prepared) -> Prepared:
        """Another program of the same deploy (:func:`same_deploy`): the nodes' measured starts still
        hold, but the nodes are checked again (deploy.ensure: one round trip; a server that stopped
        since is started again)."""
        measured = {n: prep.unreachable[n] for n in prep.unreachable if n not in prep.costs}
        new = Prepared(program=program.name, resolved=program, costs=dict(prep.costs),
                       python=dict(prep.python), offsets=dict(prep.offsets), unreachable=measured,
                       lead=prep.lead)
        if self.deploy:
            self._ensure(program, new)
        self.prepared = new
        return new

    def _start_cost(self, program: Program, node: str, prep: Prepared) -> float:
        """Round trip + launcher start, and the program's own start-up: the built-in's was measured;
        another program's is what it took last time here, its ``startup:``, or one Python start."""
        if program.client is None:
            return prep.costs[node]
        startup = program.spec.startup or self.startup.get((program.name, node), prep.python.get(node, 0.05))
        return prep.costs[node] + startup

    def _measure(self, conn: Connection, builtin: bool) -> tuple[float, float, float]:
        """One client node's (round trip + starts) and one Python start there, in seconds; its clock's
        offset from ours."""
        conn.open()
        before, t0 = time.time(), time.perf_counter()
        stdout = conn.run(measure_script(self.remote_dir, builtin), timeout=30).stdout
        cost, after = time.perf_counter() - t0, time.time()
        remote, python, rest = parse_measure(stdout, cost)
        return cost, python, clock_offset(before, after, remote, rest)

    def trigger(self, program: Program | ProgramSpec | str = "tcp", *, send: Sequence[str] | None = None,
                timeout: float | None = None, retries: int | None = None,
                lead: float | None = None) -> RunResult:
        """Start the client on every reachable client node at one instant; gather every outcome.

        Ctrl-C (KeyboardInterrupt) while the clients run hangs up on them (each node stops its client's
        process group) and returns at once with what came back, ``interrupted`` set.
        """
        program = self.program(program)
        check_timeout(timeout)
        builtin = program.client is None
        if not builtin and (send or retries is not None):
            raise RunError(f"--send and --retries are for the built-in clients; give {program.name}'s "
                           "client what it needs in its command (or input: in the lab file)")
        if program.port == 0:
            raise RunError(f"the lab turns {program.name} off (port 0 in the lab file)")
        prep = self.prepared
        if prep is None or prep.resolved is None or not same_deploy(prep.resolved, program):
            prep = self.prepare(program)
        elif prep.resolved != program:
            prep = self._switch(program, prep)
        protocol = program.spec.builtin or "tcp"
        send = DEFAULT_SEND.get(protocol, ()) if send is None and builtin else (send or ())
        names = [n for n in self.client_names if n in prep.costs and n not in prep.unreachable]
        if not names and not self.client_names:
            raise RunError("the inventory has no client nodes")
        lead = prep.lead if lead is None else lead
        if builtin:  # the launcher's timeout covers the lead and every attempt of the client
            budget = (timeout or BUILTIN_TIMEOUT) * (1 + (retries or 0)) + 1.0
        else:
            budget = timeout or program.timeout
        t0 = time.perf_counter()
        now = time.time()
        start_at = now + lead

        def argv_for(conn: Connection) -> list[str]:
            host, off = conn.host, prep.offsets.get(conn.host.name, 0.0)
            if builtin:
                inner = builtin_client_argv(protocol, self.server.address, program.port, start_at + off,
                                            remote_dir=self.remote_dir, send=send, timeout=timeout,
                                            retries=retries)
                return launcher_argv(inner, now + off, lead + budget, host.name, self.remote_dir)
            inner = program.client.argv(self.remote_dir, server=self.server.address, port=program.port,
                                        node=host.name, address=host.address)
            return launcher_argv(inner, start_at + off, budget, host.name, self.remote_dir)

        launched: dict[str, RemoteProcess] = {}
        failures: dict[str, str] = {}
        interrupted = False
        try:
            def launch(conn: Connection) -> None:
                launched[conn.host.name] = conn.launch(tethered(argv_for(conn), program.spec.input))

            outcome = self.group.subset(names).map(launch) if names else None
            if outcome is not None:
                failures = {n: reason(e) for n, e in outcome.failures.items()}
            deadline = time.monotonic() + lead + budget + KILL_GRACE + NODE_SLACK
            late = wait_all(list(launched.values()), deadline)
            for proc in late:  # the node did not answer in time: hang up (it stops the client), give up
                proc.hangup()
            wait_all(late, time.monotonic() + KILL_GRACE + 0.5)
        except KeyboardInterrupt:
            interrupted = True
            for proc in list(launched.values()):
                proc.hangup()
            wait_all(list(launched.values()), time.monotonic() + INTERRUPT_GRACE)
        finally:
            for proc in list(launched.values()):
                proc.close()
        results = []
        for name in self.client_names:
            host = self.connection(name).host
            proc = launched.get(name)
            if name in prep.unreachable:
                results.append(ClientResult(name, host.address, False, error=prep.unreachable[name],
                                            attempts=0, timeouts=0))  # (no client ran there)
            elif name in failures or proc is None:
                why = failures.get(name, "interrupted before it started" if interrupted else "not started")
                results.append(ClientResult(name, host.address, False, error=why, attempts=0, timeouts=0))
            else:
                off = prep.offsets.get(name, 0.0)  # the client's clock is ours + off
                res = parse_client(name, host.address, proc.text("stdout"), proc.text("stderr"), proc.exited,
                                   start_at=start_at + off, builtin=builtin, timeout=budget)
                if interrupted and (not res.ok or not proc.finished):
                    res.ok, res.error = False, "interrupted (Ctrl-C): its client was stopped"
                elif not proc.finished or proc.lost:
                    res.ok = False
                    res.error = proc.lost or (f"no answer from {name} within {budget:g} s of the instant "
                                              f"(+{NODE_SLACK:g} s): its client was stopped")
                if off:
                    res.timings = {k: v - off for k, v in res.timings.items()}
                results.append(res)
        self._learn(program, results, lead, prep)
        return RunResult(program.name, self.server.address, program.port, start_at, lead, results,
                         time.perf_counter() - t0, interrupted=interrupted)

    def _learn(self, program: Program, results: list[ClientResult], lead: float, prep: Prepared) -> None:
        """What a client's start-up took (exec to its first network call) sets the next run's lead
        (--repeat, capture, the exercise's hours); a built-in client that was not asleep in time
        lengthens it. (Learning the lead from the launch itself was tried: at 2 x 1.3 x what the
        launch took it led longer than measuring again, at 1.3 x it let built-in clients wake up late
        under this machine's load bursts.)"""
        for r in results:
            t = r.timings
            if program.client is not None and "ready" in t and "execve" in t:
                startup = t["ready"] - t["execve"]
                if 0.0 <= startup <= MAX_STARTUP:  # (longer: the program waits on purpose, not start-up)
                    self.startup[(program.name, r.node)] = startup
        late = [r.late_ms for r in results if r.late_ms is not None and r.woke_late]
        if late:  # the node got slower since it was measured
            prep.lead = min(MAX_LEAD, max(prep.lead, lead + safety() * max(late) / 1000.0))
        elif program.client is not None and prep.costs:
            prep.lead = choose_lead([self._start_cost(program, n, prep) for n in prep.costs])


def same_deploy(a: Program, b: Program) -> bool:
    """True when ``b`` needs nothing on the nodes that ``a`` did not bring and measure: the same server
    (under the same name), client and files, e.g. the built-in tcp, udp and proto, which share the
    time server and the client. A run of ``b`` after ``a`` then needs no second deploy and measurement."""
    return (a.server, a.client, a.extra, a.server_id) == (b.server, b.client, b.extra, b.server_id)


def median_spread(runs: Sequence[RunResult]) -> float | None:
    spreads = [r.spread_ms for r in runs if r.spread_ms is not None]
    return statistics.median(spreads) if spreads else None
