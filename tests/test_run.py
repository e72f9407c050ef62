"""run's logic against a fake Group: lead, clock offsets, result parsing, failures kept per node."""
from __future__ import annotations

import json
import shlex
import threading
import time

import pytest

from labctl.deploy import CLIENT_PROGRAM, SCRIPTS_DIR, SERVER_FILES, file_hash, server_argv
from labctl.inventory import Host, Inventory
from labctl.lab import Lab, Ports
from labctl.remote import Group, RemoteError, Result
from labctl.run import (
    LATE_MS,
    MARGIN,
    SAFETY,
    ClientResult,
    RunError,
    Runner,
    RunResult,
    choose_lead,
    client_argv,
    clock_offset,
    parse_client_output,
    port_for,
)

LAB = Lab(clients=3)
HOSTS = (Host("server", "server", "192.168.20.2"),
         *(Host(f"client{i}", "client", f"192.168.20.{2 + i}") for i in range(1, 4)))


class FakeConnection:
    """Answers the probe like a deployed node, and the client like timeclient.py --json would."""

    def __init__(self, host: Host, *, dead: bool = False, stale: bool = False, cost: float = 0.0,
                 reply: dict | None = None, exited: int = 0, woke_late: float = 0.0) -> None:
        self.host = host
        self.dead, self.stale, self.cost, self.reply, self.exited = dead, stale, cost, reply, exited
        self.woke_late = woke_late  # s after the start instant that this client reports it started
        self.commands: list[str] = []
        self.puts: list[str] = []
        self.lock = threading.Lock()

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
            names = SERVER_FILES if self.host.role == "server" else (CLIENT_PROGRAM,)
            out = "".join(f"{'0' * 64 if self.stale else file_hash(SCRIPTS_DIR / n)}  {n}\n" for n in names)
            if self.host.role == "server":
                out += f"SERVER 4242 {shlex.join(server_argv(self.host.address, LAB.ports))}\n"
            return Result(self.host.name, line, 0, out, "")
        if "date +%s.%N" in line:  # run's measurement of a client's start
            time.sleep(self.cost)
            return Result(self.host.name, line, 0, f"{time.time():.9f}\n", "")
        if "--start-at" in line:
            argv = shlex.split(line)
            start_at = float(argv[argv.index("--start-at") + 1]) + self.woke_late
            data = self.reply if self.reply is not None else {
                "reply": "2026-11-25T09:39:51.123Z", "ok": True, "error": None,
                "timings": {"start": start_at, "connected": start_at + 0.0002,
                            "first_byte": start_at + 0.0005, "done": start_at + 0.0006}}
            return Result(self.host.name, line, self.exited, json.dumps(data) + "\n", "")
        return Result(self.host.name, line, 0, "", "")

    def put(self, local, remote, mode=None):
        self.puts.append(remote)
        return remote

    def start(self, cmd, *, log, ready=None, timeout=10.0, sudo=False) -> int:
        return 4343

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


def test_client_argv_quotes_and_ports():
    argv = client_argv("proto", "192.168.20.2", 8081, 1234.5, send=["GET TIME", "SAY HI"], timeout=2)
    assert argv[:4] == ["python3", "labctl/timeclient.py", "proto", "192.168.20.2"]
    assert argv[argv.index("--start-at") + 1] == "1234.500000"
    assert shlex.split(shlex.join(argv)).count("GET TIME") == 1
    assert [port_for(p, Ports()) for p in ("tcp", "udp", "proto", "time")] == [8080, 8080, 8081, 37]
    with pytest.raises(RunError, match="unknown protocol"):
        client_argv("icmp", "x", 1, 0)


