"""run's logic against a fake Group: lead, clock offsets, launcher output, failures kept per node.

The fake nodes answer deploy's probe like deployed nodes and a launched client like startat.py would
(its ``startat-timings`` line; for the built-in client, timeclient.py's ``--json`` object).
"""
from __future__ import annotations

import json
import shlex
import threading
import time

import pytest

from labctl.deploy import CLIENT_PROGRAM, LAUNCHER_FILES, builtin_server_argv, file_hash, files_for
from labctl.inventory import Host, Inventory
from labctl.lab import Lab, Ports
from labctl.programs import builtin, parse_program, resolve
from labctl.remote import Group, RemoteError, Result
from labctl.run import (
    LATE_MS,
    MARGIN,
    SAFETY,
    TETHER,
    ClientResult,
    RunError,
    Runner,
    RunResult,
    builtin_client_argv,
    check_timeout,
    choose_lead,
    clock_offset,
    port_for,
)
from labctl.run_result import parse_client, split_launcher

LAB = Lab(clients=3)
HOSTS = (Host("server", "server", "192.168.20.2"),
         *(Host(f"client{i}", "client", f"192.168.20.{2 + i}") for i in range(1, 4)))


class FakeProcess:
    """What Connection.launch returns, already finished."""

    def __init__(self, stdout: str, stderr: str, exited: int) -> None:
        self.stdout, self.stderr = bytearray(stdout.encode()), bytearray(stderr.encode())
        self.exited, self.lost, self.finished = exited, None, True
        self.hung_up = False

    def pump(self) -> bool:
        return True

    def fileno(self) -> int:
        return -1

    def hangup(self) -> None:
        self.hung_up = True

    def close(self) -> None:
        pass

    def text(self, which: str) -> str:
        return bytes(self.stdout if which == "stdout" else self.stderr).decode()


def timings_line(at: float, exec_at: float | None = None, exit: int = 0, **more) -> str:
    exec_at = at if exec_at is None else exec_at
    t = {"start": at - 0.2, "ready": at - 0.1, "execve": at - 0.15, "exec": exec_at, "end": exec_at + 0.06,
         "exit": exit, "timed_out": False, "error": None, "late_ms": (exec_at - at) * 1000, "at": at,
         "mode": "hold", "no_hold": None, **more}
    return "startat-timings: " + json.dumps(t) + "\n"


class FakeConnection:
    """Answers deploy's probe like a deployed node, a launched client like startat.py would."""

    def __init__(self, host: Host, *, dead: bool = False, stale: bool = False, cost: float = 0.0,
                 reply: dict | None = None, exited: int = 0, woke_late: float = 0.0,
                 output: str | None = None) -> None:
        self.host = host
        self.dead, self.stale, self.cost, self.reply, self.exited = dead, stale, cost, reply, exited
        self.woke_late = woke_late  # s after the start instant that this client reports it started
        self.output = output        # a non-built-in client's stdout
        self.commands: list[str] = []
        self.puts: list[str] = []
        self.lock = threading.Lock()
        self.program = resolve(builtin("tcp"), LAB.ports)

    def open(self):
        if self.dead:
            raise RemoteError(f"{self.host.name} ({self.host.address}:22): connection refused "
                              "(is its sshd running?)")
        return self

    def close(self) -> None:
        pass

    def run(self, cmd, *, timeout=None, check=True, sudo=False, stdin=None) -> Result:
        self.open()
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        with self.lock:
            self.commands.append(line)
        if "sha256sum" in line:  # deploy's probe
            names = [f for f in files_for(self.host, self.program)]
            out = "".join(f"{'0' * 64 if self.stale else file_hash(f.local)}  {f.remote}\n" for f in names)
            if self.host.role == "server":
                out += f"SERVER 4242 {shlex.join(builtin_server_argv(self.host.address, LAB.ports))}\n"
            return Result(self.host.name, line, 0, out, "")
        if "date +%s.%N" in line:  # run's measurement of a client's start
            time.sleep(self.cost)
            now = time.time()
            return Result(self.host.name, line, 0, f"{now:.9f}\n{now + self.cost / 2:.9f}\n", "")
        if "serverctl.py" in line and " start " in line:
            return Result(self.host.name, line, 0, json.dumps({"ok": True, "pid": 99, "stopped": [],
                                                               "listening": ["tcp 8080"]}) + "\n", "")
        return Result(self.host.name, line, 0, "", "")

    def launch(self, cmd, *, sudo=False) -> FakeProcess:
        self.open()
        argv = list(cmd)
        assert argv[:3] == ["sh", "-c", TETHER]
        line = shlex.join(argv)
        with self.lock:
            self.commands.append(line)
        inner = argv[argv.index("--") + 1:]
        at = float(argv[argv.index("--at") + 1])
        if "--start-at" in inner:  # the built-in client
            start_at = float(inner[inner.index("--start-at") + 1]) + self.woke_late
            data = self.reply if self.reply is not None else {
                "reply": "2026-11-25T09:39:51.123Z", "ok": True, "error": None,
                "timings": {"start": start_at, "connected": start_at + 0.0002,
                            "first_byte": start_at + 0.0005, "done": start_at + 0.0006}}
            return FakeProcess(json.dumps(data) + "\n", timings_line(at, exit=self.exited), self.exited)
        stdout = self.output if self.output is not None else "hello from " + self.host.name + "\n"
        return FakeProcess(stdout, timings_line(at, at + self.woke_late, exit=self.exited), self.exited)

    def put(self, local, remote, mode=None):
        self.puts.append(remote)
        return remote

    def stop(self, pid, *, sig="TERM", timeout=5.0, sudo=False) -> bool:
        return True


