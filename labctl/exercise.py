"""The whole exercise in one go: lab up (if it is not), deploy, then per hour (TCP time, UDP time, the
line protocol, then each program of the lab file's ``programs:`` asked for) every client at one instant
while tcpdump captures the hour's port on the capture points (the server, or every node: one pcapng with
one interface per node); one folder with the pcaps, the run results as JSON and a self-contained
``report.html``; the lab down again unless kept.

A failed hour (server stopped, capture incomplete, node unreachable) is recorded as such and the next
hours still run; Ctrl-C stops after the hour under way, keeping what was done (pcaps, JSON, report).
Written against the backend, :class:`~labctl.remote.Group` and the inventory; the report is rendered by
:mod:`labctl.analyse.exercise_report` from plain data (analyse/ never imports this module).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from labctl.backends.base import Backend
from labctl.errors import LabctlError
from labctl.programs import ProgramSpec

HOURS = (("tcp", "First hour: the time over TCP"), ("udp", "Second hour: the time over UDP"),
         ("proto", "Third hour: the line protocol (GET TIME, SAY HI on one connection)"))
LOCAL_DIR = Path("captures")
NODES = ("all", "server")          # --nodes: every node, the server only, or a list of names
DEFAULT_NODES = "server"           # (see docs/exercise.md, "Where it captures": measured both)
LOSSY_TCP_TIMEOUT = 30.0   # s: a TCP client's timeout in the lossy round (see _timeout)
WARM = ("labctl.remote", "labctl.run", "labctl.capture", "labctl.analyse.readback",
        "labctl.analyse.exercise_report")

Progress = Callable[[str], None]


class ExerciseError(LabctlError):
    """The exercise was asked for something the lab does not have (checked before anything is built)."""


@dataclass
class Hour:
    """One hour of the exercise: the protocol, its pcap, the run's JSON, the capture's summary, or why not."""

    protocol: str
    title: str
    name: str = ""               # file stem and key: the protocol, or e.g. tcp-lossy
    loss: float = 0.0            # percent loss on every link during this hour (the lossy round)
    pcap: Path | None = None
    run: dict | None = None
    capture: dict | None = None
    error: str | None = None
    seconds: float = 0.0
    program: ProgramSpec | None = None   # a program of the lab file's (None: the built-in one)

    def __post_init__(self) -> None:
        self.name = self.name or self.protocol

    @property
    def ok(self) -> bool:
        """Captured and every client answered; in the lossy round, captured (clients may give up)."""
        if self.error is not None or self.run is None:
            return False
        return bool(self.loss) or all(r["ok"] for r in self.run["results"])

    def failures(self) -> list[str]:
        out = [self.error] if self.error else []
        for r in (self.run or {}).get("results", []):
            if not r["ok"]:
                out.append(f"{r['node']}: {r['error']}")
        return out

    def to_json(self) -> dict:
        own = None if self.program is None else {
            "name": self.program.name, "server": self.program.describe("server"),
            "client": self.program.describe("client")}
        return {"protocol": self.protocol, "name": self.name, "loss": self.loss, "title": self.title,
                "ok": self.ok, "program": own,
                "pcap": self.pcap.name if self.pcap else None, "error": self.error,
                "failures": self.failures(), "seconds": round(self.seconds, 3),
                "run": self.run, "capture": self.capture}


@dataclass
class Exercise:
    """What the exercise did, in the order it did it."""

    directory: Path
    expected: int = len(HOURS)
    loss: float = 0.0
    lab: dict = field(default_factory=dict)
    hours: list[Hour] = field(default_factory=list)
    brought_up: bool = False
    taken_down: bool = False
    interrupted: bool = False
    deployed: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)   # step -> seconds
    report: Path | None = None
    commands: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)          # the capture points, the server first
    keep: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and len(self.hours) == self.expected and all(h.ok for h in self.hours)

    def to_json(self) -> dict:
        return {"ok": self.ok, "directory": str(self.directory), "lab": self.lab, "loss": self.loss,
                "brought_up": self.brought_up, "taken_down": self.taken_down,
                "interrupted": self.interrupted, "deployed": self.deployed,
                "steps_seconds": {k: round(v, 3) for k, v in self.steps.items()},
                "commands": self.commands, "capture_nodes": self.nodes,
                "hours": [h.to_json() for h in self.hours]}


def default_directory(now: datetime | None = None, base: Path = LOCAL_DIR) -> Path:
    """``captures/exercise-<UTC time>/``."""
    now = now or datetime.now(timezone.utc)
    return base / f"exercise-{now.strftime('%Y%m%dT%H%M%SZ')}"


def lab_description(backend: Backend, inventory) -> dict:
    """The lab as the report draws it: nodes, roles, addresses, backend, programs, ports."""
    from labctl.deploy import files_for, ports_of, program_for

    ports = ports_of(inventory)
    builtin = program_for(inventory)    # the exercise deploys the built-in programs
    return {"name": backend.lab.name, "backend": backend.name,
            "subnet": str(getattr(backend.lab, "subnet", "")),
            "ports": {"tcp": ports.tcp, "proto": ports.proto, "time": ports.time},
            "nodes": [{"name": h.name, "role": h.role, "address": h.address,
                       "programs": sorted(f.remote for f in files_for(h, builtin))} for h in inventory.hosts]}


def own_programs(lab, names: Sequence[str]) -> list[ProgramSpec]:
    """The lab file's programs that ``--program`` names, in order, each once; an unknown name is one
    line that lists the lab's programs (checked before anything is brought up)."""
    from labctl.programs import BUILTIN_NAMES, resolve

    known = dict(getattr(lab, "programs", None) or {})
    for name in names:
        if name not in known:
            listing = ", ".join(sorted(known)) or "none: add a programs: section (docs/exercise.md)"
            builtin = (f"; {name} is a built-in hour, always run" if name in BUILTIN_NAMES else "")
            raise ExerciseError(f"--program {name}: not a program of lab {lab.name}'s lab file "
                                f"(its programs: {listing}{builtin})")
    specs = [known[n] for n in dict.fromkeys(names)]
    base = lab.source.parent if getattr(lab, "source", None) is not None else None
    for spec in specs:  # their local files must be there (data only: nothing is copied yet)
        resolve(spec, lab.ports, lab_base=base)
    return specs


