"""scripts/startat.py for real on this machine: real programs, real signals, real sockets on loopback."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from requires import SHARED_BENCH, require_file

STARTAT = Path(__file__).resolve().parent.parent / "scripts" / "startat.py"
sys.path.insert(0, str(STARTAT.parent))  # as on a node: startat.py imports startat_hold.py beside it
_spec = importlib.util.spec_from_file_location("startat", STARTAT)
startat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(startat)
NATIVE = {"x86_64": 62, "aarch64": 183}.get(os.uname().machine)
CAN_HOLD = startat.startat_hold is not None and startat.startat_hold.why_not(NATIVE) is None

LEAD = 1.0  # seconds from now to the instant: room for the launcher to start on a busy machine
MODES = [pytest.param([], id="hold"), pytest.param(["--no-hold"], id="exec")]


def launch(*program: str, at: float | None = None, opts: tuple[str, ...] = (), timeout: float = 30,
           **kw) -> tuple[subprocess.CompletedProcess, dict]:
    at = time.time() + LEAD if at is None else at
    out = subprocess.run([sys.executable, str(STARTAT), "--at", repr(at), *opts, "--", *program],
                         capture_output=True, text=True, timeout=timeout, **kw)
    return out, timings_of(out.stderr)


def timings_of(stderr: str) -> dict:
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("startat-timings: "), stderr
    return json.loads(last.split(": ", 1)[1])


def alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False


def write_script(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("opts", MODES)
def test_exit_status_output_and_timings(opts):
    out, t = launch("sh", "-c", "echo out; echo err >&2; exit 7", opts=tuple(opts))
    assert out.returncode == 7 and t["exit"] == 7 and not t["timed_out"] and t["error"] is None
    assert out.stdout == "out\n"
    assert out.stderr.splitlines()[0] == "err"  # the program's stderr, then our line last
    assert set(t) >= {"start", "ready", "exec", "end", "exit", "timed_out", "error", "late_ms"}
    assert t["start"] <= t["execve"] <= t["end"] and t["exec"] >= t["at"]
    assert t["late_ms"] == pytest.approx((t["exec"] - t["at"]) * 1000, abs=0.01)
    assert t["mode"] == ("hold" if CAN_HOLD and not opts else "exec")
    assert (t["no_hold"] is None) == (t["mode"] == "hold")


def test_killed_by_a_signal_is_128_plus_n():
    out, t = launch("sh", "-c", "kill -USR1 $$")
    assert out.returncode == 128 + signal.SIGUSR1 and t["exit"] == 128 + signal.SIGUSR1


@pytest.mark.parametrize("opts", MODES)
def test_timeout_kills_the_whole_group(tmp_path, opts):
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; trap '' TERM; echo $$ >> {pids}; wait; sleep 300"
    out, t = launch("sh", "-c", script, opts=("--timeout", "0.5", *opts))
    assert out.returncode == 124 and t["timed_out"] is True and t["exit"] == 124
    found = [int(p) for p in pids.read_text().split()]
    assert len(found) == 2 and not any(alive(p) for p in found)  # TERM ignored: SIGKILL followed
    assert t["end"] - t["at"] >= 0.5


def test_nothing_left_running_after_a_normal_exit(tmp_path):
    pid_file = tmp_path / "bg"
    out, _ = launch("sh", "-c", f"sleep 300 & echo $! > {pid_file}; echo done")
    assert out.returncode == 0 and out.stdout == "done\n"
    assert not alive(int(pid_file.read_text()))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_launcher_kills_the_program_group(tmp_path, sig):
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen([sys.executable, str(STARTAT), "--at", repr(time.time() + 0.3), "--",
                             "sh", "-c", f"sleep 300 & echo $! > {pid_file}; echo $$ >> {pid_file}; wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while len(pid_file.read_text().split() if pid_file.exists() else []) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + sig
    assert not any(alive(int(p)) for p in pid_file.read_text().split())
    t = timings_of(err)
    assert signal.Signals(sig).name in t["error"] and t["exit"] == 128 + sig


def test_missing_file_and_unknown_command_are_127(tmp_path):
    out, t = launch(str(tmp_path / "nope"), "--node", "client2")
    assert out.returncode == 127 and t["exit"] == 127 and t["exec"] is None
    assert out.stderr.splitlines()[0].startswith("startat: ") and "nope" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 2
    out, _ = launch("no-such-program-here", opts=("--node", "client3"))
    assert out.returncode == 127 and "not found on client3" in out.stderr


def test_non_executable_python_file_runs_with_python(tmp_path):
    script = write_script(tmp_path / "client.py", "import sys\nprint('py', sys.argv[1:])\n", 0o644)
    out, _ = launch(str(script), "a", "b")
    assert out.returncode == 0 and out.stdout == "py ['a', 'b']\n", out.stderr


def test_shebang_script_without_exec_bit_runs_with_its_interpreter(tmp_path):
    script = write_script(tmp_path / "client", "#!/bin/sh\necho sh \"$@\"\n", 0o644)
    out, _ = launch(str(script), "x")
    assert out.returncode == 0 and out.stdout == "sh x\n", out.stderr
    env = write_script(tmp_path / "client2", "#!/usr/bin/env python3\nprint('env')\n", 0o644)
    out, _ = launch(str(env))
    assert out.returncode == 0 and out.stdout == "env\n", out.stderr


def test_missing_interpreter_is_127_naming_it(tmp_path):
    script = write_script(tmp_path / "client.rb", "#!/usr/bin/no-such-ruby\nputs 1\n", 0o755)
    out, _ = launch(str(script), opts=("--node", "client1"))
    assert out.returncode == 127
    assert "startat: " in out.stderr and "/usr/bin/no-such-ruby not found on client1" in out.stderr


def test_not_executable_not_a_script_is_126(tmp_path):
    data = write_script(tmp_path / "notes.txt", "hello\n", 0o644)
    out, _ = launch(str(data))
    assert out.returncode == 126 and "not executable" in out.stderr
    garbage = write_script(tmp_path / "blob", "hello\n", 0o755)
    out, _ = launch(str(garbage))
    assert out.returncode == 126 and "neither an ELF binary nor a script" in out.stderr
    out, _ = launch(str(tmp_path))
    assert out.returncode == 126 and "directory" in out.stderr


def elf_header(machine: int) -> bytes:
    """A 64-byte little-endian ELF64 executable header for `machine` (no program: never runs)."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0x400000, 64, 0, 0, 64, 56, 0, 64, 0, 0)