def fake_runner(**per_node) -> tuple[Runner, dict[str, FakeConnection]]:
    conns = {h.name: FakeConnection(h, **per_node.get(h.name, {})) for h in HOSTS}
    group = Group.from_connections(conns.values())
    return Runner(Inventory("fake", HOSTS, LAB), group=group), conns


def test_lead_is_derived_from_the_slowest_measured_node():
    assert choose_lead([0.05, 0.07, 0.06]) == pytest.approx(SAFETY * 0.07 + MARGIN)
    assert choose_lead([0.6] * 31) > choose_lead([0.06] * 3) * 5
    with pytest.raises(RunError, match="too slow"):
        choose_lead([60.0])
    with pytest.raises(RunError):
        choose_lead([])


def test_clock_offset_only_when_the_probe_can_tell_it_from_zero():
    assert clock_offset(100.0, 100.2, 100.1) == 0.0          # same clock (namespaces)
    assert clock_offset(100.0, 100.2, None) == 0.0
    assert clock_offset(100.0, 100.2, 105.1) == pytest.approx(5.0)  # a VM 5 s ahead
    assert clock_offset(100.0, 100.2, 90.0) == pytest.approx(-10.1)
    # a slow VM: the probe took 3.5 s, 3.4 of them on the node after its first reading; its clock is
    # 1.7 s ahead. Without `rest` that hides in the interval; with it, it is found to within 0.05 s
    assert clock_offset(100.0, 103.5, 101.75) == 0.0
    assert clock_offset(100.0, 103.5, 101.75, rest=3.4) == pytest.approx(1.7, abs=0.05)
    assert clock_offset(100.0, 103.5, 100.05, rest=3.4) == 0.0   # the same clock stays 0 (no jitter)
    assert clock_offset(100.0, 100.2, 100.1, rest=99.0) == 0.0   # a node clock that jumped: not narrowed


def test_builtin_client_argv_quotes_and_ports():
    argv = builtin_client_argv("proto", "192.168.20.2", 8081, 1234.5, send=["GET TIME", "SAY HI"], timeout=2)
    assert argv[:5] == ["python3", "-S", f"labctl/{CLIENT_PROGRAM}", "proto", "192.168.20.2"]
    assert argv[argv.index("--start-at") + 1] == "1234.500000"
    assert shlex.split(shlex.join(argv)).count("GET TIME") == 1
    assert [port_for(p, Ports()) for p in ("tcp", "udp", "proto", "time")] == [8080, 8080, 8081, 37]
    with pytest.raises(RunError, match="unknown protocol"):
        builtin_client_argv("icmp", "x", 1, 0)


def test_every_timeout_is_bounded():
    for bad in (float("inf"), float("nan"), 1e9, 0, -1):
        with pytest.raises(RunError, match="at most 3600"):
            check_timeout(bad)
    check_timeout(None)
    check_timeout(3600)