def capture_points(lab, nodes: str) -> list[str]:
    """The nodes ``--nodes`` names (``all``, ``server`` or ``server,client2``), the server first.

    The server must be one of them: the report counts every packet once, at the server's capture point
    (the only one that sees every client)."""
    names = [n.name for n in lab.nodes]
    server = lab.server.name
    if nodes == "all":
        return [server, *(n for n in names if n != server)]
    if nodes == "server":
        return [server]
    wanted = list(dict.fromkeys(n.strip() for n in nodes.split(",") if n.strip()))
    unknown = [n for n in wanted if n not in names] or ([] if wanted else [nodes])
    if unknown:
        raise ExerciseError(f"--nodes: lab {lab.name} has no node {unknown[0]!r} (give all, server, or "
                            f"some of its nodes separated by commas: {', '.join(names)})")
    if server not in wanted:
        raise ExerciseError(f"--nodes {nodes}: include {server}: the report counts every packet once, at "
                            "the server's capture point, the only one that sees every client")
    return [server, *(n for n in wanted if n != server)]


def _is_up(backend: Backend) -> bool:
    try:
        statuses = backend.status()
    except LabctlError:
        return False
    return bool(statuses) and all(s.up for s in statuses)


def run_exercise(backend: Backend, directory: Path, *, keep: bool = False, progress: Progress | None = None,
                 on_hour: Callable[[Hour], None] | None = None, commands: list[str] | None = None,
                 protocols: tuple[str, ...] | None = None, loss: float = 0.0,
                 programs: Sequence[str] = (), nodes: str = DEFAULT_NODES) -> Exercise:
    """Run the exercise on ``backend``'s lab into ``directory``; never raises for a failed hour.

    ``loss`` (percent, > 0): afterwards a lossy round, TCP and UDP again with that loss on every link
    (``labctl impair all --loss``), the links put back as they were after it. ``programs``: then an
    hour for each of these programs of the lab file's ``programs:``. ``nodes``: the capture points
    (``all``, ``server`` or names). Raises :class:`ExerciseError` for an unknown program or node
    before anything is made.
    """
    from labctl import bringup

    say = progress or (lambda _msg: None)
    own = own_programs(backend.lab, programs)
    points = capture_points(backend.lab, nodes)
    try:  # before anything is brought up: a folder that cannot be made is one line, nothing started
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabctlError(f"cannot make the exercise folder {str(directory)[:200]}: "
                          f"{exc.strerror or exc}") from None
    hours = [Hour(p, title) for p, title in HOURS if protocols is None or p in protocols]
    if loss:
        hours += [Hour(p, f"Lossy round: the time over {p.upper()} with {loss:g} % loss on every link",
                       name=f"{p}-lossy", loss=loss) for p in ("tcp", "udp")]
    hours += [Hour("tcp", f"Your program {spec.name} (the lab file's programs:)", name=f"program-{spec.name}",
                   program=spec) for spec in own]
    ex = Exercise(directory, expected=len(hours), loss=loss, commands=list(commands or []), nodes=points,
                  keep=keep)
    t = time.perf_counter()
    try:
        if _is_up(backend):
            say(f"lab {backend.lab.name} is already up")
            inventory = backend.inventory()
        else:
            say(f"bringing lab {backend.lab.name} up ({backend.name})")
            ex.brought_up = True
            bringup.prewarm(*WARM)  # the steps' modules, imported while the nodes come up
            inventory = bringup.up(backend, say)
        ex.steps["up"] = time.perf_counter() - t
        ex.lab = lab_description(backend, inventory)
        _hours(ex, backend, inventory, hours, say, on_hour)
    except KeyboardInterrupt:
        ex.interrupted = True
        say("interrupted: keeping what was done")
    finally:
        _write(ex, say)
        if ex.brought_up and not keep:
            t = time.perf_counter()
            say(f"taking lab {backend.lab.name} down")
            from labctl import impairment

            impairment.before_down(backend, say)
            backend.down(say)
            ex.taken_down = True
            ex.steps["down"] = time.perf_counter() - t
            _write_json(ex)
    return ex