def test_wrong_architecture_elf_is_one_clear_line(tmp_path):
    here = os.uname().machine
    other, other_name = (183, "aarch64") if here == "x86_64" else (62, "x86-64")
    exe = tmp_path / "seed-tcpserver"
    exe.write_bytes(elf_header(other) + bytes(64))
    exe.chmod(0o755)
    out, t = launch(str(exe), opts=("--node", "client2"))
    here_name = startat.UNAME_NAMES.get(here, here)
    assert out.returncode == 126
    assert out.stderr.splitlines()[0] == f"startat: exec format error: seed-tcpserver is {other_name}, " \
                                         f"client2 is {here_name}"
    assert t["error"].startswith("exec format error") and t["exec"] is None


def test_bad_arguments_exit_125():
    out = subprocess.run([sys.executable, str(STARTAT), "--at", "soon", "--", "true"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 125 and "startat: " in out.stderr
    out = subprocess.run([sys.executable, str(STARTAT), "--at", str(time.time()), "--timeout", "-1", "--",
                          "true"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 125 and "--timeout" in out.stderr


SENDER = """
import socket, sys
if len(sys.argv) > 2:  # a local socket first: a name lookup or a log would do this; never held
    u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    u.sendto(b"local", sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"anything", ("127.0.0.1", int(sys.argv[1])))
"""


@pytest.mark.parametrize("opts", MODES)
def test_the_first_packet_leaves_at_the_instant_not_before(tmp_path, opts):
    script = write_script(tmp_path / "sender.py", SENDER, 0o644)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as local:
        rx.bind(("127.0.0.1", 0))
        local.bind(str(tmp_path / "local.sock"))
        rx.settimeout(30)
        local.settimeout(30)
        at = time.time() + 2 * LEAD
        proc = subprocess.Popen([sys.executable, str(STARTAT), "--at", repr(at), *opts, "--", str(script),
                                 str(rx.getsockname()[1]), str(tmp_path / "local.sock")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            local.recv(100)
            local_at = time.time()
            rx.recv(100)
            arrived = time.time()
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    t = timings_of(err)
    assert proc.returncode == 0, err
    assert arrived >= at and t["exec"] >= at
    if t["mode"] == "hold":  # exec'd early, its local socket let through, its UDP send held
        assert t["execve"] < at and local_at < at and t["ready"] < at


def test_seed_go_client_is_held_too():
    exe = require_file(SHARED_BENCH / "seed-udpclient", "the course's shared/bench")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(30)
        at = time.time() + 2 * LEAD
        proc = subprocess.Popen([sys.executable, str(STARTAT), "--at", repr(at), "--timeout", "5", "--",
                                 str(exe), f"127.0.0.1:{rx.getsockname()[1]}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            data, peer = rx.recvfrom(100)
            arrived = time.time()
            rx.sendto(b"2026-11-25 09:39:51.1 +0000 UTC", peer)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    t = timings_of(err)
    assert data == b"anything" and arrived >= at and proc.returncode == 0, err
    assert "2026-11-25" in out
    if CAN_HOLD:
        assert t["mode"] == "hold" and t["execve"] < at and t["ready"] < at  # Go runtime started early


def test_the_launcher_returns_only_when_the_output_is_complete():
    out, _ = launch(sys.executable, "-c", "import sys; sys.stdout.write('x' * 300000)")
    assert out.returncode == 0 and len(out.stdout) == 300000


def test_without_the_hold_file_it_sleeps_and_execs(tmp_path):
    alone = tmp_path / "startat.py"
    alone.write_bytes(STARTAT.read_bytes())  # without startat_hold.py beside it (its other parts are)
    for part in ("startat_check.py", "startat_output.py"):
        (tmp_path / part).write_bytes((STARTAT.parent / part).read_bytes())
    out = subprocess.run([sys.executable, str(alone), "--at", repr(time.time() + LEAD), "--", "sh", "-c",
                          "echo ok"], capture_output=True, text=True, timeout=30)
    t = timings_of(out.stderr)
    assert out.returncode == 0 and out.stdout == "ok\n"
    assert t["mode"] == "exec" and t["no_hold"] == "startat_hold.py missing" and t["exec"] >= t["at"]


def test_a_caller_that_stops_reading_cannot_stall_the_timeout():
    r, w = os.pipe()  # our end is never read while it runs: the pipe fills
    try:
        proc = subprocess.Popen([sys.executable, str(STARTAT), "--at", repr(time.time() + LEAD), "--timeout",
                                 "1", "--", "sh", "-c", "head -c 2000000 /dev/zero; sleep 300"],
                                stdout=w, stderr=subprocess.PIPE, text=True)
        os.close(w)
        try:
            err = proc.communicate(timeout=60)[1]  # (stderr is read; stdout is not)
        finally:
            proc.kill()
            proc.wait()
    finally:
        os.close(r)
    t = timings_of(err)
    assert proc.returncode == 124 and t["timed_out"] is True


def test_the_program_gets_its_own_priority_back_after_the_burst(tmp_path):
    script = write_script(tmp_path / "p.py", "import os, socket, sys, time\n"
                          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          "s.sendto(b'x', ('127.0.0.1', int(sys.argv[1])))\n"
                          "time.sleep(0.5)\n"
                          "print(os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))\n", 0o644)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        out, _ = launch(str(script), str(rx.getsockname()[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(os.getpriority(os.PRIO_PROCESS, 0)), str(os.SCHED_OTHER)]


def test_output_and_exit_wait_until_the_burst_is_over(tmp_path):
    """A client done at once neither prints nor exits before HOLD_OUTPUT after the instant (hold mode),
    so its teardown does not take the CPU the clients still starting need."""
    stamp = tmp_path / "after-print"
    script = write_script(tmp_path / "p.py", "import json, os, socket, sys, time\n"
                          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          "s.sendto(b'x', ('127.0.0.1', int(sys.argv[1])))\n"
                          "sent = time.time()\n"
                          "os.write(1, b'reply\\n')\n"
                          f"open({str(stamp)!r}, 'w').write(json.dumps([sent, time.time()]))\n", 0o644)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        out, t = launch(str(script), str(rx.getsockname()[1]))
    sent, printed = json.loads(stamp.read_text())
    assert out.returncode == 0 and out.stdout == "reply\n", out.stderr
    assert sent >= t["at"]
    if t["mode"] == "hold":
        assert printed >= t["at"] + startat.HOLD_OUTPUT > sent


def test_the_command_line_is_parsed_like_argparse_would():
    import startat_check

    at = time.time() + 5
    a = startat_check.parse_args(["--at", str(at), "--node=client2", "--timeout", "3", "--", "ls", "-la"])
    assert (a.at, a.node, a.timeout, a.no_hold, a.spin) == (at, "client2", 3.0, False, None)
    assert (a.program, a.args) == ("ls", ["-la"])
    a = startat_check.parse_args(["--at", str(at), "--no-hold", "--spin", "0", "prog", "--at", "x"])
    assert (a.no_hold, a.spin, a.program, a.args) == (True, 0.0, "prog", ["--at", "x"])  # its own arguments
    for bad, why in ((["--at", str(at), "--spin", "1", "--", "x"], "--spin must be 0 to 0.1"),
                     (["--at", str(at)], "required: PROGRAM"), (["--", "x"], "required: --at"),
                     (["--at", str(at), "--bogus", "x"], "unrecognized argument: --bogus"),
                     (["--at"], "expected one argument")):
        out = subprocess.run([sys.executable, str(STARTAT), *bad], capture_output=True, text=True, timeout=30)
        assert out.returncode == 125 and "startat: " in out.stderr and why in out.stderr, (bad, out.stderr)
    out = subprocess.run([sys.executable, str(STARTAT), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("usage: startat.py --at EPOCH_SECONDS")


def test_the_launcher_starts_without_the_heavy_modules():
    here = str(STARTAT.parent)
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {here!r})\n"
                          "import startat\n"
                          "print(' '.join(m for m in ('argparse', 'json', 're', 'typing', 'contextlib') "
                          "if m in sys.modules))"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "", out  # (its start is on every run's path)


CONNECTOR = """
import selectors, socket, sys, time
s = socket.socket()
s.setblocking(sys.argv[2] == "blocking")
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connected at once", flush=True)
except BlockingIOError:
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_WRITE)
    sel.select(5)
    ok = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    print("in progress, then", "connected" if ok else "failed", flush=True)
s.setblocking(True)
print(s.recv(100).decode().strip(), flush=True)
"""


@pytest.mark.skipif(not CAN_HOLD, reason="the hold needs Linux >= 5.6 on x86-64/aarch64")
@pytest.mark.parametrize("blocking", [False, True], ids=["non-blocking", "blocking"])
def test_a_held_tcp_connect_is_made_at_the_instant(tmp_path, blocking):
    """Non-blocking (Go's): the launcher connects the program's socket itself at the instant and the
    program sees EINPROGRESS, as from its own connect; blocking: the call is let go as it was."""
    script = write_script(tmp_path / "c.py", CONNECTOR, 0o644)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[float] = []

        def serve() -> None:
            conn, _ = server.accept()
            accepted.append(time.time())
            conn.sendall(b"hello\n")
            conn.close()
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        out, t = launch(str(script), str(server.getsockname()[1]), "blocking" if blocking else "no")
        thread.join(5)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "hello", out.stderr
    assert accepted and accepted[0] >= t["at"] and t["exec"] >= t["at"]
    assert t["connects"] == (0 if blocking else 1)
    assert out.stdout.startswith("connected at once" if blocking else "in progress, then connected")