def test_launcher_output_is_split_into_timings_its_error_and_the_programs_stderr():
    stderr = "oops from the program\nstartat: exec format error: x is aarch64, client1 is x86-64\n" + \
        timings_line(10.0, exit=126)
    timings, error, rest = split_launcher(stderr)
    assert timings["exit"] == 126 and error == "exec format error: x is aarch64, client1 is x86-64"
    assert rest == "oops from the program"
    res = parse_client("client1", "a", "", stderr, 126, start_at=10.0, builtin=False, timeout=5)
    assert not res.ok and res.exit == 126 and res.error.startswith("exec format error")


def test_a_foreign_clients_outcome():
    ok = parse_client("c", "a", "the time\n", "warn\n" + timings_line(10.0, 10.0003), 0, start_at=10.0,
                      builtin=False, timeout=5)
    assert ok.ok and ok.reply == "the time" and ok.stderr == "warn" and ok.exit == 0
    assert ok.late_ms == pytest.approx(0.3) and set(ok.to_json()) == \
        {"node", "address", "ok", "reply", "stderr", "exit", "timings", "error", "attempts", "retries",
         "timeouts", "attempt_log", "warning"}
    # a program labctl did not write does not say how often it tried: unknown, never a guess
    assert ok.attempts is None and ok.to_json()["attempts"] == "unknown" == ok.to_json()["timeouts"]
    assert {"start", "exec", "end"} <= set(ok.to_json()["timings"])
    timed_out = parse_client("c", "a", "partial", timings_line(10.0, exit=124, timed_out=True), 124,
                             start_at=10.0, builtin=False, timeout=2)
    assert not timed_out.ok and timed_out.timed_out and "timed out" in timed_out.error \
        and timed_out.reply == "partial"
    failed = parse_client("c", "a", "", "Traceback\nValueError: no\n" + timings_line(10.0, exit=1), 1,
                          start_at=10.0, builtin=False, timeout=5)
    assert failed.error == "exited with status 1: ValueError: no"
    # a first network call long after the instant is shown (late_ms), not a failure: ok is exit 0
    late = parse_client("c", "a", "x", timings_line(10.0, 12.0), 0, start_at=10.0, builtin=False, timeout=5)
    assert late.ok and late.late_ms == pytest.approx(2000.0)
    nothing = parse_client("c", "a", "", "", None, start_at=10.0, builtin=False, timeout=5)
    assert not nothing.ok


def test_trigger_gives_every_client_the_same_future_instant():
    runner, conns = fake_runner(client1={"cost": 0.05}, client2={"cost": 0.02, "woke_late": 0.0004},
                                client3={"woke_late": 0.0011})
    before = time.time()
    result = runner.trigger("tcp")
    assert result.ok and [r.node for r in result.results] == ["client1", "client2", "client3"]
    assert result.lead >= SAFETY * 0.05 + MARGIN  # the slowest node's measured cost, not a constant
    instants = set()
    for name in ("client1", "client2", "client3"):
        argv = shlex.split(next(c for c in conns[name].commands if "--start-at" in c))
        instants.add(argv[argv.index("--start-at") + 1])
        assert argv[argv.index("--port") + 1] == "8080" and "192.168.20.2" in argv
        assert argv[argv.index("--node") + 1] == name and "labctl/startat.py" in argv  # launched by startat
    assert len(instants) == 1 and float(instants.pop()) >= before + result.lead
    out = result.to_json()
    assert set(out) >= {"program", "results", "spread_ms"} and out["program"] == "tcp"
    assert set(out["results"][0]) >= {"node", "address", "ok", "reply", "stderr", "exit", "timings", "error",
                                     "attempts", "timeouts"}
    assert out["results"][0]["timings"]["connect_ms"] == pytest.approx(0.2)
    assert result.spread_ms == pytest.approx(1.1, abs=1e-3) and out["spread_ms"] == 1.1  # first to last start
    assert conns["server"].puts == [] and not any(CLIENT_PROGRAM in c for c in conns["server"].commands)


def test_a_foreign_program_is_held_until_the_instant_by_the_launcher():
    runner, conns = fake_runner(client2={"woke_late": 0.0007})
    program = resolve(parse_program("nc", {"server": "builtin", "client": "nc -N {server} {port}",
                                           "timeout": 2, "input": "hi"}), LAB.ports)
    result = runner.trigger(program)
    assert result.ok and result.program == "nc" and [r.reply for r in result.results] == \
        ["hello from client1", "hello from client2", "hello from client3"]
    argv = shlex.split(next(c for c in conns["client1"].commands if " --at " in c))
    assert argv[4] == "hi"  # the client's stdin, for the tether to feed it
    assert argv[argv.index("--timeout") + 1] == "2"
    assert argv[argv.index("--") + 1:] == ["nc", "-N", "192.168.20.2", "8080"]
    assert result.spread_ms == pytest.approx(0.7, abs=1e-3)
    with pytest.raises(RunError, match="--send and --retries are for the built-in clients"):
        runner.trigger(program, send=["x"])


