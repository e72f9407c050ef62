"""scripts/timeclient.py as a subprocess against our server, the seed's Go servers and misbehaving peers."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from requires import missing, require_file

# the server helpers live in test_timeserver.py; loaded by path so any pytest import mode works
_spec = importlib.util.spec_from_file_location("_timeserver_tests",
                                               Path(__file__).with_name("test_timeserver.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
BENCH, HOST, ServerProc, free_port = _helpers.BENCH, _helpers.HOST, _helpers.ServerProc, _helpers.free_port

CLIENT = Path(__file__).resolve().parent.parent / "scripts" / "timeclient.py"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT), *args], capture_output=True, text=True,
                          timeout=timeout)


def run_json(*args: str) -> tuple[int, dict]:
    out = run(*args, "--json")
    return out.returncode, json.loads(out.stdout)


@pytest.fixture(scope="module")
def server():
    s = ServerProc("--quiet", time_port=True)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def seed():
    """seed-tcpserver and seed-udpserver on free ports, stopped by PID."""
    procs = []
    try:
        ports = {}
        for name in ("tcpserver", "udpserver"):
            exe = require_file(BENCH / f"seed-{name}", "the course's shared/bench")
            ports[name] = free_port()
            procs.append(subprocess.Popen([str(exe), "-port", str(ports[name])],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((HOST, ports["tcpserver"]), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        yield ports
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=5)


class FakeServer:
    """A one-trick TCP or UDP peer: replies with fixed bytes, or says nothing."""

    def __init__(self, kind: int, reply: bytes | None) -> None:
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.kind = kind
        self.stopped = False
        self.held: list[socket.socket] = []
        if kind == socket.SOCK_STREAM:
            self.sock.listen()
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                if self.kind == socket.SOCK_STREAM:
                    c, _ = self.sock.accept()
                    if self.reply is None:
                        self.held.append(c)
                    else:
                        c.sendall(self.reply)
                        c.close()
                else:
                    _, addr = self.sock.recvfrom(100)
                    if self.reply is not None:
                        self.sock.sendto(self.reply, addr)
            except OSError:
                continue

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture
def fake():
    made: list[FakeServer] = []

    def make(kind: int, reply: bytes | None) -> FakeServer:
        f = FakeServer(kind, reply)
        made.append(f)
        return f

    try:
        yield make
    finally:
        for f in made:
            f.close()


# --- against our server ------------------------------------------------------------------------------

def test_tcp_udp_proto_time_against_our_server(server):
    out = run("tcp", HOST, "--port", str(server.port))
    assert out.returncode == 0 and ISO_MS.match(out.stdout.strip()), out
    out = run("udp", HOST, "--port", str(server.port))
    assert out.returncode == 0 and ISO_MS.match(out.stdout.strip()), out
    out = run("proto", HOST, "--port", str(server.proto), "--send", "GET TIME", "--send", "SAY HI",
              "--send", "nonsense")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and ISO_MS.match(lines[0]) and lines[1] == "Hello, World!", out
    assert lines[2].startswith("ERR ")
    out = run("time", HOST, "--port", str(server.time_port))
    assert out.returncode == 0 and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", out.stdout.strip()), out
    out = run("time", HOST, "--port", str(server.time_port), "--udp")
    assert out.returncode == 0, out


def test_json_object_and_timings(server):
    code, obj = run_json("proto", HOST, "--port", str(server.proto))
    assert code == 0
    assert {"protocol", "host", "port", "ok", "reply", "error", "timings", "late_ms"} <= set(obj)
    assert obj["ok"] is True and obj["error"] is None and ISO_MS.match(obj["reply"])
    t = obj["timings"]
    assert t["start"] <= t["connected"] <= t["first_byte"] <= t["done"]
    assert abs(t["done"] - time.time()) < 10
    assert abs(obj["server_time"] - t["first_byte"]) < 2
    assert obj["local"].startswith("127.0.0.1:")


def test_start_at_waits_for_the_instant(server):
    at = time.time() + 0.4
    code, obj = run_json("udp", HOST, "--port", str(server.port), "--start-at", f"{at:.6f}")
    assert code == 0
    assert obj["timings"]["start"] >= at  # not before the instant (how soon after: bench/run.py)
    assert obj["late_ms"] is not None and obj["late_ms"] >= 0
    assert obj["ready"] is not None and obj["ready"] < at  # it was asleep before the instant
    # it holds its output until the start burst is over, so its exit does not delay other clients
    assert time.time() >= at + 0.05


def test_start_at_in_the_past_is_reported_late(server):
    code, obj = run_json("tcp", HOST, "--port", str(server.port), "--start-at", str(time.time() - 2))
    assert code == 0 and obj["late"] is True and obj["late_ms"] >= 1900
    assert obj["ready"] > obj["start_at"]
    out = run("tcp", HOST, "--port", str(server.port), "--start-at", str(time.time() - 2))
    assert "after --start-at" in out.stderr


def test_literal_ip_does_not_import_idna(server):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['timeclient.py', 'udp', '{HOST}', '--port', '{server.port}']\n"
        "try:\n"
        f"    runpy.run_path({str(CLIENT)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('idna' if 'encodings.idna' in sys.modules else 'no idna')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip().endswith("no idna"), out


def test_hostname_is_resolved(server):
    assert run("tcp", "localhost", "--port", str(server.port)).returncode == 0


def test_busy_server_exit_7(make_server_busy):
    s, _held = make_server_busy
    code, obj = run_json("proto", HOST, "--port", str(s.proto))
    assert code == 7 and obj["ok"] is False and "busy" in obj["error"]


@pytest.fixture
def make_server_busy():
    s = ServerProc("--max-conns", "1", "--workers", "1", "--quiet")
    held = socket.create_connection((HOST, s.proto), timeout=3)
    try:
        held.sendall(b"SAY HI\n")
        assert held.recv(100) == b"Hello, World!\n"
        yield s, held
    finally:
        held.close()
        s.stop()


# --- against the seed's Go servers -------------------------------------------------------------------

def test_our_clients_against_seed_go_servers(seed):
    code, obj = run_json("tcp", HOST, "--port", str(seed["tcpserver"]))
    assert code == 0 and obj["reply"].endswith("...Hallo"), obj
    assert abs(obj["server_time"] - time.time()) < 10
    code, obj = run_json("udp", HOST, "--port", str(seed["udpserver"]))
    assert code == 0 and "UTC" in obj["reply"], obj
    assert abs(obj["server_time"] - time.time()) < 10


# --- failures and their exit codes -------------------------------------------------------------------

def test_refused_exit_3():
    port = free_port()
    out = run("tcp", HOST, "--port", str(port))
    assert out.returncode == 3 and "refused" in out.stderr and "Traceback" not in out.stderr
    code, obj = run_json("udp", HOST, "--port", str(port), "--timeout", "1")
    assert code == 3 and obj["ok"] is False and obj["reply"] is None


def test_timeout_exit_4_with_retries(fake):
    silent_udp = fake(socket.SOCK_DGRAM, None)
    t0 = time.monotonic()
    code, obj = run_json("udp", HOST, "--port", str(silent_udp.port), "--timeout", "0.3", "--retries", "2")
    assert code == 4 and obj["attempts"] == 3 and "timed out" in obj["error"]
    assert obj["timeouts"] == 3 and obj["attempt_log"] == ["timeout"] * 3 and obj["refusals"] == 0
    assert obj["first_start"] < obj["timings"]["start"]   # the first attempt's start is kept
    assert time.monotonic() - t0 < 3 * 0.3 + 0.3 + 10  # three attempts and their back-off, not more
    silent_tcp = fake(socket.SOCK_STREAM, None)  # accepts, never writes
    out = run("tcp", HOST, "--port", str(silent_tcp.port), "--timeout", "0.3")
    assert out.returncode == 4 and "timed out" in out.stderr


@pytest.mark.parametrize(("kind", "proto", "reply"), [
    (socket.SOCK_STREAM, "tcp", b"\x00\xff\xfe\x01\n"),
    (socket.SOCK_STREAM, "tcp", b""),
    (socket.SOCK_STREAM, "tcp", b"A" * 10000),
    (socket.SOCK_DGRAM, "udp", b"\x89PNG\r\n\x1a\n"),
    (socket.SOCK_STREAM, "time", b"abc"),
])
def test_garbage_reply_exit_5(fake, kind, proto, reply):
    f = fake(kind, reply)
    code, obj = run_json(proto, HOST, "--port", str(f.port), "--timeout", "2")
    assert code == 5 and obj["ok"] is False and obj["error"].startswith("garbage reply"), obj


def test_unknown_host_exit_6_and_bad_args_exit_2():
    out = run("tcp", "no-such-host.invalid", "--timeout", "1")
    assert out.returncode == 6 and "cannot resolve" in out.stderr and "Traceback" not in out.stderr
    out = run("tcp", HOST, "--port", "0")
    assert out.returncode == 2
    out = run("--help")
    assert out.returncode == 0 and "garbage reply" in out.stdout and "refused" in out.stdout


class Trickler:
    """A TCP server that sends one byte every `every` seconds, for `total` seconds, on each connection."""

    def __init__(self, every: float, total: float) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.every, self.total = every, total
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with c:
                end = time.monotonic() + self.total
                while time.monotonic() < end and not self.stopped.wait(self.every):
                    try:
                        c.sendall(b"2")
                    except OSError:
                        break

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("proto", ["tcp", "proto"])
def test_timeout_bounds_the_whole_exchange_not_each_read(proto):
    slow = Trickler(every=0.2, total=30)  # a byte every 0.2 s: each read alone is quick
    try:
        t0 = time.monotonic()
        code, obj = run_json(proto, HOST, "--port", str(slow.port), "--timeout", "1")
        elapsed = time.monotonic() - t0
    finally:
        slow.close()
    assert code == 4 and "timed out" in obj["error"], obj
    assert elapsed < 15, elapsed  # one --timeout and the start-up, not the server's 30 s of trickle


def test_start_at_out_of_range_is_refused():
    for bad in ("inf", "nan", "1e12"):
        out = run("udp", HOST, "--start-at", bad)
        assert out.returncode == 2 and "--start-at" in out.stderr and "Traceback" not in out.stderr


def interpreter(version: str) -> str:
    """Python `version` from PATH or pyenv: the node programs must run on the oldest and newest."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [shutil.which(f"python{version}"), *sorted(pyenv.glob(f"{version}.*/bin/python{version}"))]
    for exe in filter(None, found):
        if subprocess.run([str(exe), "-c", "pass"], capture_output=True).returncode == 0:
            return str(exe)
    missing(f"python{version}", "pyenv install " + version)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_programs_run_on_other_pythons(version):
    python = interpreter(version)
    s = ServerProc("--quiet", "--workers", "2", python=python)
    try:
        for argv in (["tcp", HOST, "--port", str(s.port)], ["udp", HOST, "--port", str(s.port)],
                     ["proto", HOST, "--port", str(s.proto), "--send", "SAY HI"]):
            out = subprocess.run([python, str(CLIENT), *argv], capture_output=True, text=True, timeout=20)
            assert out.returncode == 0 and out.stdout.strip(), (python, argv, out)
        launcher = CLIENT.with_name("startat.py")
        out = subprocess.run([python, str(launcher), "--at", repr(time.time() + 1), "--", python, str(CLIENT),
                              "udp", HOST, "--port", str(s.port)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and ISO_MS.match(out.stdout.strip()), out
        assert out.stderr.splitlines()[-1].startswith("startat-timings: ")
        assert s.stop() == 0
    finally:
        s.stop()