def test_parse_client_output_ok_error_late_and_garbage():
    host = HOSTS[1]
    ok = parse_client_output(host, json.dumps({"reply": "t\n", "ok": True, "error": None,
                                               "timings": {"start": 1.0, "done": 1.002}}), "", 0, 1.0)
    assert ok.ok and ok.reply == "t" and ok.ms("done") == pytest.approx(2.0)
    refused = parse_client_output(host, json.dumps({"reply": None, "ok": False, "error": "connection refused",
                                                    "timings": {}}), "", 1, 1.0)
    assert not refused.ok and refused.error == "connection refused"
    late_json = {"reply": "t", "ok": True, "error": None, "late_ms": LATE_MS + 80, "timings": {"start": 1.1}}
    late = parse_client_output(host, json.dumps(late_json), "", 0, 1.0)
    assert not late.ok and "after the start instant" in late.error and late.to_json()["timings"]["late_ms"]
    garbage = parse_client_output(host, "", "Traceback...\nNameError: x\n", 1, 1.0)
    assert not garbage.ok and "NameError" in garbage.error


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
        assert argv[argv.index("--port") + 1] == "8080" and argv[3] == "192.168.20.2"
    assert len(instants) == 1 and float(instants.pop()) >= before + result.lead
    out = result.to_json()
    assert set(out) >= {"protocol", "results", "spread_ms"} and out["protocol"] == "tcp"
    assert set(out["results"][0]) == {"node", "address", "ok", "reply", "error", "timings"}
    assert out["results"][0]["timings"]["connect_ms"] == pytest.approx(0.2)
    assert result.spread_ms == pytest.approx(1.1, abs=1e-3) and out["spread_ms"] == 1.1  # first to last start
    assert conns["server"].puts == [] and not any(CLIENT_PROGRAM in c for c in conns["server"].commands)


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
    assert conns["client1"].puts == [f"labctl/{CLIENT_PROGRAM}"]
    assert conns["client2"].puts == [] and conns["server"].puts == []


def test_no_deploy_skips_the_server_check():
    runner, conns = fake_runner(client1={"stale": True})
    runner.deploy = False
    runner.prepare()
    assert conns["server"].commands == [] and conns["client1"].puts == []


def test_spread_is_first_to_last_client_start():
    results = [ClientResult("a", "x", True, timings={"start": 10.0}),
               ClientResult("b", "y", True, timings={"start": 10.0004}),
               ClientResult("c", "z", False, error="refused")]
    run = RunResult("tcp", "s", 8080, 10.0, 0.1, results)
    assert run.spread_ms == pytest.approx(0.4) and not run.ok


def test_a_reported_ready_time_decides_lateness():
    host = HOSTS[1]
    asleep = {"reply": "t", "ok": True, "error": None, "late_ms": 150.0,
              "timings": {"ready": 0.7, "start": 1.15}}
    assert parse_client_output(host, json.dumps(asleep), "", 0, 1.0).ok  # slow wake-up: noise
    awake = {"reply": "t", "ok": True, "error": None, "late_ms": 2.0, "ready": 1.002,  # top level also read
             "timings": {"start": 1.002}}
    late = parse_client_output(host, json.dumps(awake), "", 0, 1.0)
    assert not late.ok and "not asleep in time" in late.error


def test_a_late_client_lengthens_the_lead_of_the_next_run():
    runner, conns = fake_runner()
    first = runner.trigger("tcp")
    conns["client2"].reply = {"reply": "t", "ok": True, "error": None, "late_ms": 400.0,
                              "timings": {"start": 2.0}}
    late = runner.trigger("tcp")
    assert not late.ok and late.lead == pytest.approx(first.lead)
    after = runner.trigger("tcp")
    assert after.lead >= first.lead + 0.4


def test_the_safety_factor_can_be_raised_for_a_loaded_machine(monkeypatch):
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "3")
    assert choose_lead([0.1]) == pytest.approx(0.3 + MARGIN)
    monkeypatch.setenv("LABCTL_LEAD_SAFETY", "fast")
    with pytest.raises(RunError, match="LABCTL_LEAD_SAFETY"):
        choose_lead([0.1])