def test_a_dead_node_is_reported_and_the_others_kept():
    runner, _ = fake_runner(client2={"dead": True})
    result = runner.trigger("udp")
    assert not result.ok
    by = {r.node: r for r in result.results}
    assert by["client1"].ok and by["client3"].ok
    assert not by["client2"].ok and "connection refused" in by["client2"].error


def test_a_refused_client_is_a_failure_with_its_reason():
    refused = {"reply": None, "ok": False, "error": "connection refused", "timings": {"start": 1.0}}
    runner, _ = fake_runner(client3={"reply": refused, "exited": 1})
    result = runner.trigger("tcp")
    by = {r.node: r for r in result.results}
    assert by["client3"].error == "connection refused" and by["client1"].ok


def test_stale_nodes_are_deployed_first_and_only_they():
    runner, conns = fake_runner(client1={"stale": True})
    prep = runner.prepare()
    assert [d.node for d in prep.deployed] == ["client1"]
    assert conns["client1"].puts == [*(f"labctl/{n}" for n in LAUNCHER_FILES), f"labctl/{CLIENT_PROGRAM}"]
    assert conns["client2"].puts == [] and conns["server"].puts == []


def test_no_deploy_skips_the_server_check():
    runner, conns = fake_runner(client1={"stale": True})
    runner.deploy = False
    runner.prepare()
    assert conns["server"].commands == [] and conns["client1"].puts == []


def test_spread_is_first_to_last_client_start():
    results = [ClientResult("a", "x", True, timings={"exec": 10.0}),
               ClientResult("b", "y", True, timings={"exec": 10.0004}),
               ClientResult("c", "z", False, error="refused")]
    run = RunResult("tcp", "s", 8080, 10.0, 0.1, results)
    assert run.spread_ms == pytest.approx(0.4) and not run.ok


def test_a_reported_ready_time_decides_lateness_of_the_builtin_client():
    def parse(data):
        return parse_client("c", "a", json.dumps(data), timings_line(0.5), 0, start_at=1.0, builtin=True,
                            timeout=3)
    asleep = {"reply": "t", "ok": True, "error": None, "late_ms": 150.0,
              "timings": {"ready": 0.7, "start": 1.15}}
    assert parse(asleep).ok  # slow wake-up: noise
    awake = {"reply": "t", "ok": True, "error": None, "late_ms": 2.0, "ready": 1.002,  # top level also read
             "timings": {"start": 1.002}}
    late = parse(awake)   # its answer is kept (ok), and that it did not start with the others is said
    assert late.ok and late.error is None and "not asleep in time" in late.warning
    assert late.to_json()["warning"] == late.warning and late.reply == "t"
    late_json = {"reply": "t", "ok": True, "error": None, "late_ms": LATE_MS + 80, "timings": {"start": 1.1}}
    assert "after the start instant" in parse(late_json).warning
    assert parse(asleep).warning is None
    garbage = parse_client("c", "a", "", "Traceback...\nNameError: x\n" + timings_line(0.5, exit=1), 1,
                           start_at=1.0, builtin=True, timeout=3)
    assert not garbage.ok and "NameError" in garbage.error


def test_a_late_client_lengthens_the_lead_of_the_next_run():
    runner, conns = fake_runner()
    first = runner.trigger("tcp")
    conns["client2"].reply = {"reply": "t", "ok": True, "error": None, "late_ms": 400.0,
                              "timings": {"start": 2.0}}
    late = runner.trigger("tcp")
    assert late.ok and late.lead == pytest.approx(first.lead)
    assert "after the start instant" in next(r for r in late.results if r.node == "client2").warning
    after = runner.trigger("tcp")
    assert after.lead >= first.lead + 0.4


def test_the_safety_factor_can_be_raised_for_a_loaded_machine(monkeypatch):
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")
    assert choose_lead([0.1]) == pytest.approx(0.3 + MARGIN)
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "fast")
    with pytest.raises(RunError, match="LABCTL_LEAD_SAFETY"):
        choose_lead([0.1])