def _hours(ex: Exercise, backend: Backend, inventory, hours: list[Hour], say: Progress, on_hour) -> None:
    from labctl.deploy import ports_of
    from labctl.run import Runner

    ports = ports_of(inventory)
    t = time.perf_counter()
    with Runner(inventory, deploy=True, progress=say) as runner:
        say("deploying the time server and client")
        prep = runner.prepare()
        ex.deployed = [n.node for n in prep.deployed]
        ex.steps["deploy"] = time.perf_counter() - t
        conns = [runner.connection(inventory.get(n).name) for n in ex.nodes]
        lossy = _Lossy(backend, say)
        try:
            for hour in hours:
                if hour.loss and not lossy.on and lossy.error is None:
                    try:
                        lossy.start(hour.loss)
                    except LabctlError as exc:
                        lossy.error = f"could not set {hour.loss:g} % loss on the links: {exc}"
                if lossy.on and not hour.loss:
                    lossy.stop()
                if hour.loss and lossy.error:
                    hour.error = lossy.error
                    ex.hours.append(hour)
                else:
                    _hour(ex, hour, runner, conns, inventory, ports, say)
                if on_hour is not None:
                    on_hour(hour)
                if ex.interrupted:
                    break
        finally:
            lossy.stop()
            if any(h.program is not None for h in ex.hours) and not (ex.brought_up and not ex.keep):
                _builtin_back(runner, inventory, say)


def _builtin_back(runner, inventory, say: Progress) -> None:
    """The lab stays up: the built-in time server back where a program's server replaced it."""
    from labctl.deploy import ensure, ports_of, program_for

    say("the built-in time server back on the server (the lab stays up)")
    try:
        ensure(runner.group.subset([inventory.server.name]), program_for(inventory),
               ports=ports_of(inventory))
    except LabctlError as exc:
        say(f"the built-in time server could not be started again: {exc}")


class _Lossy:
    """Loss on every link for the lossy round, and the links put back as they were afterwards."""

    def __init__(self, backend: Backend, say: Progress) -> None:
        self.backend, self.say, self.on, self.saved = backend, say, False, None
        self.error: str | None = None

    def start(self, loss: float) -> None:
        from labctl import impairment
        from labctl.links import ALL, LinkSettings

        self.saved = self.backend.link_settings()
        self.say(f"lossy round: {loss:g} % loss on every link (labctl impair all --loss {loss:g})")
        self.on = True
        impairment.change(self.backend, ALL, LinkSettings(loss=loss))

    def stop(self) -> None:
        if not self.on:
            return
        from labctl import impairment

        self.say("links back as they were")
        run = impairment.node_scripts(self.backend) if self.backend.shapes_over_ssh else None
        self.backend.impair(self.saved or {}, run)
        self.on = False