def test_a_flooding_client_cannot_fill_our_memory_and_its_timings_survive():
    from labctl.remote_process import KEEP, Output

    out = Output()
    for _ in range(3 * KEEP // 1000):
        out += b"x" * 1000
    out += b"\n" + timings_line(10.0).encode()
    data = bytes(out)
    assert len(data) < 2 * KEEP + 100 and out.dropped > 0
    assert split_launcher(data.decode())[0]["exit"] == 0  # the launcher's last line is kept


def test_the_builtin_clients_attempts_and_timeouts_are_reported():
    data = {"reply": "t", "ok": True, "error": None, "late_ms": 0.1, "attempts": 3, "timeouts": 2,
            "attempt_log": ["timeout", "timeout", "ok"], "first_start": 1.0,
            "timings": {"ready": 0.7, "start": 1.4, "connected": 1.401, "first_byte": 1.402, "done": 1.402}}
    res = parse_client("c", "a", json.dumps(data), timings_line(0.5), 0, start_at=1.0, builtin=True,
                       timeout=3)
    assert res.ok and (res.attempts, res.timeouts, res.retries) == (3, 2, 2)
    j = res.to_json()
    assert j["attempts"] == 3 and j["timeouts"] == 2 and j["attempt_log"] == ["timeout", "timeout", "ok"]
    # the client's time runs from its first attempt: the retries' wait is part of what it took
    assert j["timings"]["total_ms"] == pytest.approx(402.0)
    lost = {"reply": None, "ok": False, "error": "udp s:8080: timed out", "attempts": 1,
            "attempt_log": ["timeout"], "timings": {"start": 1.0}}
    res = parse_client("c", "a", json.dumps(lost), timings_line(0.5, exit=4), 4, start_at=1.0, builtin=True,
                       timeout=3)
    assert not res.ok and (res.attempts, res.timeouts) == (1, 1)   # (timeouts from the log)


def test_the_run_table_shows_attempts_and_timeouts_and_unknown_for_foreign_programs():
    from rich.console import Console

    from labctl.cli.exercise_commands import run_table

    results = [ClientResult("client1", "a", True, reply="t", attempts=3, timeouts=2, exit=0),
               ClientResult("client2", "b", True, reply="t", exit=0)]          # a program not labctl's
    console = Console(width=200, record=True)
    console.print(run_table(RunResult("mine", "s", 8080, 10.0, 0.1, results)))
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if "client" in line}
    assert [c.strip() for c in rows["client1"].split("│")[-3:-1]] == ["3", "2"]     # tries, timeouts
    assert [c.strip() for c in rows["client2"].split("│")[-3:-1]] == ["unknown", "unknown"]


def count(conn: FakeConnection, marker: str) -> int:
    return sum(marker in c for c in conn.commands)


def test_the_built_in_hours_share_one_measurement_but_each_checks_the_nodes():
    runner, conns = fake_runner()
    assert runner.trigger("tcp").ok and runner.trigger("udp").ok and runner.trigger("proto").ok
    for name in ("client1", "client2", "client3"):
        assert count(conns[name], "date +%s.%N") == 1, conns[name].commands  # measured once
        assert count(conns[name], "sha256sum") == 3  # deploy.ensure before each program
    assert runner.prepared.program == "proto"


def test_a_client_that_got_new_files_is_measured_again_after_the_copy():
    runner, conns = fake_runner(client1={"stale": True})
    runner.prepare()
    assert count(conns["client1"], "date +%s.%N") == 2   # while its files were copied, and after
    assert count(conns["client2"], "date +%s.%N") == 1
    assert set(runner.prepared.costs) == {"client1", "client2", "client3"}


def test_the_measurement_needs_nothing_deployed():
    from labctl.run import measure_script

    script = measure_script("labctl", builtin=True)
    assert "if [ -f labctl/startat.py ]" in script and "-c 'import ctypes" in script
    assert script.count("date +%s.%N") == 3 and "timeclient.py" in script


def test_the_lead_measured_for_tcp_serves_udp_and_proto():
    runner, _conns = fake_runner(client1={"cost": 0.1})
    first = runner.trigger("tcp")
    assert first.ok and first.lead >= SAFETY * 0.1
    assert [runner.trigger(p).lead for p in ("udp", "proto")] == pytest.approx([first.lead] * 2)