def _hour(ex: Exercise, hour: Hour, runner, conns, inventory, ports, say: Progress) -> None:
    """One captured hour; its failure is recorded in ``hour``, never raised."""
    from labctl.analyse.readback import read_back
    from labctl.capture import capture
    from labctl.run import port_for

    several = len(conns) > 1
    hour.pcap = ex.directory / f"{hour.name}{'.pcapng' if several else '.pcap'}"
    ex.hours.append(hour)
    t = time.perf_counter()
    where = "every node" if several and len(conns) == len(inventory.hosts) else ", ".join(ex.nodes)
    try:
        if hour.program is not None:  # deployed before tcpdump is armed (its SSH traffic stays out)
            say(f"deploying {hour.program.name}: {hour.program.describe('server')} on the server, "
                f"{hour.program.describe('client')} on every client")
            program = runner.program(hour.program)
            runner.prepare(program)
        else:
            program = hour.protocol
        port = program.port if hour.program is not None else port_for(hour.protocol, ports)
        say(f"{hour.title}: capturing port {port} on {where} while every client calls at once")
        result = capture(conns, [port], output=hour.pcap,
                         during=lambda: runner.trigger(program, timeout=_timeout(hour)), analyse=read_back)
        hour.run = result.run.to_json() if result.run is not None else None
        hour.capture = {"node": result.node, "interface": result.interface,
                        "nodes": [n.node for n in result.nodes],
                        "stats": {"captured": sum(n.stats.captured for n in result.nodes if n.stats),
                                  "received": sum(n.stats.received for n in result.nodes if n.stats),
                                  "dropped": sum(n.stats.dropped for n in result.nodes if n.stats)},
                        "summary": result.summary}
        if several:
            _count_at_server(hour, inventory.server.name)
        if hour.program is not None:
            _own_protocol(hour)
        # Ctrl-C stops the capture, or (while the clients run) the run, which returns what came back
        if result.interrupted or (result.run is not None and result.run.interrupted):
            ex.interrupted = True
            hour.error = "interrupted (Ctrl-C) during the capture"
    except LabctlError as exc:
        hour.error = str(exc)
    except KeyboardInterrupt:  # (while a program was deployed: the capture handles its own)
        hour.error, hour.pcap = "interrupted (Ctrl-C) before the capture", None
        raise
    hour.seconds = time.perf_counter() - t
    ex.steps[hour.name] = hour.seconds
    if hour.pcap is not None and not hour.pcap.exists():
        hour.pcap = None


def _count_at_server(hour: Hour, server: str) -> None:
    """Several capture points see the same packet: the hour's figures are the server's point's (the
    whole file's count stays, as ``all_points``, with each point's)."""
    from labctl.analyse.one_point import at_point, points
    from labctl.analyse.readback import read_back

    source, name = at_point(hour.pcap, server)
    _analysis, summary = read_back(source)
    summary["counted_at"] = name
    summary["all_points"] = hour.capture["summary"]["packets"]
    summary["points"] = points(hour.pcap)
    hour.capture["summary"] = summary


def _own_protocol(hour: Hour) -> None:
    """A program's hour is over TCP or UDP as its packets say (UDP when it sent no TCP at all)."""
    protocols = ((hour.capture or {}).get("summary") or {}).get("protocols") or {}
    hour.protocol = "udp" if protocols.get("udp") and not protocols.get("tcp") else "tcp"
    hour.title = f"{hour.title}, over {hour.protocol.upper()}"


def _timeout(hour: Hour) -> float | None:
    """The clients' timeout: their default, but in the lossy round long enough for TCP's own retries (the
    SYN again after 1, 3, 7, 15 s) to get their chance; UDP keeps it: what a plain UDP client does."""
    return LOSSY_TCP_TIMEOUT if hour.loss and hour.protocol == "tcp" else None


def _write_json(ex: Exercise) -> None:
    (ex.directory / "run.json").write_text(json.dumps(ex.to_json(), indent=1) + "\n", encoding="utf-8")


def _write(ex: Exercise, say: Progress) -> None:
    """run.json and report.html, from whatever was done (also after a failure or Ctrl-C)."""
    from labctl.analyse.exercise_report import write_report

    t = time.perf_counter()
    _write_json(ex)
    try:
        ex.report = write_report(ex.directory / "report.html", ex.to_json())
    except LabctlError as exc:
        say(f"the report could not be written: {exc}")
    ex.steps["report"] = time.perf_counter() - t
    _write_json(ex)
